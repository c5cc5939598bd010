"""`RequestQueue`: one client for every role a process plays on the request streams.

The roles live in their own modules and work alone: `submit.RequestSubmitter` (the bot queues work),
`claims.RequestClaims` (workers claim, answer and hand back work) and `registry.WorkerRegistry`
(active size, heartbeats). The bot uses the submitting and registry roles, a worker the claiming and
registry ones; both hold one `RequestQueue`, so tests and tools can play either side on one connection.
The client must be created with decode_responses=True.
"""
from __future__ import annotations

from bot.queue.claims import RequestClaims
from bot.queue.registry import WorkerRegistry
from bot.queue.submit import RequestSubmitter


class RequestQueue(RequestSubmitter, RequestClaims, WorkerRegistry):
    """Submit (bot), claim/answer (workers) and the shared state of the request streams."""
