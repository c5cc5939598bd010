"""Loaded at start-up by the fault drill's workers only (their PYTHONPATH has this folder): with
RUJOKES_DRILL_POISON set, the model raises on any batch that holds an opening containing it, whether the
request started the batch or joined it mid-way, as a request that crashes the model would."""
import os

POISON = os.environ.get("RUJOKES_DRILL_POISON")

if POISON:
    import bot.worker.engine as engine

    original = engine.ModelEngine.generate

    def check(jobs):
        if any(POISON in job.prompt for job in jobs):
            raise RuntimeError("poison request (fault drill)")
        return jobs

    def generate(self, size, jobs, on_partial=None, on_done=None, more_jobs=None):
        check(jobs)
        joining = None if more_jobs is None else (lambda *args, **kwargs: check(more_jobs(*args, **kwargs)))
        return original(self, size, jobs, on_partial, on_done, joining)

    engine.ModelEngine.generate = generate
