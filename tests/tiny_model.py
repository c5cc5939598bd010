"""A tiny random-weight model directory (config.json, model.safetensors, tokenizer.json) for tests
that need the real model code path without trained weights."""
from __future__ import annotations

import random
from pathlib import Path

import torch

from rujokes_model import ByteLevelBPETokenizer, ModelConfig, TransformerForCausalLM

OPENINGS = ["Штирлиц пришел домой", "Вовочка спрашивает учительницу", "Приходит мужик к врачу",
            "Встречаются два программиста", "Армянское радио спросили", "Жена говорит мужу"]
WORDS = ["и", "а", "но", "сказал", "ответил", "доктор", "ёлка", "кот", "водка", "милиционер", "тёща",
         "— Почему?", "— Не знаю!", "смеётся", "Hello", "2024", "🙂", "ребята", "шеф", "компьютер"]


def tiny_corpus(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(OPENINGS)}, {' '.join(rng.choice(WORDS) for _ in range(rng.randint(4, 16)))}."
            for _ in range(n)]


def make_tiny_model_dir(path: str | Path, *, seed: int = 0, vocab_size: int = 300, max_seq_len: int = 128,
                        **overrides) -> Path:
    """Train a ~300-token BPE on a synthetic corpus and save a random nano-shaped model beside it."""
    path = Path(path)
    tokenizer = ByteLevelBPETokenizer.train_from_iterator(tiny_corpus(), vocab_size=vocab_size)
    torch.manual_seed(seed)
    config = ModelConfig.preset("nano", vocab_size=tokenizer.vocab_size, max_seq_len=max_seq_len, **overrides)
    TransformerForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
