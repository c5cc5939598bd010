"""Low-bit weights for CPU decoding: int8 (a quarter of fp32's bytes) or bf16 (half), fp32 in and out; and
fp32 weights through the same kernels, which decode faster than torch's BLAS.

A decode step of mini or small reads every weight once for a few rows, and on a CPU it is bound by those
bytes. `use_lowbit_weights(model, "int8")` swaps each Linear for a `KernelLinear` that multiplies with
our AVX2 kernels (`kernels/decode_kernels.cpp`):
- **int8**: symmetric, one fp32 scale per output row (absmax / 127); each activation row is scaled to int16
  (14 bits of its largest value) and the products are summed exactly in int32. Lossy: the model *becomes* its
  rounding — each fp32 weight Parameter is overwritten with the dequantized values, so the tied embedding,
  MHLA's absorbed weights, checkpoints saved later and any fallback path all see one consistent model.
  MHLA's absorbed matrices are then read from wkv_b's int8 rows too (`AbsorbedHeads`).
  Its cost in quality is measured in BENCHMARKS.md.
- **bf16**: widened to fp32 in registers, fp32 FMAs; exact for the bf16 checkpoints we ship (others are
  rounded to bf16 the same way).
- **fp32** (`use_fp32_kernels`): the weights as they are, nothing rounded, the bf16 loop without the
  widening. For a lone row it beats torch's BLAS path at every size: nano's products are too small to
  pay for a BLAS call, and mini's ran 3× slower on BLAS. For nano at batch 8, BLAS is within 5% of it
  (BENCHMARKS.md).

Rows are computed independently and in a fixed order, so a row's output never depends on its batch mates.
For inference on the CPU with fp32 activations; anything else (a GPU, autograd) falls back to F.linear on
the (dequantized) fp32 weight. Call `repack()` after changing weights. A model given low-bit weights also
gets the kernels' MHLA decode attention (attention.py; `use_cpu_kernels` gives it to an fp32 model alone):
exact math, not a rounding.
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from .cpu_kernels import load_cpu_kernels

KINDS = ("int8", "bf16", "fp32")
_packings = itertools.count()


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8: (q, scale) with weight ≈ q · scale[:, None], |q| ≤ 127."""
    weight = weight.detach().float()
    scale = weight.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / 127.0
    q = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scale.contiguous()


class KernelLinear(nn.Linear):
    """A bias-free Linear that multiplies through our kernels with a low-bit copy of its weight, or with the
    fp32 weight itself (fp32 in, fp32 out)."""

    @classmethod
    def from_linear(cls, linear: nn.Linear, kind: str) -> "KernelLinear":
        if kind not in KINDS:
            raise ValueError(f"unknown kernel weights {kind!r}; choose one of {', '.join(KINDS)}")
        if linear.bias is not None:
            raise ValueError("KernelLinear converts bias-free layers only")
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.in_features, new.out_features, new.kind = linear.in_features, linear.out_features, kind
        new.weight = linear.weight  # the same Parameter: ties and checkpoints keep working
        new.register_parameter("bias", None)
        new.repack()
        return new

    @torch.no_grad()
    def repack(self) -> None:
        self._heads: AbsorbedHeads | None = None
        self.packing = next(_packings)  # new tensors below: a decode step built on the old ones is stale
        if self.kind == "int8":
            qweight, scale = quantize_int8(self.weight)
            # The model is its rounding. copy_ bumps the weight's version, which renews derived weights
            # such as MHLA's absorbed matrices.
            self.weight.copy_(qweight.float() * scale[:, None])
        elif self.kind == "bf16":
            qweight, scale = self.weight.detach().to(torch.bfloat16).contiguous(), None
            self.weight.copy_(qweight.float())
        else:  # the Parameter's own storage: nothing rounded, nothing copied
            qweight, scale = self.weight.detach(), None
        # Non-persistent buffers: the checkpoint keeps its one fp32 weight, and an exported decode step
        # (aot_step.py) names them, so it can share them instead of copying them.
        self.register_buffer("qweight", qweight, persistent=False)
        self.register_buffer("scale", scale, persistent=False)

    @staticmethod
    def kernels_apply(x: torch.Tensor) -> bool:
        """Whether the kernels serve input `x`: fp32 on the CPU, no autograd (else F.linear on the fp32 weight)."""
        return x.dtype == torch.float32 and x.device.type == "cpu" and not (x.requires_grad and torch.is_grad_enabled())

    def absorbed_heads(self, n_head: int, keys_per_head: int) -> AbsorbedHeads | None:
        """This layer as MHLA's `wkv_b` split into int8 W_UK and W_UV per head (None for bf16 weights)."""
        if self.kind != "int8":
            return None
        if self._heads is None or self._heads.layout != (n_head, keys_per_head):
            self._heads = AbsorbedHeads(self.qweight, self.scale, n_head, keys_per_head)
        return self._heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.kernels_apply(x):
            return F.linear(x, self.weight)
        if self.kind == "int8":
            return torch.ops.rujokes_cpu.int8_linear(x, self.qweight, self.scale)
        if self.kind == "bf16":
            return torch.ops.rujokes_cpu.bf16_linear(x, self.qweight)
        return torch.ops.rujokes_cpu.fp32_linear(x, self.qweight)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weights={self.kind}"


class AbsorbedHeads(nn.Module):
    """MHLA's absorbed matrices (see MultiHeadLatentAttention._absorbed) read from wkv_b's int8 rows.

    For small they are a fifth of a decode step's bytes if kept in fp32. wkv_b's rows are, per head, `keys`
    rows of W_UK then the rows of W_UV, each a row of `rank` int8 values with its own scale:
    - W_UV is already in the kernel's layout: (head, v, rank) rows with their scales.
    - W_UK is used transposed (the query goes from key space into latent space), so a row's scale
      multiplies an input feature: it is applied to the query first, then the int8 product runs at scale 1.
    Both give the fp32 products with the dequantized weight, up to the int16 rounding of the activations.
    """

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor, n_head: int, keys_per_head: int) -> None:
        super().__init__()
        self.layout = (n_head, keys_per_head)
        rows, rank = qweight.view(n_head, -1, qweight.shape[-1]), qweight.shape[-1]
        scales = scale.view(n_head, -1)
        # Buffers, never in a checkpoint (a submodule of wkv_b, made after any load), as for KernelLinear.
        tensors = {"uk_t": rows[:, :keys_per_head].transpose(1, 2),  # (H, rank, keys)
                   "uk_scale": scales[:, None, :keys_per_head],        # (H, 1, keys): scales the query
                   "ones": torch.ones(n_head, rank),
                   "uv": rows[:, keys_per_head:],                      # (H, v, rank)
                   "uv_scale": scales[:, keys_per_head:]}              # (H, v)
        for name, tensor in tensors.items():
            self.register_buffer(name, tensor.contiguous(), persistent=False)

    def to_latent(self, q: torch.Tensor) -> torch.Tensor:
        """(H, M, keys) queries → (H, M, rank): q · W_UK per head."""
        return torch.ops.rujokes_cpu.int8_head_linear((q * self.uk_scale).contiguous(), self.uk_t, self.ones)

    def from_latent(self, y: torch.Tensor) -> torch.Tensor:
        """(H, M, rank) attention outputs → (H, M, v): y · W_UVᵀ per head."""
        return torch.ops.rujokes_cpu.int8_head_linear(y.contiguous(), self.uv, self.uv_scale)


def use_cpu_kernels(model: nn.Module) -> int:
    """Let this model's MHLA layers attend with our CPU decode kernel (exact fp32 math, faster one-token
    steps); returns how many layers do. Builds the kernels on first use. Other models are unaffected."""
    layers = [module for module in model.modules() if hasattr(module, "cpu_decode_kernel")]
    if layers:
        load_cpu_kernels()
    for module in layers:
        module.cpu_decode_kernel = True
    return len(layers)


def mark_weights_static(model: nn.Module) -> None:
    """Fixed shapes for the kernels' weights in a graph: dynamic=True must not give their dimensions symbols,
    each passed in and checked at every call. Done by the compilers, not at packing: it imports dynamo, a
    second of start-up that eager decoding (`rujokes joke`, a worker's first jokes) never needs."""
    import torch._dynamo

    for module in model.modules():
        if isinstance(module, (KernelLinear, AbsorbedHeads)):
            for tensor in module.buffers(recurse=False):
                torch._dynamo.mark_static(tensor)


def use_lowbit_weights(model: nn.Module, kind: str = "int8") -> int:
    """Swap the model's Linear layers for KernelLinear in place (CPU, fp32); returns how many were swapped.
    The model's MHLA layers get the kernels' decode attention too (use_cpu_kernels). kind "fp32" rounds
    nothing (`use_fp32_kernels`).

    Builds the kernels on first use (a C++ compiler is needed once; see cpu_kernels.py).
    """
    parameter = next(model.parameters())
    if parameter.device.type != "cpu" or parameter.dtype != torch.float32:
        raise ValueError("low-bit weights are for fp32 models on the CPU; on a GPU keep the model's own dtype")
    load_cpu_kernels()
    use_cpu_kernels(model)
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, KernelLinear.from_linear(child, kind))
                swapped += 1
    return swapped


def use_fp32_kernels(model: nn.Module) -> int:
    """How the CPU serves an fp32 model: its Linear layers multiply through the kernels' fp32 loop, on the
    weights as they are (nothing rounded), and its MHLA layers attend with the decode kernel. Rows stay
    independent of their batch mates, as with low-bit weights. Returns how many Linear layers were swapped."""
    return use_lowbit_weights(model, "fp32")
