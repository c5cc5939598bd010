"""Model configuration: one flat dataclass, plus the nano/mini/small presets."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

Position = Literal["rope", "alibi"]
Attention = Literal["mha", "gqa", "mhla"]
CpuWeights = Literal["int8", "bf16"] | None


def swiglu_hidden(d_model: int, multiple: int = 32) -> int:
    """SwiGLU width: 8/3·d keeps the parameter count of a 4·d GELU MLP; rounded up for matmul-friendly shapes."""
    hidden = int(8 * d_model / 3)
    return multiple * ((hidden + multiple - 1) // multiple)


@dataclass
class ModelConfig:
    vocab_size: int = 1024          # BPE vocabulary incl. special tokens
    n_layer: int = 3                # transformer blocks
    n_head: int = 4                 # query heads
    n_kv_head: int = 2              # key/value heads (== n_head for MHA; divides n_head for GQA)
    d_model: int = 96               # residual stream width
    d_ff: int = 256                 # SwiGLU hidden width
    max_seq_len: int = 256          # context length: the KV cache and RoPE tables are sized by it
    position: Position = "alibi"    # "rope" (rotary) or "alibi" (linear attention biases)
    attention: Attention = "gqa"    # "mha", "gqa" or "mhla" (DeepSeek-V2 multi-head latent attention)
    # MHLA dims (used only when attention == "mhla")
    kv_lora_rank: int = 64          # width of the compressed KV latent c_kv: the only per-head-free thing cached
    qk_rope_head_dim: int = 16      # decoupled positional part of q/k; its key is shared by all heads
    qk_nope_head_dim: int = 24      # content part of q/k per head, reconstructed from the latent
    v_head_dim: int = 24            # value width per head, reconstructed from the latent
    q_lora_rank: int | None = None  # optional low-rank query compression (None = full-rank W_Q)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    dropout: float = 0.0
    tie_embeddings: bool = True     # output head shares the token embedding matrix
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.position not in ("rope", "alibi"):
            raise ValueError(f"position must be 'rope' or 'alibi', got {self.position!r}")
        if self.attention not in ("mha", "gqa", "mhla"):
            raise ValueError(f"attention must be 'mha', 'gqa' or 'mhla', got {self.attention!r}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if self.attention == "mha" and self.n_kv_head != self.n_head:
            # MHA is GQA with one KV head per query head; normalise rather than fail on a leftover default.
            self.n_kv_head = self.n_head
        if self.attention == "gqa" and (self.n_kv_head < 1 or self.n_head % self.n_kv_head):
            raise ValueError(f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head} for GQA")
        if self.position == "rope" and self.rope_dim % 2:
            raise ValueError("the rotary dimension must be even")
        if self.attention == "mhla" and min(self.kv_lora_rank, self.qk_nope_head_dim, self.v_head_dim) < 1:
            raise ValueError("MHLA dims must be positive")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def rope_dim(self) -> int:
        """Width that rotary embeddings rotate: the whole head, or MHLA's decoupled part."""
        return self.qk_rope_head_dim if self.attention == "mhla" else self.head_dim

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def preset(cls, size: str, **overrides: Any) -> "ModelConfig":
        """nano/mini/small as in the original model; `overrides` replace any field.

        Switching `attention` to "gqa"/"mha" picks a sensible `n_kv_head` unless one is given.
        """
        if size not in PRESETS:
            raise ValueError(f"unknown size {size!r}; choose one of {sorted(PRESETS)}")
        fields = dict(PRESETS[size])
        if overrides.get("attention") == "gqa" and "n_kv_head" not in overrides:
            heads = overrides.get("n_head", fields["n_head"])
            overrides["n_kv_head"] = next(k for k in (heads // 2, heads // 3, 1) if k >= 1 and heads % k == 0)
        if overrides.get("attention") == "mha" and "n_kv_head" not in overrides:
            overrides["n_kv_head"] = overrides.get("n_head", fields["n_head"])
        fields.update(overrides)
        return cls(**fields)


# Head dim is 24 (nano) / 64 (mini, small). MHLA latent = 2× head dim, as in DeepSeek-V2's ratio
# of kv_lora_rank to the per-head width; the decoupled RoPE key is half a head.
PRESETS: dict[str, dict[str, Any]] = {
    "nano": dict(n_layer=3, n_head=4, n_kv_head=2, d_model=96, d_ff=swiglu_hidden(96), max_seq_len=256,
                 position="alibi", attention="gqa",
                 kv_lora_rank=48, qk_rope_head_dim=12, qk_nope_head_dim=24, v_head_dim=24),
    "mini": dict(n_layer=6, n_head=6, n_kv_head=6, d_model=384, d_ff=swiglu_hidden(384), max_seq_len=256,
                 position="rope", attention="mhla",
                 kv_lora_rank=128, qk_rope_head_dim=32, qk_nope_head_dim=64, v_head_dim=64),
    "small": dict(n_layer=12, n_head=12, n_kv_head=12, d_model=768, d_ff=swiglu_hidden(768), max_seq_len=256,
                  position="rope", attention="mhla",
                  kv_lora_rank=256, qk_rope_head_dim=32, qk_nope_head_dim=64, v_head_dim=64),
}
SIZES = tuple(PRESETS)


# Below this width a decode step is per-op overhead, not weight traffic: int8 buys nano nothing over its fp32
# weights on the same kernels (BENCHMARKS.md, "Generation speed").
INT8_FROM_D_MODEL = 384


def cpu_weights_for(config: ModelConfig) -> CpuWeights:
    """The weights format a CPU serves a model with by default: int8 where reading the weights bounds a
    decode step (mini and small), the stored fp32 otherwise (on the kernels' fp32 loop: `use_fp32_kernels`)."""
    return "int8" if config.d_model >= INT8_FROM_D_MODEL else None


def default_int8_sizes() -> list[str]:
    return [size for size in SIZES if cpu_weights_for(ModelConfig.preset(size)) == "int8"]
