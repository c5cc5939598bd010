"""Building blocks shared by every attention variant: RMSNorm, SwiGLU, RoPE and ALiBi tables."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """Root-mean-square norm (no mean subtraction, no bias): cheaper than LayerNorm, same quality."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)  # one fused op
        # Normalise in fp32 so bf16 activations don't lose the small-variance rows.
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class SwiGLU(nn.Module):
    """Gated feed-forward: down(silu(gate(x)) * up(x)), no biases.

    gate and up are one fused projection (`gate_up`, gate rows first): one matmul instead of two,
    which at decode sizes is one less op's overhead per layer and step.
    """

    def __init__(self, d_model: int, d_ff: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        y = self.down(F.silu(gate) * up)
        return F.dropout(y, self.dropout) if self.training and self.dropout > 0 else y


def rope_tables(dim: int, max_seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of shape (max_seq_len, dim // 2) for rotary embeddings."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2i], x[2i+1]) of x (B, H, T, D) by per-position angles.

    cos/sin are (B, T, D/2), already gathered at each row's own positions, so left-padded rows
    rotate from position 0 at their first real token.
    """
    return rotate_pairs(x, torch.complex(cos, sin))


def rotate_pairs(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """apply_rope with the rotation as one complex tensor (B, T, D/2) = cos + i·sin: a single
    complex multiply instead of a dozen real ops, which matters at one token per eager decode step.
    A real rotation (B, T, D/2, 2) takes the real-arithmetic path instead."""
    if not rotation.is_complex():
        return _rotate_pairs_real(x, rotation)
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * rotation[:, None]).flatten(-2).type_as(x)


def _rotate_pairs_real(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """rotate_pairs with the rotation as real (B, T, D/2, 2) [cos, sin] pairs, for compiled steps:
    inductor generates no code for complex numbers, but fuses this into the ops around it."""
    pairs = x.float().unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    cos, sin = rotation[:, None, ..., 0], rotation[:, None, ..., 1]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2).type_as(x)


def alibi_slopes(n_head: int) -> torch.Tensor:
    """Head slopes from the ALiBi paper (Press et al., 2022): a geometric sequence starting at 2^(-8/n).

    For a head count that is not a power of two, take the slopes of the closest lower power of two and
    fill up with every other slope of the next power of two (the paper's reference implementation).
    """
    def power_of_two_slopes(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_head).is_integer():
        slopes = power_of_two_slopes(n_head)
    else:
        closest = 2 ** math.floor(math.log2(n_head))
        slopes = power_of_two_slopes(closest) + power_of_two_slopes(2 * closest)[0::2][: n_head - closest]
    return torch.tensor(slopes, dtype=torch.float32)
