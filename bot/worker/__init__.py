"""The worker process: claim requests from the queue, generate with the models, answer through the queue.

`main` (rujokes-worker) loads the models (`loading`) and runs the loop (`loop.Worker`); the loop knows
the engine only through `engine_api`, and `engine.ModelEngine` is where Redis-free jobs meet tensors.
"""
