"""KV-cached autoregressive generation: validate → left-pad → prefill once → decode one token a step.

`iter_generate` yields each step's new tokens (for streaming); `generate` collects them. Its phases are
functions of their own: `prefill` (the prompt in one forward), `sample_step` (one token a row),
`compact_rows` (finished rows leave the batch) and `decode_one_token` (eager, or through the compiled step).
Context rule: the cache holds max_seq_len columns, so a prompt keeps only its last
(max_seq_len - max_new_tokens) tokens; max_new_tokens must leave room for at least one prompt token.
Given `mid_character_ids` (tokenizer.mid_character_ids()), a cut prompt also drops leading tokens that
begin inside a UTF-8 character, so the model and the decoded text start on a whole character.
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
                   pad_token_id: int, mid_character_ids: Sequence[int] | torch.Tensor | None = None) -> PreparedPrompt:
    """Check inputs, move any padding to the left and cut over-long prompts from the left
    (at a character boundary when `mid_character_ids` names the tokens that begin mid-character)."""
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
        if mid_character_ids is not None:
            attention_mask = _start_on_a_character(input_ids, attention_mask, lengths > budget, mid_character_ids)
            width = int(attention_mask.sum(-1).max())
            input_ids, attention_mask = input_ids[:, -width:], attention_mask[:, -width:]
    input_ids = input_ids.masked_fill(attention_mask == 0, pad_token_id)
    return PreparedPrompt(input_ids, attention_mask)


def _start_on_a_character(input_ids: torch.Tensor, attention_mask: torch.Tensor, cut: torch.Tensor,
                          mid_character_ids) -> torch.Tensor:
    """The mask with each cut row's leading mid-character tokens masked out (they become left padding).

    A cut row has no padding, so its leading tokens start at column 0. A row made only of such tokens
    keeps them all: a prompt needs a token, and decoding drops the stray bytes.
    """
    mid = torch.isin(input_ids, torch.as_tensor(mid_character_ids, dtype=input_ids.dtype, device=input_ids.device))
    leading = mid.long().cumprod(dim=1).bool() & cut[:, None]
    leading &= ~leading.all(dim=1, keepdim=True)
    return attention_mask.masked_fill(leading, 0)


@dataclass
class _Rows:
    """The rows still in the batch and their per-row state; `rows` maps them back to the caller's rows."""
    finished: torch.Tensor               # (b,) bool
    seen: torch.Tensor | None            # (b, vocab) bool: tokens so far, for the repetition penalty
    settings: tuple                      # (top_k, top_p, temperature, generator), each per row or shared
    rows: torch.Tensor | None = None     # original row of each row still in the batch; None while none left


def prefill(model, prompt: PreparedPrompt, cache: list | None) -> torch.Tensor:
    """The whole prompt in one forward (filling `cache`); the last column's logits (B, V)."""
    ids, mask = prompt.input_ids, prompt.attention_mask
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    return model(ids, attention_mask=mask, position_ids=positions, cache=cache, start=0)[:, -1]


def sample_step(logits: torch.Tensor, state: _Rows, *, do_sample: bool, repetition_penalty: float,
                eos_token_id: int | None, pad: int) -> torch.Tensor:
    """One token per row still in the batch; a finished row gets pad. Updates `state` (finished, seen)."""
    if state.seen is not None:
        logits = apply_repetition_penalty(logits, state.seen, repetition_penalty)
    tokens = draw_tokens(logits, *state.settings) if do_sample else logits.argmax(-1)
    tokens = tokens.masked_fill(state.finished, pad)
    if eos_token_id is not None:
        state.finished = state.finished | (tokens == eos_token_id)
    if state.seen is not None:
        state.seen.scatter_(1, tokens[:, None], True)
    return tokens


def compact_rows(state: _Rows, tokens: torch.Tensor, cache: list, plan) -> torch.Tensor:
    """Drop the finished rows from the batch (cache, plan, per-row state); the remaining rows' tokens."""
    keep = (~state.finished).nonzero().squeeze(1)
    state.rows = keep if state.rows is None else state.rows.index_select(0, keep)
    for layer_cache in cache:
        layer_cache.keep_rows(keep)
    plan.keep_rows(keep)
    state.finished = state.finished.index_select(0, keep)
    state.seen = state.seen.index_select(0, keep) if state.seen is not None else None
    kept = keep.tolist()
    state.settings = tuple(_keep(value, keep, kept) for value in state.settings)
    return tokens.index_select(0, keep)


def decode_one_token(model, tokens: torch.Tensor, cache: list, plan, column: int, step_fn=None) -> torch.Tensor:
    """One new token a row against the cache, written at `column`; next logits (B, V). `step_fn`: a compiled step."""
    if step_fn is not None:
        return step_fn(tokens, cache, plan, column)
    return model(tokens[:, None], cache=cache, inputs=plan.inputs(column))[:, -1]


def _caller_rows(state: _Rows, tokens: torch.Tensor, batch: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens and finished flags of every row the caller passed: rows that left are finished and emit pad."""
    if state.rows is None:
        return tokens, state.finished
    return (torch.full((batch,), pad, dtype=tokens.dtype, device=tokens.device).index_copy_(0, state.rows, tokens),
            torch.ones(batch, dtype=torch.bool, device=tokens.device).index_copy_(0, state.rows, state.finished))


@torch.inference_mode()
def iter_generate(model, input_ids: torch.Tensor, max_new_tokens: int, *, eos_token_id: int | None = None,
                  pad_token_id: int | None = None, do_sample: bool = True, top_k: PerRow = None,
                  top_p: PerRow = None, temperature: PerRow = 1.0, repetition_penalty: float = 1.0,
                  attention_mask: torch.Tensor | None = None, use_cache: bool = True,
                  generator: torch.Generator | Sequence[torch.Generator | None] | None = None,
                  compact: bool = True, compile: bool = False,
                  mid_character_ids: Sequence[int] | torch.Tensor | None = None, min_new_tokens: int = 0,
                  ) -> Iterator[tuple[PreparedPrompt, torch.Tensor, torch.Tensor]]:
    """Yield (prompt, tokens, finished) after each step; tokens (B,) of finished rows are pad ids.

    compact: with a cache, rows that finished leave the batch (their cache rows are dropped) once a
    quarter of the batch has, so the remaining rows' steps stop paying for them. A row's tokens do
    not depend on its batch mates either way.
    compile: run the cached decode steps through the model's compiled static-shape step
    (`compiled_step.py`; the first call compiles, ≈ 10–30 s on a CPU). Needs use_cache.
    mid_character_ids: tokenizer.mid_character_ids(); a prompt cut to fit the context then starts on
    a whole character rather than on a stray byte of one.
    min_new_tokens: eos_token_id cannot be drawn before a row has this many new tokens.
    """
    config = model.config
    pad = pad_token_id if pad_token_id is not None else (eos_token_id if eos_token_id is not None else 0)
    if isinstance(input_ids, torch.Tensor):  # anything else gets prepare_prompt's clear TypeError
        input_ids = input_ids.to(model.device)
    prompt = prepare_prompt(input_ids, attention_mask, config.vocab_size,
                            config.max_seq_len, max_new_tokens, pad, mid_character_ids)
    if compile and not use_cache:
        raise ValueError("compile=True needs use_cache=True: the compiled step is a cached decode step")
    ids, mask = prompt.input_ids, prompt.attention_mask
    B, L = ids.shape
    seen = None
    if repetition_penalty != 1.0:
        # scatter_add, not scatter: a pad id that also occurs in a prompt must not overwrite its mark.
        seen = torch.zeros(B, config.vocab_size, dtype=torch.long, device=ids.device).scatter_add_(1, ids, mask) > 0
    state = _Rows(torch.zeros(B, dtype=torch.bool, device=ids.device), seen, (top_k, top_p, temperature, generator))
    step_fn = compiled_step(model) if compile else None
    cache = model.new_cache(B, L + max_new_tokens) if use_cache else None
    plan = model.decode_plan(mask, L + max_new_tokens) if use_cache else None
    sample = dict(do_sample=do_sample, repetition_penalty=repetition_penalty, eos_token_id=eos_token_id, pad=pad)

    logits = prefill(model, prompt, cache)
    all_ids, all_mask = ids, mask  # without a cache, every step runs the whole sequence again
    for step in range(max_new_tokens):
        if step < min_new_tokens and eos_token_id is not None:
            logits = logits.index_fill(1, torch.tensor([eos_token_id], device=logits.device), float("-inf"))
        tokens = sample_step(logits, state, **sample)
        yield (prompt, *_caller_rows(state, tokens, B, pad))
        n_finished = int(state.finished.sum())
        if n_finished == len(state.finished) or step == max_new_tokens - 1:
            return
        if use_cache and compact and n_finished >= max(1, len(state.finished) // 4):
            tokens = compact_rows(state, tokens, cache, plan)
        if use_cache:
            logits = decode_one_token(model, tokens, cache, plan, L + step, step_fn)
        else:
            all_mask = torch.cat([all_mask, torch.ones(B, 1, dtype=all_mask.dtype, device=all_mask.device)], dim=1)
            all_ids = torch.cat([all_ids, tokens[:, None]], dim=1)
            logits = prefill(model, PreparedPrompt(all_ids, all_mask), None)


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
