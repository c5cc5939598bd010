"""Self-attention variants: grouped-query (MHA is the n_kv_head == n_head case) and DeepSeek-V2 MHLA.

Both take an `AttentionInputs` bundle built once per forward by the model: the additive mask/bias
(causal + padding + documents + ALiBi) and the RoPE cos/sin at each row's positions.
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
from .layers import RMSNorm, apply_rope


@dataclass
class AttentionInputs:
    start: int                          # cache column of the first new token
    mask: torch.Tensor | None           # additive (B|1, H|1, T, S) float, or None for plain causal
    cos: torch.Tensor | None            # (B, T, rope_dim/2) for RoPE models
    sin: torch.Tensor | None


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, inputs: AttentionInputs,
            dropout: float, scale: float | None = None, gqa: bool = False) -> torch.Tensor:
    if inputs.mask is None:
        # Only valid without a cache offset: SDPA's is_causal aligns the triangle top-left.
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout, scale=scale,
                                              enable_gqa=gqa)
    mask = inputs.mask if inputs.mask.dtype == torch.bool else inputs.mask.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scale, enable_gqa=gqa)


class GroupedQueryAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.use_rope = config.position == "rope"
        self.wq = nn.Linear(config.d_model, self.n_head * self.head_dim, bias=False)
        self.wk = nn.Linear(config.d_model, self.n_kv_head * self.head_dim, bias=False)
        self.wv = nn.Linear(config.d_model, self.n_kv_head * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_head * self.head_dim, config.d_model, bias=False)
        self.dropout = config.dropout

    def new_cache(self, batch_size: int, max_len: int, dtype: torch.dtype, device: torch.device) -> KVCache:
        return KVCache(batch_size, self.n_kv_head, max_len, self.head_dim, dtype, device)

    def forward(self, x: torch.Tensor, inputs: AttentionInputs, cache: KVCache | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if self.use_rope:
            q, k = apply_rope(q, inputs.cos, inputs.sin), apply_rope(k, inputs.cos, inputs.sin)
        if cache is not None:
            k, v = cache.update(inputs.start, k, v)
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
            q_rope, rope_key = apply_rope(q_rope, inputs.cos, inputs.sin), apply_rope(rope_key, inputs.cos, inputs.sin)
        rope_key = rope_key[:, 0]
        if cache is not None:
            latent, rope_key = cache.update(inputs.start, latent, rope_key)
        absorbed = self.mode == "absorbed" or (self.mode == "auto" and cache is not None and T == 1)
        if absorbed:
            y = self._absorbed(q_nope, q_rope, latent, rope_key, inputs)
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

    def _absorbed(self, q_nope, q_rope, latent, rope_key, inputs: AttentionInputs) -> torch.Tensor:
        B, S, _ = latent.shape
        w_ukv = self.wkv_b.weight.view(self.n_head, self.nope_dim + self.v_dim, self.rank)
        w_uk, w_uv = w_ukv[:, : self.nope_dim], w_ukv[:, self.nope_dim:]
        # q·k_nope = q·(W_UK c) = (W_UKᵀ q)·c: project the query into latent space once per step.
        q_latent = torch.einsum("bhtd,hdr->bhtr", q_nope, w_uk)
        q = torch.cat([q_latent, q_rope], dim=-1)
        k = torch.cat([latent, rope_key], dim=-1)[:, None].expand(B, self.n_head, S, self.rank + self.rope_dim)
        v = latent[:, None].expand(B, self.n_head, S, self.rank)
        y_latent = _attend(q, k, v, inputs, self.dropout if self.training else 0.0, scale=self.scale)
        return torch.einsum("bhtr,hvr->bhtv", y_latent, w_uv)  # W_UV after attention
