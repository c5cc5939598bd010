"""The Redis Streams contract between the Telegram bot and the workers, and its clients.

`protocol` names what travels and where; `client.RequestQueue` submits, claims and answers requests;
`results.ResultReader` reads the answers. Neither aiogram nor torch is imported here: both processes
share this package and nothing else of each other.
"""
