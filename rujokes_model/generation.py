"""KV-cached autoregressive generation: validate → left-pad → prefill once → decode one token a step.

`iter_generate` yields each step's new tokens (for streaming); `generate` collects them.
Context rule: the cache holds max_seq_len columns, so a prompt keeps only its last
(max_seq_len - max_new_tokens) tokens; max_new_tokens must leave room for at least one prompt token.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from .compiled_step import compiled_step
from .sampling import PerRow, apply_repetition_penalty, draw_tokens


@dataclass
class PreparedPrompt:
    input_ids: torch.Tensor       # (B, L) left-padded
    attention_mask: torch.Tensor  # (B, L) 1 = real token


def prepare_prompt(input_ids, attention_mask, vocab_size: int, max_seq_len: int, max_new_tokens: int,
                   pad_token_id: int) -> PreparedPrompt:
    """Check inputs, move any padding to the left and cut over-long prompts from the left."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor of token ids, got {type(input_ids).__name__}")
    if input_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if input_ids.dim() != 2 or input_ids.shape[1] == 0 or input_ids.shape[0] == 0:
        raise ValueError(f"input_ids must be (batch, length) with length ≥ 1, got shape {tuple(input_ids.shape)}")
    input_ids = input_ids.long()
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} "
                         f"!= input_ids shape {tuple(input_ids.shape)}")
    attention_mask = attention_mask.to(input_ids.device).long()
    lengths = attention_mask.sum(-1)
    if bool((lengths == 0).any()):
        raise ValueError("every prompt needs at least one token (start from the tokenizer's bos token)")
    real = input_ids[attention_mask.bool()]
    if bool((real < 0).any()) or bool((real >= vocab_size).any()):
        raise ValueError(f"token ids must be in [0, {vocab_size}); got min {int(real.min())}, max {int(real.max())}")
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be ≥ 1")
    if max_new_tokens >= max_seq_len:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the "
                         f"context of {max_seq_len} tokens")
    # Left padding: every row's last prompt token sits in the same column, so one decode step serves all.
    if not bool((attention_mask[:, 1:] >= attention_mask[:, :-1]).all()):
        order = torch.argsort(attention_mask, dim=1, stable=True)  # zeros (padding) first, tokens keep order
        input_ids = torch.gather(input_ids, 1, order)
        attention_mask = torch.gather(attention_mask, 1, order)
    width = int(lengths.max())
    input_ids, attention_mask = input_ids[:, -width:], attention_mask[:, -width:]
    budget = max_seq_len - max_new_tokens
    if width > budget:
        warnings.warn(f"prompt of {width} tokens cut to its last {budget} to fit max_seq_len={max_seq_len} "
                      f"with max_new_tokens={max_new_tokens}", stacklevel=3)
        input_ids, attention_mask = input_ids[:, -budget:], attention_mask[:, -budget:]
    input_ids = input_ids.masked_fill(attention_mask == 0, pad_token_id)
    return PreparedPrompt(input_ids, attention_mask)


@torch.inference_mode()
def iter_generate(model, input_ids: torch.Tensor, max_new_tokens: int, *, eos_token_id: int | None = None,
                  pad_token_id: int | None = None, do_sample: bool = True, top_k: PerRow = None,
                  top_p: PerRow = None, temperature: PerRow = 1.0, repetition_penalty: float = 1.0,
                  attention_mask: torch.Tensor | None = None, use_cache: bool = True,
                  generator: torch.Generator | Sequence[torch.Generator | None] | None = None,
                  compact: bool = True, compile: bool = False,
                  ) -> Iterator[tuple[PreparedPrompt, torch.Tensor, torch.Tensor]]:
    """Yield (prompt, tokens, finished) after each step; tokens (B,) of finished rows are pad ids.

    compact: with a cache, rows that finished leave the batch (their cache rows are dropped) once a
    quarter of the batch has, so the remaining rows' steps stop paying for them. A row's tokens do
    not depend on its batch mates either way.
    compile: run the cached decode steps through the model's compiled static-shape step
    (`compiled_step.py`; the first call compiles, ≈ 10–30 s on a CPU). Needs use_cache.
    """
    config = model.config
    pad = pad_token_id if pad_token_id is not None else (eos_token_id if eos_token_id is not None else 0)
    if isinstance(input_ids, torch.Tensor):  # anything else gets prepare_prompt's clear TypeError
        input_ids = input_ids.to(model.device)
    prompt = prepare_prompt(input_ids, attention_mask, config.vocab_size,
                            config.max_seq_len, max_new_tokens, pad)
    ids, mask = prompt.input_ids, prompt.attention_mask
    B, L = ids.shape
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    seen = None
    if repetition_penalty != 1.0:
        # scatter_add, not scatter: a pad id that also occurs in a prompt must not overwrite its mark.
        seen = torch.zeros(B, config.vocab_size, dtype=torch.long, device=ids.device).scatter_add_(1, ids, mask) > 0
    finished = torch.zeros(B, dtype=torch.bool, device=ids.device)
    if compile and not use_cache:
        raise ValueError("compile=True needs use_cache=True: the compiled step is a cached decode step")
    step_fn = compiled_step(model) if compile else None
    cache = model.new_cache(B, L + max_new_tokens) if use_cache else None
    plan = model.decode_plan(mask, L + max_new_tokens) if use_cache else None

    # Prefill: the whole prompt once; later steps feed one token against the cache.
    logits = model(ids, attention_mask=mask, position_ids=positions, cache=cache, start=0)[:, -1]
    all_ids, all_mask = ids, mask
    rows = None  # original row of each row still in the batch; None while no row has left
    for step in range(max_new_tokens):
        if seen is not None:
            logits = apply_repetition_penalty(logits, seen, repetition_penalty)
        tokens = draw_tokens(logits, top_k, top_p, temperature, generator) if do_sample else logits.argmax(-1)
        tokens = tokens.masked_fill(finished, pad)
        if eos_token_id is not None:
            finished = finished | (tokens == eos_token_id)
        if seen is not None:
            seen.scatter_(1, tokens[:, None], True)
        if rows is None:
            yield prompt, tokens, finished
        else:  # back to the caller's rows: rows that left are finished and emit pad
            yield (prompt,
                   torch.full((B,), pad, dtype=tokens.dtype, device=tokens.device).index_copy_(0, rows, tokens),
                   torch.ones(B, dtype=torch.bool, device=finished.device).index_copy_(0, rows, finished))
        n_finished = int(finished.sum())
        if n_finished == len(finished) or step == max_new_tokens - 1:
            return
        if use_cache and compact and n_finished >= max(1, len(finished) // 4):
            keep = (~finished).nonzero().squeeze(1)
            rows = keep if rows is None else rows.index_select(0, keep)
            for layer_cache in cache:
                layer_cache.keep_rows(keep)
            plan.keep_rows(keep)
            tokens, finished = tokens.index_select(0, keep), finished.index_select(0, keep)
            seen = seen.index_select(0, keep) if seen is not None else None
            kept = keep.tolist()
            top_k, top_p, temperature, generator = (
                _keep(value, keep, kept) for value in (top_k, top_p, temperature, generator))
        if step_fn is not None:
            logits = step_fn(tokens, cache, plan, L + step)
        elif use_cache:
            logits = model(tokens[:, None], cache=cache, inputs=plan.inputs(L + step))[:, -1]
        else:
            all_mask = torch.cat([all_mask, torch.ones(B, 1, dtype=all_mask.dtype, device=all_mask.device)], dim=1)
            all_ids = torch.cat([all_ids, tokens[:, None]], dim=1)
            full_positions = (all_mask.cumsum(-1) - 1).clamp_min(0)
            logits = model(all_ids, attention_mask=all_mask, position_ids=full_positions)[:, -1]


def _keep(value, keep: torch.Tensor, kept: list[int]):
    """A per-row setting (tensor or list) restricted to the rows still in the batch; scalars pass through."""
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        return value.index_select(0, keep.to(value.device))
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [value[i] for i in kept]
    return value


def generate(model, input_ids: torch.Tensor, max_new_tokens: int, *,
             streamer: Callable[[torch.Tensor], None] | None = None, **kwargs) -> torch.Tensor:
    """Prompt + generated ids, (B, L + n). Rows that met eos are filled with pad (eos by default).

    Keyword arguments are those of `iter_generate`; `streamer` is called with each step's (B,) tokens.
    """
    prompt, steps = None, []
    for prompt, tokens, _ in iter_generate(model, input_ids, max_new_tokens, **kwargs):
        steps.append(tokens)
        if streamer is not None:
            streamer(tokens)
    return torch.cat([prompt.input_ids, torch.stack(steps, dim=1)], dim=1)
