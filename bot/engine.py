"""Where the worker meets the model: load each size once, turn a stream of jobs into jokes.

One `generate` call runs a continuous batch (rujokes_model.continuous): every row keeps its own
sampling settings and seed, a row leaves the moment it hits <eos> or its token limit (and is reported
done right then), and, when the worker offers more jobs between decode steps, new rows join the
running batch instead of waiting for it to end. Partial texts are reported as rows grow.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field

import torch

from rujokes_model import ByteLevelBPETokenizer, IncrementalDecoder, TransformerForCausalLM
from rujokes_model.compiled_step import compiled_step
from rujokes_model.continuous import ContinuousBatch, RowSettings
from rujokes_model.cpu_kernels import KernelBuildError, kernel_threads
from rujokes_model.lowbit_weights import use_lowbit_weights
from rujokes_model.pretrained import pretrained_path

from .engine_api import DoneCallback, GenerationOutput, Job, MoreJobs, PartialCallback

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: TransformerForCausalLM
    tokenizer: ByteLevelBPETokenizer
    source: str


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_source(size: str, source: str, device: torch.device) -> LoadedModel:
    """`source`: "bundled" (shipped in the package), "hub:owner/repo@revision", or a local directory."""
    revision = None
    if source == "bundled":
        location: str = str(pretrained_path(size))
    elif source.startswith("hub:"):
        location, _, revision = source[4:].partition("@")
        revision = revision or size  # one branch per size
    else:
        location = os.path.expanduser(source)
        if not os.path.isdir(location):
            raise FileNotFoundError(f"model directory {location} for {size} does not exist")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cpu":
        # Serving processes own their float environment: denormal floats (the far tail of a softmax,
        # near-zero activations) cost x86 cores 10-100× per op and change no sampled token. Measured:
        # nano decodes 1.5-1.7× faster with them flushed to zero.
        torch.set_flush_denormal(True)
    model = TransformerForCausalLM.from_pretrained(location, revision=revision, device=device, dtype=dtype)
    tokenizer = ByteLevelBPETokenizer.from_pretrained(location, revision=revision)
    return LoadedModel(model, tokenizer, source)


# How often (in decode steps) a running batch asks for more jobs: each ask may cost a Redis round trip,
# so after an ask that brought nothing the interval doubles (up to the max) and resets when jobs join.
POLL_EVERY_STEPS = 4
POLL_EVERY_STEPS_MAX = 32


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
    def __init__(self, models: dict[str, LoadedModel], device: torch.device, *, compile: bool = False) -> None:
        self.models = models
        self.device = device
        self.compile = compile  # decode steps through each model's compiled step (rujokes_model.compiled_step)
        self._lock = threading.Lock()  # one batch at a time per engine: models hold no per-call state, caches do

    def available_sizes(self) -> list[str]:
        return list(self.models)

    def generate(self, size: str, jobs: list[Job], on_partial: PartialCallback | None = None,
                 on_done: DoneCallback | None = None, more_jobs: MoreJobs | None = None) -> list[GenerationOutput]:
        if size not in self.models:
            raise KeyError(f"size {size!r} is not loaded")
        if not jobs:
            return []
        with self._lock:
            return self._generate(self.models[size], jobs, on_partial, on_done, more_jobs)

    def _generate(self, loaded: LoadedModel, jobs: list[Job], on_partial: PartialCallback | None,
                  on_done: DoneCallback | None, more_jobs: MoreJobs | None) -> list[GenerationOutput]:
        model, tokenizer = loaded.model, loaded.tokenizer
        batch = ContinuousBatch(model, compile=self.compile)
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
                    output = GenerationOutput(row.job.request_id, self._text(tokenizer, row.prompt, row.new_ids),
                                              len(row.new_ids), row.passes)
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

    def _rows(self, loaded: LoadedModel, jobs: list[Job], streaming: bool) -> list[_Row]:
        tokenizer, context = loaded.tokenizer, loaded.model.config.max_seq_len
        rows = []
        for job, ids in zip(jobs, tokenizer.encode_batch([job.prompt for job in jobs])):
            limit = max(1, min(job.max_new_tokens, context // 2))
            # Keep the prompt's last tokens that fit (its <bos> is lost only for absurdly long prompts).
            prompt = ids[-(context - limit):]
            # A seeded job gets its own generator (same seed, same joke, whatever the batch); the rest share one draw.
            generator = (torch.Generator(device=self.device).manual_seed(job.seed) if job.seed is not None else None)
            settings = RowSettings(top_k=job.top_k or None, top_p=job.top_p, temperature=job.temperature,
                                   generator=generator)
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
    def _text(tokenizer: ByteLevelBPETokenizer, prompt: list[int], new: list[int]) -> str:
        return tokenizer.decode(prompt + new).strip()


def build_engine(settings) -> ModelEngine:
    """Load every configured size that can be loaded; one that can't is logged and left out, not fatal."""
    device = resolve_device(settings.device)
    if settings.torch_threads:
        # Small models on a shared CPU: more intra-op threads than free cores make every op slower.
        torch.set_num_threads(settings.torch_threads)
    models: dict[str, LoadedModel] = {}
    for size, source in settings.model_sources().items():
        if not source or source == "none":
            continue
        try:
            models[size] = load_source(size, source, device)
            log.info("loaded %s from %s on %s", size, source, device)
        except (FileNotFoundError, OSError, ValueError) as error:
            log.warning("size %s unavailable (%s): %s", size, source, error)
    if not models:
        raise RuntimeError("no model could be loaded; train one with `rujokes-train --size nano` "
                           "or point MODEL_NANO at a model directory")
    for size, loaded in models.items():
        weights = "int8" if size in settings.cpu_int8_sizes else "bf16" if size in settings.cpu_bf16_sizes else None
        speed_up(size, loaded.model, cpu_weights=weights, compile=settings.compile_decode)
    return ModelEngine(models, device, compile=settings.compile_decode)


def speed_up(size: str, model: TransformerForCausalLM, *, cpu_weights: str | None, compile: bool) -> None:
    """Swap in low-bit CPU weights and compile the decode step now, so no request waits for either."""
    if cpu_weights and model.device.type == "cpu":
        try:
            layers = use_lowbit_weights(model, cpu_weights)
            log.info("%s: %d layers use %s weights, kernels on %d threads", size, layers, cpu_weights, kernel_threads())
        except KernelBuildError as error:  # slower, not broken: serve with the fp32 weights
            log.error("%s: keeping fp32 weights, the %s kernels are unavailable: %s", size, cpu_weights, error)
    if compile:
        started = time.monotonic()
        compiled_step(model).warm_up()
        log.info("%s: decode step compiled in %.1f s", size, time.monotonic() - started)
