"""Optimizer and learning-rate schedule: AdamW with decay on matrices only, warmup then cosine."""
from __future__ import annotations

import math

import torch


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    # Decay 2-D weights (linear layers, embeddings); norms' gains are scale parameters, not capacity.
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)


def lr_factor(progress: float, warmup_fraction: float, min_ratio: float) -> float:
    """Multiplier of the peak lr at `progress` ∈ [0, 1] of the run: linear warmup, cosine to min_ratio."""
    warmup_fraction = min(max(warmup_fraction, 1e-9), 0.1)
    if progress < warmup_fraction:
        return (progress + 1e-3) / (warmup_fraction + 1e-3)
    decay = min(1.0, (progress - warmup_fraction) / (1.0 - warmup_fraction))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * decay))
