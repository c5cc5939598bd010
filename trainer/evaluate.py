"""Validation metrics: loss per token (nats) and bits per character.

Bits per character = total NLL of every token after <bos> (the joke's tokens and its <eos>),
in bits, divided by the number of characters of the jokes: it compares across tokenizers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rujokes_model import ByteLevelBPETokenizer, TransformerForCausalLM

from .packing import encode_documents, eval_windows


@dataclass
class EvalResult:
    loss_per_token: float     # nats
    bits_per_char: float
    tokens: int
    chars: int
    chars_per_token: float

    def to_dict(self) -> dict[str, float]:
        return dict(val_loss=self.loss_per_token, val_bpc=self.bits_per_char, val_tokens=self.tokens,
                    val_chars=self.chars, chars_per_token=self.chars_per_token)


@torch.no_grad()
def total_nll(model: TransformerForCausalLM, windows: list[list[int]], batch_size: int = 32,
              device: torch.device | str | None = None) -> tuple[float, int]:
    """Sum of next-token NLL (nats) over all windows, and the number of predicted tokens."""
    device = device or model.device
    was_training = model.training
    model.eval()
    nll, count = 0.0, 0
    # Sort by length so each batch pads little; right padding never affects earlier tokens.
    ordered = sorted(windows, key=len)
    for i in range(0, len(ordered), batch_size):
        chunk = ordered[i:i + batch_size]
        width = max(len(w) for w in chunk)
        tokens = torch.zeros(len(chunk), width, dtype=torch.long)
        targets = torch.full((len(chunk), width - 1), -100, dtype=torch.long)
        for row, window in enumerate(chunk):
            tokens[row, :len(window)] = torch.tensor(window)
            targets[row, :len(window) - 1] = torch.tensor(window[1:])
        tokens, targets = tokens.to(device), targets.to(device)
        logits = model(tokens[:, :-1]).float()
        nll += F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum").item()
        count += int((targets != -100).sum())
    model.train(was_training)
    return nll, count


def evaluate_texts(model: TransformerForCausalLM, tokenizer: ByteLevelBPETokenizer, texts: list[str],
                   seq_len: int | None = None, batch_size: int = 32, device=None) -> EvalResult:
    if not texts:
        raise ValueError("no validation texts to evaluate")
    seq_len = seq_len or model.config.max_seq_len - 1
    documents = encode_documents(tokenizer, texts)
    nll, count = total_nll(model, eval_windows(documents, seq_len).tokens, batch_size, device)
    chars = sum(len(t) for t in texts)
    return EvalResult(nll / count, nll / math.log(2) / chars, count, chars, chars / count)
