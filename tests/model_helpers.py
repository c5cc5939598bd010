"""Shared builders for the tests: tiny configs, seeded models, prompts, a tiny Russian tokenizer, and a tiny
random-weight model directory (config.json, model.safetensors, tokenizer.json) for tests that need the real
model code path without trained weights (`make_tiny_model_dir`).

Everything here is deliberately small (vocab ≤ 300, max_seq_len ≤ 64, d_model ≤ 96) so the whole
model suite runs in well under a minute on two shared CPU cores.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import json
import random
from pathlib import Path

import torch

from rujokes_model import ByteLevelBPETokenizer, ModelConfig, TransformerForCausalLM
from rujokes_model.tokenizer import bytes_to_unicode

POSITIONS = ("rope", "alibi")
ATTENTIONS = ("mha", "gqa", "mhla")

# Untied head: with random tied embeddings the current token is always its own best successor, so greedy
# decoding would just repeat one token and prove nothing. init_std a little above the 0.02 default gives
# clear winners, so 1e-7 float noise between two equivalent code paths cannot flip a greedy token.
TINY = dict(vocab_size=96, n_layer=2, n_head=4, n_kv_head=2, d_model=64, d_ff=128, max_seq_len=64,
            kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16,
            init_std=0.05, tie_embeddings=False)


def tiny_config(position: str = "rope", attention: str = "gqa", **overrides) -> ModelConfig:
    fields = dict(TINY, position=position, attention=attention)
    if attention == "mha":
        fields["n_kv_head"] = fields["n_head"]
    fields.update(overrides)
    return ModelConfig(**fields)


def tiny_model(position: str = "rope", attention: str = "gqa", seed: int = 0, **overrides) -> TransformerForCausalLM:
    torch.manual_seed(seed)
    return TransformerForCausalLM(tiny_config(position, attention, **overrides)).eval()


def clone(model: TransformerForCausalLM) -> TransformerForCausalLM:
    return copy.deepcopy(model)


def random_ids(length: int, vocab_size: int, seed: int = 0, batch: int = 1, low: int = 3) -> torch.Tensor:
    """(batch, length) token ids in [low, vocab_size): avoids the pad/bos/eos ids 0..2."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(low, vocab_size, (batch, length), generator=generator)


# ---- a model directory ----------------------------------------------------------------------------
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


def left_pad(prompts: list[torch.Tensor], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack 1-D prompts of mixed lengths into (B, L) left-padded ids and their attention mask."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = prompt
        mask[row, width - len(prompt):] = 1
    return ids, mask


def right_pad(prompts: list[torch.Tensor], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, : len(prompt)] = prompt
        mask[row, : len(prompt)] = 1
    return ids, mask


# ---- tokenizer ----------------------------------------------------------------------------------
_SUBJECTS = ["Штирлиц", "Вовочка", "Ёжик", "Медведь", "Поручик Ржевский", "Учительница", "Программист",
             "Бабушка", "Чебурашка", "Студент", "Ёлочка", "Мужик"]
_VERBS = ["шёл", "пришёл", "сказал", "подумал", "спросил", "ответил", "увидел", "нашёл", "съел", "ждал"]
_OBJECTS = ["по лесу", "в бар", "на работу", "домой", "к врачу", "на экзамен", "под ёлку", "в Москву",
            "за хлебом", "на рыбалку", "ёжика", "лёд"]
_TAILS = [".", "!", "?", "…", "...", " — и ушёл.", ", а там медведь!", " 😀", " 🦔", " Hello, world!",
          "\n— Ты кто?\n— Я ёж."]


def russian_sentences(count: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}{rng.choice(_TAILS)}"
            for _ in range(count)]


@functools.lru_cache(maxsize=1)
def tiny_tokenizer() -> ByteLevelBPETokenizer:
    """A ~300-token byte-level BPE trained once per session on generated Russian sentences."""
    return ByteLevelBPETokenizer.train_from_iterator(russian_sentences(), vocab_size=300, min_frequency=2)


def single_byte_ids(tokenizer: ByteLevelBPETokenizer, text: str) -> list[int]:
    """`text` as one base token per UTF-8 byte: every Cyrillic letter is split across two tokens."""
    byte_chars = bytes_to_unicode()
    ids = [tokenizer.backend.token_to_id(byte_chars[b]) for b in text.encode("utf-8")]
    assert None not in ids, "every byte must have a base token"
    return ids


@contextlib.contextmanager
def torch_threads(count: int):
    """torch's intra-op thread count set to `count` for the block, then put back."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def write_jokes(path, count: int = 160, seed: int = 0):
    """A tiny jsonl corpus of short synthetic Russian jokes (Cyrillic, ё, emoji, dialogue lines)."""
    lines = [json.dumps({"text": text}, ensure_ascii=False) for text in russian_sentences(count, seed)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
