"""The decoder-only Transformer: pre-norm blocks, tied embeddings, no biases.

The model is pure: it maps token ids (+ optional cache) to logits. Caches and sampling live in
`generation.py`; files and the Hub in `hub.py`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .attention import AttentionInputs, GroupedQueryAttention, MultiHeadLatentAttention
from .config import ModelConfig
from .decode_plan import DecodePlan
from .layers import RMSNorm, SwiGLU, alibi_slopes, rope_tables


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        attention_cls = MultiHeadLatentAttention if config.attention == "mhla" else GroupedQueryAttention
        self.attn = attention_cls(config)
        self.ffn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.ffn = SwiGLU(config.d_model, config.d_ff, config.dropout)

    def forward(self, x: torch.Tensor, inputs: AttentionInputs, cache=None) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), inputs, cache)
        return x + self.ffn(self.ffn_norm(x))


class TransformerForCausalLM(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        # Position tables are derived data: non-persistent, so they never enter a checkpoint.
        if config.position == "rope":
            cos, sin = rope_tables(config.rope_dim, config.max_seq_len, config.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        else:
            self.register_buffer("alibi", alibi_slopes(config.n_head), persistent=False)
        self.apply(self._init_weights)
        # GPT-2 style: scale residual-writing projections by depth so the stream's variance stays put.
        for name, param in self.named_parameters():
            if name.endswith(("wo.weight", "down.weight")):
                nn.init.normal_(param, mean=0.0, std=config.init_std / math.sqrt(2 * config.n_layer))

    def _apply(self, fn, recurse: bool = True):
        # model.to(bfloat16) must not round the position tables: RoPE angles at long positions and
        # ALiBi slopes lose most of their precision in bf16. They follow the device, but stay fp32.
        tables = {name: buf for name, buf in self._buffers.items() if name in ("rope_cos", "rope_sin", "alibi")}
        super()._apply(fn, recurse)
        for name, table in tables.items():
            self._buffers[name] = table.to(self._buffers[name].device)
        return self

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights are counted once

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    # ---- forward ---------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, document_ids: torch.Tensor | None = None,
                cache: list | None = None, start: int = 0, inputs: AttentionInputs | None = None) -> torch.Tensor:
        """Logits (B, T, V) for `input_ids` (B, T) written at cache columns start..start+T.

        attention_mask: (B, start+T), 1 for real tokens and 0 for padding, over every column seen so far.
        position_ids: (B, T) RoPE positions; default start..start+T.
        document_ids: (B, T) for packed training rows: tokens attend only within their own document.
        inputs: prebuilt attention inputs (a DecodePlan step's); the three arguments above are then unused.
        """
        B, T = input_ids.shape
        if inputs is None:
            if position_ids is None:
                position_ids = torch.arange(start, start + T, device=input_ids.device).expand(B, T)
            inputs = self._attention_inputs(B, T, start, attention_mask, position_ids, document_ids)
        x = self.embed(input_ids)
        x = self.dropout(x) if self.training and self.dropout.p > 0 else x
        for i, block in enumerate(self.blocks):
            x = block(x, inputs, cache[i] if cache is not None else None)
        return self.lm_head(self.norm(x))

    def _rotation(self, position_ids: torch.Tensor) -> torch.Tensor:
        """RoPE rotation cos + i·sin at `position_ids` (any shape), refusing positions past the context."""
        if int(position_ids.max()) >= self.config.max_seq_len:
            raise ValueError(f"position {int(position_ids.max())} is past the RoPE context "
                             f"max_seq_len={self.config.max_seq_len}")
        return torch.complex(self.rope_cos[position_ids], self.rope_sin[position_ids])

    def _attention_inputs(self, B: int, T: int, start: int, attention_mask, position_ids,
                          document_ids) -> AttentionInputs:
        rope = self._rotation(position_ids) if self.config.position == "rope" else None
        plain_causal = start == 0 and attention_mask is None and document_ids is None
        if plain_causal and self.config.position == "rope":
            return AttentionInputs(start, None, rope)  # SDPA's fast causal path
        S = start + T
        device = self.device
        q_cols = torch.arange(start, S, device=device)
        k_cols = torch.arange(S, device=device)
        allowed = (k_cols[None, :] <= q_cols[:, None])[None]                     # (1, T, S) causal
        if attention_mask is not None:
            allowed = allowed & attention_mask[:, None, :S].bool()               # no attending to padding
        if document_ids is not None:
            allowed = allowed & (document_ids[:, :, None] == document_ids[:, None, :])
        # A padding query would see nothing at all; let it see itself so softmax stays finite.
        allowed = allowed | (k_cols[None, :] == q_cols[:, None])[None]
        if self.config.position != "alibi":
            return AttentionInputs(start, allowed[:, None], rope)                    # bool (B|1, 1, T, S)
        # ALiBi: bias by column distance; with left padding it equals the distance between real tokens.
        distance = (q_cols[:, None] - k_cols[None, :]).float()
        bias = -self.alibi[:, None, None] * distance                                 # (H, T, S)
        mask = bias[None].masked_fill(~allowed[:, None], float("-inf"))              # (B|1, H, T, S)
        return AttentionInputs(start, mask, rope)

    def decode_plan(self, attention_mask: torch.Tensor, columns: int) -> DecodePlan:
        """What cached decode steps after a prefill of `attention_mask` (B, L) need, for a cache of `columns`.

        The prompts are left-padded (their real tokens are the last ones), so a row's first real column
        is its position 0; each later column attends over every real column so far, and ALiBi biases by
        column distance. Per step the plan hands out views, not freshly built masks.
        """
        dtype, device = self.embed.weight.dtype, self.device
        first = attention_mask.shape[1] - attention_mask.sum(-1)
        padding = torch.zeros(len(first), 1, 1, columns, dtype=torch.float32, device=device)
        padding.masked_fill_(torch.arange(columns, device=device) < first[:, None, None, None], float("-inf"))
        if self.config.position == "alibi":
            # distances[m] = columns - 1 - m, so the last S entries are the distances of a query at column S - 1.
            distances = torch.arange(columns - 1, -1, -1, device=device, dtype=torch.float32)
            return DecodePlan(first, padding, -self.alibi[:, None, None] * distances, None, dtype)
        return DecodePlan(first, padding.to(dtype), None, torch.complex(self.rope_cos, self.rope_sin), dtype)

    @torch.no_grad()  # derived for inference: kept, never with autograd history
    def prepare_for_decoding(self) -> None:
        """Derive what cached decoding reads but does not store (MHLA's absorbed weights), before a compiled step."""
        for block in self.blocks:
            block.attn.prepare_for_decoding()

    def new_cache(self, batch_size: int, max_len: int) -> list:
        """One preallocated cache per layer, for a batch of `batch_size` rows and `max_len` columns."""
        if max_len > self.config.max_seq_len and self.config.position == "rope":
            raise ValueError(f"cache of {max_len} exceeds the RoPE context {self.config.max_seq_len}")
        dtype, device = self.embed.weight.dtype, self.device
        return [block.attn.new_cache(batch_size, max_len, dtype, device) for block in self.blocks]

    def loss(self, input_ids: torch.Tensor, targets: torch.Tensor, **forward_kwargs: Any) -> torch.Tensor:
        """Mean next-token cross-entropy; targets of -100 are ignored."""
        return causal_lm_loss(self(input_ids, **forward_kwargs), targets)

    # ---- generation and files (thin wrappers so users keep the original API) ----------------------
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, **kwargs: Any) -> torch.Tensor:
        from .generation import generate
        return generate(self, input_ids, max_new_tokens, **kwargs)

    @classmethod
    def from_pretrained(cls, repo_or_dir: str | Path, *, revision: str | None = None,
                        **hub_kwargs: Any) -> "TransformerForCausalLM":
        from .hub import load_model
        return load_model(cls, repo_or_dir, revision=revision, **hub_kwargs)

    def save_pretrained(self, save_directory: str | Path, *, dtype: torch.dtype | str | None = None) -> Path:
        from .hub import save_model
        return save_model(self, save_directory, dtype=dtype)

    def push_to_hub(self, repo_id: str, *, revision: str, tokenizer=None, **kwargs: Any) -> str:
        from .hub import push_to_hub
        return push_to_hub(self, repo_id, revision=revision, tokenizer=tokenizer, **kwargs)


def causal_lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy in fp32 (logits may be bf16 under autocast); targets of -100 are ignored."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
