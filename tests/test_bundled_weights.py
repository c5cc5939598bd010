"""The weights shipped inside the package: every bundled size loads offline, writes Russian, and
scores on held-out jokes at least as well as its model card says."""
from __future__ import annotations

import re

import pytest
import torch

from rujokes_model import ByteLevelBPETokenizer, TransformerForCausalLM, bundled_sizes, pretrained_path
from trainer.data import DEFAULT_CORPUS, prepare_corpus
from trainer.evaluate import evaluate_texts

SIZES = bundled_sizes()


def test_nano_is_bundled():
    assert "nano" in SIZES  # the bot's default size must work after a plain install


@pytest.fixture(scope="module")
def validation_jokes() -> list[str]:
    return prepare_corpus(DEFAULT_CORPUS).val[:60]


@pytest.mark.parametrize("size", SIZES)
def test_bundled_model_writes_russian_text_that_continues_the_prompt(size):
    path = pretrained_path(size)
    model, tokenizer = TransformerForCausalLM.from_pretrained(path), ByteLevelBPETokenizer.from_pretrained(path)
    ids = torch.tensor([tokenizer.encode("Штирлиц пришел домой")])
    out = model.generate(ids, 60, eos_token_id=tokenizer.eos_token_id, top_k=10,
                         generator=torch.Generator().manual_seed(0))
    text = tokenizer.decode(out[0].tolist())
    assert text.startswith("Штирлиц пришел домой")
    continuation = text[len("Штирлиц пришел домой"):]
    assert len(re.findall(r"[а-яё]", continuation, flags=re.I)) >= 10


@pytest.mark.parametrize("size", SIZES)
def test_bundled_model_beats_its_card_on_held_out_jokes(size, validation_jokes):
    path = pretrained_path(size)
    card = (path / "README.md").read_text(encoding="utf-8")
    claimed = float(re.search(r"validation bits per character \| ([0-9.]+)", card).group(1))
    model, tokenizer = TransformerForCausalLM.from_pretrained(path), ByteLevelBPETokenizer.from_pretrained(path)
    measured = evaluate_texts(model, tokenizer, validation_jokes).bits_per_char
    # 60 jokes are a noisy sample of the split the card was measured on: allow 10%.
    assert measured < claimed * 1.1
    assert measured < 3.5  # far better than a unigram model (~4.5 bits/char)
