"""The seam between the worker loop (Redis, asyncio) and the generation engine (tensors).

The worker only knows this interface; bot/worker/engine.py implements it with the real model, and tests
implement it with small fakes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

# on_partial(request_id, text_so_far); called from the engine's thread, must not block for long.
PartialCallback = Callable[[str, str], None]
# on_done(output) the moment a job's row finishes, before the rest of its batch; engine's thread too.
DoneCallback = Callable[["GenerationOutput"], None]
# more_jobs(rows_in_batch) -> jobs to add to the running batch (possibly none); engine's thread, between steps.
MoreJobs = Callable[[int], list["Job"]]


@dataclass
class Job:
    request_id: str
    prompt: str
    top_k: int
    temperature: float
    top_p: float | None
    max_new_tokens: int
    seed: int | None


@dataclass
class GenerationOutput:
    request_id: str
    text: str
    new_tokens: int
    forward_passes: int
    cut: bool = False  # the row ran into its token limit (its text ends after a sentence: rujokes_model/endings.py)


class Engine(Protocol):
    def available_sizes(self) -> list[str]:
        """Concrete sizes (of rujokes_model.config.SIZES) this engine can generate with.

        Called from the event loop while generate runs in its thread: keep it cheap and thread-safe.
        """
        ...

    def generate(
        self, size: str, jobs: list[Job], on_partial: PartialCallback | None = None,
        on_done: DoneCallback | None = None, more_jobs: MoreJobs | None = None,
    ) -> list[GenerationOutput]:
        """Generate one text per job (same order or matched by request_id); blocking, runs in a thread.

        on_done, if given, receives each job's output as soon as that job is finished (a short joke
        need not wait for its batch's longest); the returned list still holds every output, the
        jobs that more_jobs added included (after the given ones).
        """
        ...
