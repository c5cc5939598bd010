"""`rujokes-export --to gguf`: one .gguf file for llama.cpp / Ollama.

RoPE + MHA/GQA → llama.cpp's `llama` architecture; RoPE + MHLA → its `deepseek2` architecture (dense in
every layer). Both of llama.cpp's architectures rotate adjacent pairs (its "normal" RoPE), as we do, so
W_Q and W_K go in our row order (unlike transformers' Llama, which needs them permuted).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from ..config import ModelConfig
from ..tokenizer import ByteLevelBPETokenizer
from .architecture import target_architecture

GGUF_ARCH = {"llama": "llama", "deepseek_v2": "deepseek2"}
OutType = Literal["f32", "f16"]


def gguf_tensors(model, arch: str) -> dict[str, torch.Tensor]:
    """Our weights under llama.cpp's tensor names (the gguf package's MODEL_ARCH tensor map)."""
    config: ModelConfig = model.config
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": state["embed.weight"], "output_norm.weight": state["norm.weight"]}
    if not config.tie_embeddings:
        out["output.weight"] = state["lm_head.weight"]  # absent: llama.cpp reuses token_embd (tied)
    for i in range(config.n_layer):
        ours, blk = f"blocks.{i}.", f"blk.{i}."
        gate, up = state[ours + "ffn.gate_up.weight"].chunk(2)
        out |= {blk + "attn_norm.weight": state[ours + "attn_norm.weight"],
                blk + "ffn_norm.weight": state[ours + "ffn_norm.weight"],
                blk + "ffn_gate.weight": gate, blk + "ffn_up.weight": up,
                blk + "ffn_down.weight": state[ours + "ffn.down.weight"],
                blk + "attn_output.weight": state[ours + "attn.wo.weight"]}
        if arch == "llama":
            rows = [config.n_head * config.head_dim] + [config.n_kv_head * config.head_dim] * 2
            q, k, v = state[ours + "attn.wqkv.weight"].split(rows)
            out |= {blk + "attn_q.weight": q, blk + "attn_k.weight": k, blk + "attn_v.weight": v}
            continue
        if config.q_lora_rank:
            out |= {blk + "attn_q_a.weight": state[ours + "attn.wq_a.weight"],
                    blk + "attn_q_a_norm.weight": state[ours + "attn.q_norm.weight"],
                    blk + "attn_q_b.weight": state[ours + "attn.wq_b.weight"]}
        else:
            out[blk + "attn_q.weight"] = state[ours + "attn.wq.weight"]
        out[blk + "attn_kv_a_mqa.weight"] = state[ours + "attn.wkv_a.weight"]
        out[blk + "attn_kv_a_norm.weight"] = state[ours + "attn.kv_norm.weight"]
        # llama.cpp's MLA form (what its own converter writes): W_UK and W_UV apart, per head, W_UK transposed,
        # so it can absorb them and cache only the latent, as our decoder does.
        w = state[ours + "attn.wkv_b.weight"].view(config.n_head, config.qk_nope_head_dim + config.v_head_dim, -1)
        out[blk + "attn_k_b.weight"] = w[:, : config.qk_nope_head_dim].transpose(1, 2).contiguous()
        out[blk + "attn_v_b.weight"] = w[:, config.qk_nope_head_dim:].contiguous()
    return out


def _hyperparameters(writer, config: ModelConfig, arch: str) -> None:
    writer.add_context_length(config.max_seq_len)
    writer.add_embedding_length(config.d_model)
    writer.add_block_count(config.n_layer)
    writer.add_feed_forward_length(config.d_ff)
    writer.add_head_count(config.n_head)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_vocab_size(config.vocab_size)
    if arch == "llama":
        writer.add_head_count_kv(config.n_kv_head)
        writer.add_rope_dimension_count(config.head_dim)
        return
    # MLA as llama.cpp runs it: one shared "KV head" of width latent + rope key, values of latent width;
    # the per-head widths after decompression go in the *_mla keys.
    writer.add_head_count_kv(1)
    writer.add_key_length(config.kv_lora_rank + config.qk_rope_head_dim)
    writer.add_value_length(config.kv_lora_rank)
    writer.add_key_length_mla(config.qk_nope_head_dim + config.qk_rope_head_dim)
    writer.add_value_length_mla(config.v_head_dim)
    writer.add_rope_dimension_count(config.qk_rope_head_dim)
    writer.add_kv_lora_rank(config.kv_lora_rank)
    # llama.cpp requires this key for a deepseek2 file of our depth; 0 means a full-rank W_Q (attn_q).
    writer.add_q_lora_rank(config.q_lora_rank or 0)
    writer.add_leading_dense_block_count(config.n_layer)  # every layer dense: no MoE
    writer.add_expert_count(0)
    writer.add_expert_used_count(0)
    writer.add_expert_shared_count(0)
    writer.add_expert_feed_forward_length(0)
    writer.add_expert_weights_scale(1.0)


def _tokenizer(writer, tokenizer: ByteLevelBPETokenizer) -> None:
    from .tokenizer_export import gguf_vocabulary

    tokens, types, merges = gguf_vocabulary(tokenizer)
    writer.add_tokenizer_model("gpt2")   # llama.cpp's byte-level BPE
    writer.add_tokenizer_pre("gpt-2")    # our pre-tokenizer: ByteLevel with GPT-2's split regex, no prefix space
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(True)       # a joke starts with <bos>, as in training
    writer.add_add_eos_token(False)


def write_gguf(model, tokenizer: ByteLevelBPETokenizer, path: str | Path, *, outtype: OutType = "f32",
               name: str = "rujokes") -> Path:
    import gguf
    import numpy as np

    config: ModelConfig = model.config
    arch = GGUF_ARCH[target_architecture(config)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if outtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    _hyperparameters(writer, config, arch)
    _tokenizer(writer, tokenizer)
    for tensor_name, tensor in gguf_tensors(model, arch).items():
        # Norm vectors stay f32 in every file type (llama.cpp's rule: only matrices are converted).
        dtype = np.float16 if outtype == "f16" and tensor.dim() > 1 else np.float32
        writer.add_tensor(tensor_name, tensor.numpy().astype(dtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def export_gguf(
    model_dir: str | Path, out: str | Path, *, revision: str | None = None, outtype: OutType = "f32"
) -> Path:
    """Write one .gguf; `out` is the file, or a directory that gets `rujokes-<arch>-<outtype>.gguf`."""
    from ..hub import load_config
    from ..model import TransformerForCausalLM

    config = load_config(model_dir, revision=revision)
    arch = GGUF_ARCH[target_architecture(config)]  # fail before loading any weights
    model = TransformerForCausalLM.from_pretrained(model_dir, revision=revision)
    tokenizer = ByteLevelBPETokenizer.from_pretrained(model_dir, revision=revision)
    path = Path(out)
    if path.suffix != ".gguf":
        path = path / f"rujokes-{arch}-{outtype}.gguf"
    return write_gguf(model, tokenizer, path, outtype=outtype, name=f"rujokes {Path(str(model_dir)).name}")
