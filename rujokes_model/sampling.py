"""Turning next-token logits into tokens: penalties, temperature, top-k/top-p filtering and draws.

Every knob may be a scalar or one value per row, so a worker can batch requests whose users asked
for different settings; `generators` may be one torch.Generator or one per row (per-request seeds).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

PerRow = float | int | None | Sequence


def _per_row(value: PerRow, batch: int, default: float, device: torch.device) -> torch.Tensor:
    if value is None:
        value = default
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=torch.float32).expand(batch)
    if isinstance(value, (int, float)):
        return torch.full((batch,), float(value), device=device)
    values = [default if v is None else float(v) for v in value]
    if len(values) != batch:
        raise ValueError(f"expected {batch} per-row values, got {len(values)}")
    return torch.tensor(values, device=device)


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style penalty: shrink logits of tokens already in the sequence (seen is a (B, V) bool map)."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def filter_logits(logits: torch.Tensor, temperature: PerRow = 1.0, top_k: PerRow = None,
                  top_p: PerRow = None) -> torch.Tensor:
    """Temperature-scaled logits (B, V) with everything outside top-k ∩ top-p set to -inf.

    top_k of None/0 and top_p of None/1.0 disable that filter for the row.
    """
    B, V = logits.shape
    device = logits.device
    if all(v is None or isinstance(v, (int, float)) for v in (temperature, top_k, top_p)):
        # One setting for the whole batch (the usual case): no per-row tensors, topk instead of a full sort.
        t = 1.0 if temperature is None else max(float(temperature), 1e-5)
        k, p = int(top_k or 0), (1.0 if top_p is None else float(top_p))
        if p >= 1.0:
            logits = logits.float() if t == 1.0 else logits.float() / t
            if 0 < k < V:
                kth = logits.topk(k, dim=-1).values[:, -1:]
                return logits.masked_fill(logits < kth, float("-inf"))
            return logits
    temperature = _per_row(temperature, B, 1.0, device).clamp_min(1e-5)
    logits = logits.float() / temperature[:, None]
    k = _per_row(top_k, B, 0, device).long()
    p = _per_row(top_p, B, 1.0, device)
    use_k = (k > 0) & (k < V)
    use_p = p < 1.0
    if not bool(use_k.any() or use_p.any()):
        return logits
    if not bool(use_p.any()) and bool((k == k[0]).all()):
        # Common case (one k for the whole batch): topk is much cheaper than a full sort.
        kth = logits.topk(int(k[0]), dim=-1).values[:, -1:]
        return logits.masked_fill(logits < kth, float("-inf"))
    return filter_scaled_rows(logits, k, p)


def filter_scaled_rows(scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Temperature-scaled logits (B, V) with -inf outside each row's top-k ∩ top-p, per-row (B,) tensors
    (top_k 0 or ≥ V, top_p ≥ 1: that filter is off): one sort, no host sync, no data-dependent branch."""
    V = scaled.shape[-1]
    sorted_logits, order = scaled.sort(dim=-1, descending=True)
    rank = torch.arange(V, device=scaled.device)[None]
    drop = ((top_k > 0) & (top_k < V))[:, None] & (rank >= top_k[:, None])
    probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(-1)
    # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
    mass_before = probs.cumsum(-1) - probs
    drop |= (top_p < 1.0)[:, None] & (mass_before >= top_p[:, None])
    drop[:, 0] = False
    return scaled.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))


def uniform(value: PerRow) -> PerRow:
    """A per-row list whose rows all agree is that one value, so the scalar fast paths apply."""
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0 \
            and all(v == value[0] for v in value):
        return value[0]
    return value


def sample_top_k(logits: torch.Tensor, k: int, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row among its k best, at `temperature`: filter_logits + sample_tokens for one
    k and temperature shared by the batch and one (or no) generator, fused into five ops.
    Draws exactly what the two-step path draws (barring exact ties at the k-th logit)."""
    values, columns = logits.topk(k, dim=-1)
    values = values.float() if temperature == 1.0 else values.float() / max(temperature, 1e-5)
    picked = torch.multinomial(values.softmax(-1), 1, generator=generator)
    return columns.gather(-1, picked).squeeze(-1)


def draw_tokens(logits: torch.Tensor, top_k: PerRow = None, top_p: PerRow = None, temperature: PerRow = 1.0,
                generator: torch.Generator | Sequence[torch.Generator | None] | None = None) -> torch.Tensor:
    """One token per row of `logits` (B, V) with batch-wide or per-row settings; temperature 0 is greedy.

    Picks the cheapest exact path: argmax when every row is greedy, the fused top-k draw when the whole
    batch shares one k and temperature (and no row has a seed of its own), else filter + sample.
    """
    top_k, top_p, temperature = uniform(top_k), uniform(top_p), uniform(temperature)
    if isinstance(generator, Sequence) and all(g is None for g in generator):
        generator = None  # no row asked for its own seed: one shared draw
    per_row = isinstance(temperature, Sequence) or (isinstance(temperature, torch.Tensor) and temperature.dim() > 0)
    if not per_row:
        t = 1.0 if temperature is None else float(temperature)
        if t <= 0:
            return logits.argmax(-1)  # temperature and top-k/top-p never move the argmax
        if isinstance(top_k, int) and 0 < top_k < logits.shape[-1] and top_p in (None, 1.0) \
                and (generator is None or isinstance(generator, torch.Generator)):
            return sample_top_k(logits, top_k, t, generator)
        return sample_tokens(filter_logits(logits, t, top_k, top_p), True, generator)
    rows = torch.as_tensor([1.0 if t is None else t for t in temperature] if isinstance(temperature, Sequence)
                           else temperature, dtype=torch.float32, device=logits.device)
    samples = rows > 0
    if not bool(samples.any()):
        return logits.argmax(-1)
    filtered = filter_logits(logits, rows.clamp_min(1e-5), top_k, top_p)
    return sample_tokens(filtered, True if bool(samples.all()) else samples, generator)


def sample_tokens(logits: torch.Tensor, do_sample: bool | torch.Tensor,
                  generators: torch.Generator | Sequence[torch.Generator | None] | None = None) -> torch.Tensor:
    """One token per row from filtered logits (B, V): a draw, or argmax where do_sample is False."""
    greedy = logits.argmax(-1)
    if do_sample is False:
        return greedy
    # Draw among the tokens that survived filtering only: after top-k that is k columns, not the whole
    # vocabulary (multinomial draws one exponential per column). Same distribution, far less work.
    allowed = torch.isfinite(logits).sum(-1)
    width = int(allowed.max())
    values, columns = logits.topk(width, dim=-1)  # sorted: each row's allowed tokens come first
    probs = values.softmax(-1)
    if generators is None or isinstance(generators, torch.Generator):
        picked = torch.multinomial(probs, 1, generator=generators).squeeze(-1)
    else:
        # One generator per row: a request's tokens depend on its own seed, not on its batch mates,
        # so a seeded row draws over its own allowed set only (the batch's widest set would change its draws).
        if len(generators) != probs.shape[0]:
            raise ValueError(f"expected one generator per row ({probs.shape[0]}), got {len(generators)}")
        # Rows without a generator (no seed asked for) share one draw from the default RNG.
        picked = torch.multinomial(probs, 1).squeeze(-1) if None in generators else torch.empty_like(greedy)
        for i, g in enumerate(generators):
            if g is not None:
                picked[i] = torch.multinomial(probs[i, : int(allowed[i])], 1, generator=g)[0]
    drawn = columns.gather(-1, picked[:, None]).squeeze(-1)
    if isinstance(do_sample, torch.Tensor):
        return torch.where(do_sample, drawn, greedy)
    return drawn
