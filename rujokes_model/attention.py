"""Self-attention variants: grouped-query (MHA is the n_kv_head == n_head case) and DeepSeek-V2 MHLA.

Both take an `AttentionInputs` bundle built once per forward by the model (or once per generation
by a DecodePlan): the additive mask/bias (causal + padding + documents + ALiBi) and the RoPE rotation
at each row's positions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .kv_cache import KVCache, LatentCache
from .layers import RMSNorm, rotate_pairs


@dataclass
class AttentionInputs:
    start: int                          # cache column of the first new token
    mask: torch.Tensor | None           # (B|1, H|1, T, S): bool (True = may attend) or additive float; None = causal
    rope: torch.Tensor | None           # (B, T, rope_dim/2) complex cos + i·sin, for RoPE models
    # Static-shape decode (a compiled step): the 0-d cache column this one-token step writes, as a tensor
    # so one graph serves every step; attention then spans the whole cache and `mask` hides the columns
    # not written yet. None: write at `start` and attend over the columns so far.
    column: torch.Tensor | None = None


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, inputs: AttentionInputs,
            dropout: float, scale: float | None = None, gqa: bool = False) -> torch.Tensor:
    if inputs.mask is None:
        # Only valid without a cache offset: SDPA's is_causal aligns the triangle top-left.
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout, scale=scale,
                                              enable_gqa=gqa)
    mask = inputs.mask if inputs.mask.dtype == torch.bool else inputs.mask.to(q.dtype)
    if inputs.column is not None and torch.compiler.is_compiling():
        return _attend_one_query(q, k, v, mask, scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale, enable_gqa=gqa)


def _attend_one_query(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                      scale: float | None) -> torch.Tensor:
    """One decode step's attention written out, for a compiled step: inductor fuses it with the ops around
    it, where SDPA stays an opaque call with layout copies (nano: ≈ 6% faster at batch 8, equal at batch 1).
    Each KV head's query heads are its query rows (GQA without repeating the cache).
    q (B, H, 1, D); k, v (B, KV, S, D); additive mask (B|1, H|1, 1, S)."""
    B, H, _, D = q.shape
    KV, S = k.shape[1], k.shape[2]
    scale = scale if scale is not None else 1.0 / math.sqrt(D)
    scores = torch.matmul(q.view(B, KV, H // KV, D), k.transpose(-1, -2)) * scale    # (B, KV, H/KV, S)
    scores = scores + mask.expand(mask.shape[0], H, 1, S).reshape(mask.shape[0], KV, H // KV, S)
    probs = scores.float().softmax(-1).to(v.dtype)
    return torch.matmul(probs, v).view(B, H, 1, -1)


class GroupedQueryAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.use_rope = config.position == "rope"
        # Queries, keys and values in one fused projection (rows: q heads, then k heads, then v heads).
        self.split = [self.n_head * self.head_dim, self.n_kv_head * self.head_dim, self.n_kv_head * self.head_dim]
        self.wqkv = nn.Linear(config.d_model, sum(self.split), bias=False)
        self.wo = nn.Linear(self.n_head * self.head_dim, config.d_model, bias=False)
        self.dropout = config.dropout

    def prepare_for_decoding(self) -> None:
        """Nothing to derive: decoding reads the projections as they are."""

    def new_cache(self, batch_size: int, max_len: int, dtype: torch.dtype, device: torch.device) -> KVCache:
        return KVCache(batch_size, self.n_kv_head, max_len, self.head_dim, dtype, device)

    def forward(self, x: torch.Tensor, inputs: AttentionInputs, cache: KVCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.wqkv(x).split(self.split, dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if self.use_rope:
            q, k = rotate_pairs(q, inputs.rope), rotate_pairs(k, inputs.rope)
        if cache is not None:
            k, v = cache.update(inputs.start, k, v) if inputs.column is None else cache.write_at(inputs.column, k, v)
        # GQA: each KV head serves n_head / n_kv_head consecutive query heads; SDPA broadcasts them
        # itself (enable_gqa) instead of copying the cache every step.
        y = _attend(q, k, v, inputs, self.dropout if self.training else 0.0, gqa=self.n_kv_head != self.n_head)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))


class MultiHeadLatentAttention(nn.Module):
    """MHLA (DeepSeek-V2): keys/values come from a low-rank latent c_kv shared by all heads, and
    position enters through a separate RoPE key, also shared, so the cache needs neither per-head K nor V.

    `naive`: reconstruct per-head K and V from the latent, then ordinary attention.
    `absorbed`: fold W_UK into the query and apply W_UV after attention, attending directly over the
    latent; cheaper when decoding one token against a long cache.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.rank = config.kv_lora_rank
        self.nope_dim, self.rope_dim, self.v_dim = config.qk_nope_head_dim, config.qk_rope_head_dim, config.v_head_dim
        self.use_rope = config.position == "rope"
        self.scale = 1.0 / math.sqrt(self.nope_dim + self.rope_dim)
        q_dim = self.n_head * (self.nope_dim + self.rope_dim)
        if config.q_lora_rank:
            self.wq_a = nn.Linear(config.d_model, config.q_lora_rank, bias=False)
            self.q_norm = RMSNorm(config.q_lora_rank, config.norm_eps)
            self.wq_b = nn.Linear(config.q_lora_rank, q_dim, bias=False)
        else:
            self.wq = nn.Linear(config.d_model, q_dim, bias=False)
        self.wkv_a = nn.Linear(config.d_model, self.rank + self.rope_dim, bias=False)
        self.kv_norm = RMSNorm(self.rank, config.norm_eps)
        self.wkv_b = nn.Linear(self.rank, self.n_head * (self.nope_dim + self.v_dim), bias=False)
        self.wo = nn.Linear(self.n_head * self.v_dim, config.d_model, bias=False)
        self.dropout = config.dropout
        self.mode: Literal["auto", "naive", "absorbed"] = "auto"  # auto: absorbed for cached decode steps
        # Decode steps attend with our CPU kernel: set by lowbit_weights.use_cpu_kernels, for this model only.
        self.cpu_decode_kernel = False
        # For inference, W_UK and W_UVᵀ are kept (non-persistent buffers, so an exported step names them)
        # with the weight version they were derived from.
        self._absorbed_key: tuple | None = None
        self.register_buffer("absorbed_uk", None, persistent=False)
        self.register_buffer("absorbed_uv_t", None, persistent=False)

    def prepare_for_decoding(self) -> None:
        """Derive the absorbed weights now (eagerly): a compiled decode step then reads them, never derives them."""
        self._absorbed_weights()

    def new_cache(self, batch_size: int, max_len: int, dtype: torch.dtype, device: torch.device) -> LatentCache:
        return LatentCache(batch_size, max_len, self.rank, self.rope_dim, dtype, device)

    def _queries(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "wq"):
            return self.wq(x)
        return self.wq_b(self.q_norm(self.wq_a(x)))

    def forward(self, x: torch.Tensor, inputs: AttentionInputs, cache: LatentCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self._queries(x).view(B, T, self.n_head, self.nope_dim + self.rope_dim).transpose(1, 2)
        q_nope, q_rope = q.split([self.nope_dim, self.rope_dim], dim=-1)
        latent, rope_key = self.wkv_a(x).split([self.rank, self.rope_dim], dim=-1)
        latent = self.kv_norm(latent)
        rope_key = rope_key[:, None]  # (B, 1, T, rope_dim): one positional key for all heads
        if self.use_rope:
            q_rope, rope_key = rotate_pairs(q_rope, inputs.rope), rotate_pairs(rope_key, inputs.rope)
        rope_key = rope_key[:, 0]
        absorbed = self.mode == "absorbed" or (self.mode == "auto" and cache is not None and T == 1)
        if cache is not None and inputs.column is not None:
            latent, rope_key = cache.write_at(inputs.column, latent, rope_key)
            entries = cache.entries
        elif cache is not None:
            latent, rope_key = cache.update(inputs.start, latent, rope_key)
            entries = cache.entries[:, : inputs.start + T] if absorbed else None
        elif absorbed:
            entries = torch.cat([latent, rope_key], dim=-1)
        if absorbed:
            y = self._absorbed(q_nope, q_rope, entries, inputs)
        else:
            y = self._naive(q_nope, q_rope, latent, rope_key, inputs)
        return self.wo(y.transpose(1, 2).reshape(B, T, -1))

    def _naive(self, q_nope, q_rope, latent, rope_key, inputs: AttentionInputs) -> torch.Tensor:
        B, S, _ = latent.shape
        kv = self.wkv_b(latent).view(B, S, self.n_head, self.nope_dim + self.v_dim).transpose(1, 2)
        k_nope, v = kv.split([self.nope_dim, self.v_dim], dim=-1)
        k = torch.cat([k_nope, rope_key[:, None].expand(B, self.n_head, S, self.rope_dim)], dim=-1)
        q = torch.cat([q_nope, q_rope], dim=-1)
        return _attend(q, k, v, inputs, self.dropout if self.training else 0.0, scale=self.scale)

    def _absorbed_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W_UK as (H, nope, rank) and W_UVᵀ as (H, rank, v), contiguous for batched matmuls.

        Derived from wkv_b; at inference they are kept until the weight changes (its version counter,
        storage, dtype or device), so decoding does not re-slice and copy them every step.
        """
        if torch.compiler.is_compiling() and self._absorbed_key is not None:
            return self.absorbed_uk, self.absorbed_uv_t  # a compiled step is built after an eager one kept them
        self._lowbit_heads()  # made here, eagerly, never while a compiled step is traced
        weight = self.wkv_b.weight
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device)
        if self._absorbed_key == key:
            return self.absorbed_uk, self.absorbed_uv_t
        w_ukv = weight.view(self.n_head, self.nope_dim + self.v_dim, self.rank)
        w_uk = w_ukv[:, : self.nope_dim].contiguous()
        w_uv_t = w_ukv[:, self.nope_dim:].transpose(1, 2).contiguous()
        if not (torch.is_grad_enabled() and weight.requires_grad):  # never cache a tensor with autograd history
            self._absorbed_key, self.absorbed_uk, self.absorbed_uv_t = key, w_uk, w_uv_t
        return w_uk, w_uv_t

    def _lowbit_heads(self, x: torch.Tensor | None = None):
        """W_UK and W_UV as int8 products when wkv_b holds int8 CPU weights (lowbit_weights.py) and its
        kernels serve input `x`; else None (plain fp32 products)."""
        if not hasattr(self.wkv_b, "absorbed_heads") or (x is not None and not self.wkv_b.kernels_apply(x)):
            return None
        return self.wkv_b.absorbed_heads(self.n_head, self.nope_dim)

    def _absorbed(self, q_nope, q_rope, entries, inputs: AttentionInputs) -> torch.Tensor:
        """Attention straight over the cached [latent | rope key] entries (B, S, rank + rope_dim).

        Every head attends over the same keys and values, so the heads become extra query rows of a
        single shared head: (B, H·T, ·) queries against (B, S, ·) keys, with no per-head expansion
        of the cache.
        """
        B, H, T, _ = q_nope.shape
        S = entries.shape[1]
        w_uk, w_uv_t = self._absorbed_weights()
        lowbit = self._lowbit_heads(q_nope)
        # q·k_nope = q·(W_UK c) = (W_UKᵀ q)·c: project the query into latent space, heads as the batch.
        q_heads = q_nope.permute(1, 0, 2, 3).reshape(H, B * T, self.nope_dim)
        q_latent = lowbit.to_latent(q_heads) if lowbit is not None else torch.bmm(q_heads, w_uk)
        q_latent = q_latent.view(H, B, T, self.rank).permute(1, 0, 2, 3)
        q = torch.cat([q_latent, q_rope], dim=-1).reshape(B, 1, H * T, self.rank + self.rope_dim)
        # Attention by hand: the keys (rank + rope_dim wide) and values (rank wide) differ in width, which
        # sends SDPA to its slow generic path; two bmm's and a softmax are all this needs.
        if self._decode_kernel_applies(q, inputs.mask, T):
            # One new token a row on the CPU: our kernel (kernels/decode_kernels.cpp) does scores, softmax and
            # values in one pass over each row's cache; two bmm calls would pack the whole cache into MKL's
            # layout for a handful of query rows (a third of mini's step at batch 8).
            y_latent = torch.ops.rujokes_cpu.latent_attention(q.view(B, H, -1), entries, inputs.mask[:, :, 0],
                                                              self.scale, self.rank)
            return self._from_latent(y_latent.view(B, H * T, self.rank), lowbit, w_uv_t, B, H, T)
        scores = torch.bmm(q.view(B, H * T, -1), entries.transpose(1, 2)).mul_(self.scale)   # (B, H·T, S)
        mask = inputs.mask
        if mask is None:  # plain causal from column 0 (a forced-absorbed prefill)
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)[None, None]
        if T > 1 or mask.shape[1] > 1:  # per-query-row masks: lay them out as the (head, time) rows
            mask = mask.expand(mask.shape[0], H, T, S).reshape(mask.shape[0], 1, H * T, S)
        mask = mask[:, 0]                                                                      # (B|1, H·T|1, S)
        scores = scores.masked_fill_(~mask, float("-inf")) if mask.dtype == torch.bool else scores.add_(mask)
        probs = scores.float().softmax(-1).to(q.dtype)
        if self.training and self.dropout > 0:
            probs = F.dropout(probs, self.dropout)
        y_latent = torch.bmm(probs, entries[..., : self.rank])                                 # (B, H·T, rank)
        return self._from_latent(y_latent, lowbit, w_uv_t, B, H, T)

    def _from_latent(self, y_latent, lowbit, w_uv_t, B: int, H: int, T: int) -> torch.Tensor:
        """W_UV after attention, heads as the batch again: (B, H·T, rank) → (B, H, T, v)."""
        y_heads = y_latent.view(B, H, T, self.rank).permute(1, 0, 2, 3).reshape(H, B * T, self.rank)
        y = lowbit.from_latent(y_heads) if lowbit is not None else torch.bmm(y_heads, w_uv_t)
        return y.view(H, B, T, self.v_dim).permute(1, 0, 2, 3)

    def _decode_kernel_applies(self, q: torch.Tensor, mask: torch.Tensor | None, T: int) -> bool:
        """Our CPU attention kernel serves one-token decode steps: fp32 on the CPU, no autograd or dropout,
        an additive mask, and this model given the kernels (lowbit_weights.use_cpu_kernels)."""
        return (T == 1 and mask is not None and mask.dtype == torch.float32 and q.dtype == torch.float32
                and q.device.type == "cpu" and not (torch.is_grad_enabled() and q.requires_grad)
                and not self.training and self.cpu_decode_kernel)
