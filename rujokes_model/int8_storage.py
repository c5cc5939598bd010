"""int8 checkpoints: each matrix stored as int8 rows with one fp32 scale per row, a quarter of fp32's bytes.

The same per-row absmax rounding as the CPU worker's int8 kernels (`lowbit_weights.quantize_int8`), so a
model stored this way and served with int8 weights is exactly the model that was evaluated, and its
bundled file stays far below the package's file-size limit. Loading dequantizes to fp32, so the file
serves on a GPU (or any path without the kernels) too. Vectors (norm gains) stay fp32.
"""
from __future__ import annotations

import torch

from .lowbit_weights import quantize_int8

SCALE_SUFFIX = ".int8_scale"
FORMAT_KEY, FORMAT = "rujokes_weights", "int8-per-row"


def pack_int8(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every 2-D floating tensor as (int8 rows, fp32 row scales); the safetensors metadata says so."""
    packed: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if value.dim() == 2 and value.is_floating_point():
            packed[name], packed[name + SCALE_SUFFIX] = quantize_int8(value)
        else:
            packed[name] = value.float().contiguous() if value.is_floating_point() else value
    return packed, {FORMAT_KEY: FORMAT}


def unpack_int8(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fp32 weights from a packed state (a state with no int8 matrices comes back unchanged)."""
    unpacked = {}
    for name, value in state.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        scale = state.get(name + SCALE_SUFFIX)
        if scale is not None:
            if value.dtype != torch.int8 or scale.shape != value.shape[:1]:
                raise ValueError(f"{name}: int8 rows {tuple(value.shape)} {value.dtype} do not match their "
                                 f"scales {tuple(scale.shape)}")
            value = value.float() * scale.float()[:, None]
        unpacked[name] = value
    orphans = [k for k in state if k.endswith(SCALE_SUFFIX) and k[: -len(SCALE_SUFFIX)] not in state]
    if orphans:
        raise ValueError(f"int8 scales without their weights: {sorted(orphans)}")
    return unpacked
