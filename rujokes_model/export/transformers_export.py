"""`rujokes-export --to transformers`: a directory that `AutoModelForCausalLM.from_pretrained` loads with no
custom code — Llama for RoPE + MHA/GQA, DeepSeek-V2 (dense, no MoE) for RoPE + MHLA."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig
from ..tokenizer import ByteLevelBPETokenizer
from .architecture import deepseek_state_dict, llama_state_dict, target_architecture

# The bot's sampling defaults (bot/settings.py: TOP_K, TEMPERATURE, MAX_NEW_TOKENS), so a plain
# `model.generate(**inputs)` writes jokes the way the bot does.
BOT_SAMPLING = {"do_sample": True, "top_k": 10, "temperature": 1.0, "max_new_tokens": 120}


def writes_own_head(config: ModelConfig) -> bool:
    """Whether the export writes `lm_head.weight` although our model ties it to the embedding: the DeepSeek-V2
    kind does, because vLLM's DeepseekV2ForCausalLM has no tied head (DeepSeek's checkpoints never tie) and
    would serve an export that relied on tying with a head of zeros. Every Llama loader ties."""
    return config.tie_embeddings and target_architecture(config) == "deepseek_v2"


def hf_config_dict(config: ModelConfig, tokenizer: ByteLevelBPETokenizer) -> tuple[str, dict[str, Any]]:
    """(model_type, config kwargs) of the architecture that computes exactly what `config` does."""
    target = target_architecture(config)
    common = dict(
        vocab_size=config.vocab_size, hidden_size=config.d_model, intermediate_size=config.d_ff,
        num_hidden_layers=config.n_layer, num_attention_heads=config.n_head,
        max_position_embeddings=config.max_seq_len, rms_norm_eps=config.norm_eps, hidden_act="silu",
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},  # no scaling: we have none
        tie_word_embeddings=config.tie_embeddings and not writes_own_head(config),
        attention_bias=False, mlp_bias=False, attention_dropout=0.0,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if target == "llama":
        return "llama", common | dict(num_key_value_heads=config.n_kv_head, head_dim=config.head_dim)
    return "deepseek_v2", common | dict(
        num_key_value_heads=config.n_head,   # MHLA expands the latent to every head: no grouping
        q_lora_rank=config.q_lora_rank or None, kv_lora_rank=config.kv_lora_rank,
        qk_nope_head_dim=config.qk_nope_head_dim, qk_rope_head_dim=config.qk_rope_head_dim,
        v_head_dim=config.v_head_dim,
        # Every layer dense SwiGLU: MoE starts after the first `first_k_dense_replace` layers, i.e. never.
        first_k_dense_replace=config.n_layer, n_routed_experts=0, n_shared_experts=0, num_experts_per_tok=None)


def to_transformers(model, tokenizer: ByteLevelBPETokenizer):
    """Our loaded model as the equivalent transformers model (same weights, fp32, eval mode)."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    config = model.config
    model_type, kwargs = hf_config_dict(config, tokenizer)
    hf_config = AutoConfig.for_model(model_type, **kwargs)
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    theirs = (llama_state_dict(state, config, rope_halves=True) if model_type == "llama"
              else deepseek_state_dict(state, config))
    hf_model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    hf_model.load_state_dict(theirs, strict=True)  # strict: a name we failed to map is an error, not random init
    if hf_config.tie_word_embeddings:
        hf_model.tie_weights()
    hf_model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **BOT_SAMPLING)
    return hf_model.eval()


def export_transformers(model_dir: str | Path, out_dir: str | Path, *, revision: str | None = None,
                        dtype: torch.dtype = torch.float32, card: bool = True) -> Path:
    """Write `out_dir`: config.json, model.safetensors, generation_config.json, tokenizer files, README.md."""
    from ..hub import load_config
    from ..model import TransformerForCausalLM

    target_architecture(load_config(model_dir, revision=revision))  # fail before loading any weights
    model = TransformerForCausalLM.from_pretrained(model_dir, revision=revision)
    tokenizer = ByteLevelBPETokenizer.from_pretrained(model_dir, revision=revision)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf_model = to_transformers(model, tokenizer).to(dtype)
    hf_model.save_pretrained(str(out))
    _add_legacy_rope_theta(out / "config.json", model.config.rope_theta)
    from .tokenizer_export import save_transformers_tokenizer
    save_transformers_tokenizer(tokenizer, out, model_max_length=model.config.max_seq_len)
    if card:
        from .card import write_export_card
        write_export_card(model_dir, out, model.config, revision=revision)
    return out


def _add_legacy_rope_theta(config_path: Path, theta: float) -> None:
    """transformers 5 writes RoPE's base inside `rope_parameters`; readers built on transformers 4 (vLLM
    releases among them) look for a top-level `rope_theta` and would silently use 10000 without it."""
    import json

    data = json.loads(config_path.read_text(encoding="utf-8"))
    data.setdefault("rope_theta", theta)
    config_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
