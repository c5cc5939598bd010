"""Where the worker meets the model: load each size once, turn a batch of jobs into jokes.

One `generate` call is one static batch: prompts are left-padded together, every row keeps its
own sampling settings and seed, rows leave when they hit <eos> or their token limit, and the batch
ends when every row has. Partial texts are reported as rows grow (for streaming to Telegram).
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass

import torch

from rujokes_model import ByteLevelBPETokenizer, IncrementalDecoder, TransformerForCausalLM, iter_generate
from rujokes_model.pretrained import pretrained_path

from .engine_api import DoneCallback, GenerationOutput, Job, PartialCallback

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


class ModelEngine:
    def __init__(self, models: dict[str, LoadedModel], device: torch.device) -> None:
        self.models = models
        self.device = device
        self._lock = threading.Lock()  # one batch at a time per engine: models hold no per-call state, caches do

    def available_sizes(self) -> list[str]:
        return list(self.models)

    def generate(self, size: str, jobs: list[Job], on_partial: PartialCallback | None = None,
                 on_done: DoneCallback | None = None) -> list[GenerationOutput]:
        if size not in self.models:
            raise KeyError(f"size {size!r} is not loaded")
        if not jobs:
            return []
        with self._lock:
            return self._generate(self.models[size], jobs, on_partial, on_done)

    def _generate(self, loaded: LoadedModel, jobs: list[Job], on_partial: PartialCallback | None,
                  on_done: DoneCallback | None) -> list[GenerationOutput]:
        model, tokenizer = loaded.model, loaded.tokenizer
        context = model.config.max_seq_len
        limits = [max(1, min(job.max_new_tokens, context // 2)) for job in jobs]
        max_new = max(limits)
        # Keep each prompt's last tokens that fit (its <bos> is lost only for absurdly long prompts).
        budget = context - max_new
        prompts = [ids[-budget:] for ids in tokenizer.encode_batch([job.prompt for job in jobs])]
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(jobs), width), tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(jobs), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention_mask[row, width - len(ids):] = 1
        # A seeded job gets its own generator (same seed, same joke, whatever the batch); the rest share one draw.
        generators = [torch.Generator(device=self.device).manual_seed(job.seed) if job.seed is not None else None
                      for job in jobs]
        decoders = [IncrementalDecoder(tokenizer) for _ in jobs]
        # Byte-level BPE decodes by concatenation: a partial is the prompt's text (decoded once) plus the
        # decoder's text of the new tokens, with no second decode of the whole row every step.
        prompt_texts = [tokenizer.decode(ids) for ids in prompts] if on_partial is not None else []
        new_ids: list[list[int]] = [[] for _ in jobs]
        done = [False] * len(jobs)
        outputs: list[GenerationOutput | None] = [None] * len(jobs)
        forward_passes = 0

        def finish(row: int) -> None:
            done[row] = True
            outputs[row] = GenerationOutput(jobs[row].request_id, self._text(tokenizer, prompts[row], new_ids[row]),
                                            len(new_ids[row]), forward_passes)
            if on_done is not None:
                on_done(outputs[row])

        steps = iter_generate(model, input_ids, max_new, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id, do_sample=True,
                              top_k=[job.top_k for job in jobs], top_p=[job.top_p for job in jobs],
                              temperature=[job.temperature for job in jobs], attention_mask=attention_mask,
                              generator=generators)
        for _, tokens, finished in steps:
            forward_passes += 1
            for row, token in enumerate(tokens.tolist()):
                if done[row]:
                    continue
                if token == tokenizer.eos_token_id:
                    finish(row)
                    continue
                new_ids[row].append(token)
                if on_partial is not None and decoders[row].push(token):
                    on_partial(jobs[row].request_id, (prompt_texts[row] + decoders[row].emitted).strip())
                if len(new_ids[row]) >= limits[row]:
                    finish(row)
            if all(done):
                break
        for row in range(len(jobs)):  # rows still open when generation stopped (every step used)
            if not done[row]:
                finish(row)
        return outputs

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
    return ModelEngine(models, device)
