"""fp16 weights for CPU inference: half the bytes each decode step streams, fp32 arithmetic.

A decode step of mini or small reads every weight once; on a CPU that is memory-bound (fp32 mini is
42 MB a step). fbgemm packs a weight matrix in fp16 and multiplies with fp32 activations and fp32
accumulation, converting on the fly (F16C), so the arithmetic stays fp32 and only the weights are
rounded: 10 bits of mantissa, more than the 8 of the bf16 checkpoints we ship, which it holds exactly
(bar weights under 6e-5 in magnitude, which become fp16 subnormals).

`use_fp16_weights(model)` swaps every Linear for an `FP16Linear` that keeps its fp32 `weight`
Parameter (checkpoints, tied embeddings and MHLA's absorbed weights see no change) and adds the packed
copy for its forward. For inference only: re-pack after changing weights. x86 CPUs with AVX2 only.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

# PyTorch marks these fbgemm entry points deprecated (in favour of torchao), but they are the fp16-weight
# kernels it ships today; the warning says nothing a user can act on. Checked by fp16_weights_supported().
warnings.filterwarnings("ignore", message=r"fbgemm_(pack_gemm_matrix_fp16|linear_fp16_weight\w*) is deprecated")


@torch.library.custom_op("rujokes::linear_fp16_packed", mutates_args=())
def linear_fp16_packed(x: torch.Tensor, packed: torch.Tensor, zero_bias: torch.Tensor) -> torch.Tensor:
    # A custom op so torch.compile keeps it as one opaque call: `packed` is fbgemm's handle, not data,
    # and ATen's own op decomposes straight into fbgemm, so it has no shape function to trace with.
    return torch.fbgemm_linear_fp16_weight(x, packed, zero_bias)


@linear_fp16_packed.register_fake
def _(x: torch.Tensor, packed: torch.Tensor, zero_bias: torch.Tensor) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], zero_bias.shape[0])


class FP16Linear(nn.Linear):
    """A bias-free Linear whose forward uses an fp16-packed copy of its weight (fp32 in, fp32 out)."""

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "FP16Linear":
        if linear.bias is not None:
            raise ValueError("FP16Linear packs bias-free layers only")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features = linear.in_features, linear.out_features
        new.weight = linear.weight  # the same Parameter: ties and checkpoints are untouched
        new.register_parameter("bias", None)
        new.repack()
        return new

    def repack(self) -> None:
        weight = self.weight.detach().float().contiguous()
        # Plain attributes, not buffers: `packed` is a handle that .to() and state_dict must not touch.
        self.packed = torch.fbgemm_pack_gemm_matrix_fp16(weight)
        self.zero_bias = torch.zeros(self.out_features, dtype=torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32 or x.device.type != "cpu":
            return F.linear(x, self.weight)
        return linear_fp16_packed(x, self.packed, self.zero_bias)


def fp16_weights_supported() -> bool:
    return (hasattr(torch, "fbgemm_pack_gemm_matrix_fp16") and "fbgemm" in torch.backends.quantized.supported_engines
            and torch.backends.cpu.get_cpu_capability() != "DEFAULT")


def use_fp16_weights(model: nn.Module) -> int:
    """Swap the model's Linear layers for FP16Linear in place; returns how many were swapped."""
    if not fp16_weights_supported():
        raise RuntimeError("fp16 weights need PyTorch's fbgemm backend on an x86 CPU with AVX2")
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("fp16 packed weights are for CPU inference; keep the model's dtype on a GPU")
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, FP16Linear.from_linear(child))
                swapped += 1
    return swapped
