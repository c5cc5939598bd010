"""Where the worker meets the model: turn a stream of jobs into jokes (the models are loaded by `loading`).

One `generate` call runs a continuous batch (rujokes_model.continuous): every row keeps its own
sampling settings and seed, a row leaves the moment it hits <eos> or its token limit (and is reported
done right then), and, when the worker offers more jobs between decode steps, new rows join the
running batch instead of waiting for it to end. Partial texts are reported as rows grow.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch

from bot.worker.engine_api import DoneCallback, GenerationOutput, Job, MoreJobs, PartialCallback
from rujokes_model import ByteLevelBPETokenizer, IncrementalDecoder, TransformerForCausalLM
from rujokes_model.continuous import ContinuousBatch, RowSettings
from rujokes_model.cuda_graph_step import GraphedDecodeStep
from rujokes_model.endings import MIN_JOKE_TOKENS, end_at_sentence
from rujokes_model.serving import BackgroundCompile


@dataclass
class LoadedModel:
    model: TransformerForCausalLM
    tokenizer: ByteLevelBPETokenizer
    source: str


# How often (in decode steps) a running batch asks for more jobs: each ask may cost a Redis round trip,
# so after an ask that brought nothing the interval doubles (up to the max) and resets when jobs join.
POLL_EVERY_STEPS = 4
POLL_EVERY_STEPS_MAX = 32
# Rows a GPU batch replays from CUDA graphs (cuda_graph_step.py); a batch past it runs the step directly.
GRAPHED_ROWS = 64


@dataclass(eq=False)  # rows are compared by identity
class _Row:
    """One job while it is in (or waiting for) the running batch."""
    job: Job
    prompt: list[int]
    limit: int
    settings: RowSettings
    decoder: IncrementalDecoder
    prompt_text: str = ""
    new_ids: list[int] = field(default_factory=list)
    passes: int = 0


class ModelEngine:
    def __init__(self, models: dict[str, LoadedModel], device: torch.device, *,
                 compiling: dict[str, BackgroundCompile] | None = None,
                 compile_on_first_use: set[str] | None = None, cuda_graphs: bool = True) -> None:
        self.models = models
        self.device = device
        # Sizes whose compiled decode step is being built (rujokes_model.serving): a batch that starts
        # once it is ready decodes through it, earlier ones eagerly, with the same tokens either way.
        self.compiling = compiling or {}
        self._compile_on_first_use = set(compile_on_first_use or ())  # sizes whose compile starts when asked for
        self._lock = threading.Lock()  # one batch at a time per engine: models hold no per-call state, caches do
        self.cuda_graphs = cuda_graphs and device.type == "cuda"
        self._graphed: dict[str, tuple[bool, GraphedDecodeStep]] = {}  # size -> (around the compiled step?, step)

    def available_sizes(self) -> list[str]:
        return list(self.models)

    def compiled(self, size: str) -> bool:
        """Whether batches of `size` decode through its compiled step now."""
        return size in self.compiling and self.compiling[size].ready

    def generate(self, size: str, jobs: list[Job], on_partial: PartialCallback | None = None,
                 on_done: DoneCallback | None = None, more_jobs: MoreJobs | None = None) -> list[GenerationOutput]:
        if size not in self.models:
            raise KeyError(f"size {size!r} is not loaded")
        if not jobs:
            return []
        if size in self._compile_on_first_use:
            self._compile_on_first_use.discard(size)
            self.compiling[size] = BackgroundCompile(self.models[size].model, size)
        try:
            with self._lock:
                return self._generate(size, jobs, on_partial, on_done, more_jobs)
        finally:
            if size in self.compiling:  # its first batch is out: the compile's turn
                self.compiling[size].begin()

    def _generate(self, size: str, jobs: list[Job], on_partial: PartialCallback | None,
                  on_done: DoneCallback | None, more_jobs: MoreJobs | None) -> list[GenerationOutput]:
        loaded = self.models[size]
        model, tokenizer = loaded.model, loaded.tokenizer
        batch = ContinuousBatch(model, step=self._step(size))
        waiting = self._rows(loaded, jobs, streaming=on_partial is not None)
        order = [job.request_id for job in jobs]
        live: list[_Row] = []
        outputs: dict[str, GenerationOutput] = {}
        steps, poll_every, next_poll = 0, POLL_EVERY_STEPS, POLL_EVERY_STEPS
        while waiting or live:
            admitted = self._admit(batch, waiting)
            if admitted:
                batch.join([row.prompt for row in admitted], [row.settings for row in admitted],
                           tokenizer.pad_token_id)
                live += admitted
                waiting = [row for row in waiting if row not in admitted]
            beginning = [index for index, row in enumerate(live) if len(row.new_ids) < MIN_JOKE_TOKENS]
            batch.forbid(beginning, tokenizer.eos_token_id)  # a joke is more than its opening
            tokens = batch.sample().tolist()
            steps += 1
            leaving = []
            for index, (row, token) in enumerate(zip(live, tokens)):
                row.passes += 1
                if token != tokenizer.eos_token_id:
                    row.new_ids.append(token)
                    if on_partial is not None and row.decoder.push(token):
                        on_partial(row.job.request_id, (row.prompt_text + row.decoder.emitted).strip())
                if token == tokenizer.eos_token_id or len(row.new_ids) >= row.limit:
                    leaving.append(index)
                    cut = token != tokenizer.eos_token_id
                    text = self._text(tokenizer, row.prompt, row.new_ids, cut=cut)
                    output = GenerationOutput(row.job.request_id, text, len(row.new_ids), row.passes, cut)
                    outputs[row.job.request_id] = output
                    if on_done is not None:
                        on_done(output)
            batch.remove(leaving)
            gone = set(leaving)
            live = [row for index, row in enumerate(live) if index not in gone]
            if more_jobs is not None and steps >= next_poll:
                joining = more_jobs(len(live) + len(waiting))
                waiting += self._rows(loaded, joining, streaming=on_partial is not None)
                order += [job.request_id for job in joining]
                poll_every = POLL_EVERY_STEPS if joining else min(2 * poll_every, POLL_EVERY_STEPS_MAX)
                next_poll = steps + poll_every
            batch.feed()
        return [outputs[request_id] for request_id in order]

    def _step(self, size: str):
        """The decode step of a new batch: the compiled one once ready (else eager: None), on a GPU replayed
        from CUDA graphs. A graphed step holds one batch's rows at a time, as the engine's lock ensures."""
        compiled = self.compiling[size].step if self.compiled(size) else None
        if not self.cuda_graphs:
            return compiled
        held = self._graphed.get(size)
        if held is None or held[0] != (compiled is not None):  # the compile finished: capture it instead
            held = (compiled is not None, GraphedDecodeStep(self.models[size].model, GRAPHED_ROWS, inner=compiled))
            self._graphed[size] = held
        return held[1]

    def _rows(self, loaded: LoadedModel, jobs: list[Job], streaming: bool) -> list[_Row]:
        tokenizer, context = loaded.tokenizer, loaded.model.config.max_seq_len
        rows = []
        for job, ids in zip(jobs, tokenizer.encode_batch([job.prompt for job in jobs])):
            # The joke gets its whole limit where the opening leaves room for it; a long opening keeps its last
            # tokens up to half the context, from a whole character on (its <bos> is lost only then).
            prompt, limit = tokenizer.fit_context(ids, job.max_new_tokens, context)
            # A seeded job gets its own generator (same seed, same joke, whatever the batch); the rest share one draw.
            generator = (torch.Generator(device=self.device).manual_seed(job.seed) if job.seed is not None else None)
            settings = RowSettings(top_k=job.top_k or None, top_p=job.top_p, temperature=job.temperature,
                                   generator=generator, seed=job.seed)
            # Byte-level BPE decodes by concatenation: a partial is the prompt's text (decoded once) plus the
            # decoder's text of the new tokens, with no second decode of the whole row every step.
            rows.append(_Row(job, prompt, limit, settings, IncrementalDecoder(tokenizer),
                             tokenizer.decode(prompt) if streaming else ""))
        return rows

    @staticmethod
    def _admit(batch: ContinuousBatch, waiting: list[_Row]) -> list[_Row]:
        """The waiting rows that fit the running batch now (an empty batch takes the next rows that fit together)."""
        if len(batch):
            return [row for row in waiting if batch.can_join(len(row.prompt), row.limit)]
        admitted: list[_Row] = []
        for row in waiting:
            width = max([len(row.prompt)] + [len(r.prompt) for r in admitted])
            if all(width + r.limit <= batch.columns for r in admitted + [row]):
                admitted.append(row)
        return admitted

    @staticmethod
    def _text(tokenizer: ByteLevelBPETokenizer, prompt: list[int], new: list[int], *, cut: bool) -> str:
        """The joke's text; `cut`: its row ran into its token limit, so it ends after its last whole sentence."""
        # decode drops a character the token limit cut in half (and any stray byte) rather than show U+FFFD
        text = tokenizer.decode(prompt + new).strip()
        return end_at_sentence(text, tokenizer.decode(prompt).strip()) if cut else text
