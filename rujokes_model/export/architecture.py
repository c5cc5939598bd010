"""Which foreign architecture reproduces a ModelConfig exactly, and our weights under its names.

Pure torch: no transformers or gguf import, so the choice (and its error) is cheap to check.
"""
from __future__ import annotations

from typing import Literal

import torch

from ..config import ModelConfig

Target = Literal["llama", "deepseek_v2"]

# transformers builds DeepSeek-V2's latent norms (kv_a_layernorm, q_a_layernorm) with its default eps,
# not config.rms_norm_eps; ours use config.norm_eps, so only this eps matches there.
DEEPSEEK_LATENT_NORM_EPS = 1e-6


class ExportError(ValueError):
    """The model has no exactly matching architecture in the target runtime."""


def target_architecture(config: ModelConfig) -> Target:
    """"llama" for RoPE + MHA/GQA, "deepseek_v2" for RoPE + MHLA; ExportError for anything else."""
    if config.position != "rope":
        # Checked against transformers' ALiBi models: Bloom and MPT use LayerNorm and a GELU MLP, Falcon's
        # ALiBi variant has parallel attention and LayerNorm; none is pre-norm RMSNorm + SwiGLU, and none has
        # MHLA. llama.cpp's ALiBi archs (bloom, mpt, jais…) differ the same way. Nothing would compute our function.
        raise ExportError(
            f"cannot export an ALiBi model (position={config.position!r}, attention={config.attention!r}): "
            "no transformers or llama.cpp architecture combines ALiBi with RMSNorm + SwiGLU"
            + (" and MHLA" if config.attention == "mhla" else "")
            + "; only RoPE models (mini, small, or a preset with position='rope') can be exported")
    if config.attention == "mhla":
        if config.norm_eps != DEEPSEEK_LATENT_NORM_EPS:
            raise ExportError(f"cannot export MHLA with norm_eps={config.norm_eps}: DeepSeek-V2's latent norms "
                              f"use eps={DEEPSEEK_LATENT_NORM_EPS} whatever the config says")
        return "deepseek_v2"
    return "llama"


def _interleaved_to_halves(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder each head's output rows from our RoPE pairs (2i, 2i+1) to Llama's halves (i, i + D/2).

    Our rotation turns adjacent pairs; transformers' Llama turns x[i] with x[i + D/2]. Permuting the rows
    of W_Q and W_K the same way leaves every q·k (so attention) unchanged and makes the rotations agree.
    """
    heads = weight.view(n_heads, -1, weight.shape[-1])
    dim = heads.shape[1]
    order = torch.cat([torch.arange(0, dim, 2), torch.arange(1, dim, 2)])
    return heads[:, order].reshape(weight.shape).contiguous()


def llama_state_dict(
    state: dict[str, torch.Tensor], config: ModelConfig, *, rope_halves: bool
) -> dict[str, torch.Tensor]:
    """Our state dict under transformers' Llama names (`rope_halves=True`) or in our pair order (for GGUF,
    whose llama architecture rotates adjacent pairs as we do)."""
    q_rows, kv_rows = config.n_head * config.head_dim, config.n_kv_head * config.head_dim
    out = _shared(state, config)
    for i in range(config.n_layer):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        q, k, v = state[ours + "attn.wqkv.weight"].split([q_rows, kv_rows, kv_rows])
        if rope_halves:
            q, k = _interleaved_to_halves(q, config.n_head), _interleaved_to_halves(k, config.n_kv_head)
        out[theirs + "self_attn.q_proj.weight"] = q
        out[theirs + "self_attn.k_proj.weight"] = k
        out[theirs + "self_attn.v_proj.weight"] = v
        out[theirs + "self_attn.o_proj.weight"] = state[ours + "attn.wo.weight"]
    return out


def deepseek_state_dict(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Our MHLA state dict under transformers' DeepSeek-V2 names. Same RoPE convention (adjacent pairs, via
    complex numbers), same [nope | rope] query and [latent | rope key] row layouts: a renaming only."""
    out = _shared(state, config)
    renames = {"attn.wq.weight": "self_attn.q_proj.weight", "attn.wq_a.weight": "self_attn.q_a_proj.weight",
               "attn.q_norm.weight": "self_attn.q_a_layernorm.weight", "attn.wq_b.weight": "self_attn.q_b_proj.weight",
               "attn.wkv_a.weight": "self_attn.kv_a_proj_with_mqa.weight",
               "attn.kv_norm.weight": "self_attn.kv_a_layernorm.weight",
               "attn.wkv_b.weight": "self_attn.kv_b_proj.weight", "attn.wo.weight": "self_attn.o_proj.weight"}
    for i in range(config.n_layer):
        for ours, theirs in renames.items():
            if f"blocks.{i}.{ours}" in state:
                out[f"model.layers.{i}.{theirs}"] = state[f"blocks.{i}.{ours}"]
    return out


def _shared(state: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """Embeddings, norms, SwiGLU and head: named alike in Llama and DeepSeek-V2."""
    out = {"model.embed_tokens.weight": state["embed.weight"], "model.norm.weight": state["norm.weight"],
           "lm_head.weight": state["embed.weight"] if config.tie_embeddings else state["lm_head.weight"]}
    for i in range(config.n_layer):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        gate, up = state[ours + "ffn.gate_up.weight"].chunk(2)
        out[theirs + "input_layernorm.weight"] = state[ours + "attn_norm.weight"]
        out[theirs + "post_attention_layernorm.weight"] = state[ours + "ffn_norm.weight"]
        out[theirs + "mlp.gate_proj.weight"] = gate
        out[theirs + "mlp.up_proj.weight"] = up
        out[theirs + "mlp.down_proj.weight"] = state[ours + "ffn.down.weight"]
    return out
