"""The engine ends the rows its limit cut after a whole sentence (rujokes_model/endings.py: tests/test_model_endings.py)."""
from __future__ import annotations

import re

import pytest
import torch

from bot.worker.engine import ModelEngine
from bot.worker.engine_api import Job
from bot.worker.loading import load_source
from rujokes_model.endings import ELLIPSIS
from tests.model_helpers import make_tiny_model_dir

OPENING = "Штирлиц пришел домой"


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> ModelEngine:
    path = make_tiny_model_dir(tmp_path_factory.mktemp("tiny-nano"))
    return ModelEngine({"nano": load_source("nano", str(path), torch.device("cpu"))}, torch.device("cpu"))


def test_the_engine_ends_rows_cut_by_their_limit_after_a_sentence_and_leaves_the_others(engine):
    tokenizer = engine.models["nano"].tokenizer
    prompt = tokenizer.encode(OPENING)
    new = tokenizer.encode(" Жена спит. Он лег и подум")
    assert ModelEngine._text(tokenizer, prompt, new, cut=False) == f"{OPENING} Жена спит. Он лег и подум"
    assert ModelEngine._text(tokenizer, prompt, new, cut=True) == f"{OPENING} Жена спит."

    # The tiny random model writes anything; every row it is given stops at its limit of 12 tokens.
    jobs = [Job(request_id=f"r{i}", prompt=OPENING, top_k=0, temperature=1.0, top_p=None, max_new_tokens=12,
                seed=i) for i in range(16)]
    outputs = engine.generate("nano", jobs)
    cut = [output for output in outputs if output.new_tokens == 12]
    assert len(cut) >= 8
    for output in cut:
        assert output.text.startswith(OPENING)
        assert output.text.endswith(ELLIPSIS) or re.search(r"[.!?…][»“”\"')\]]*$", output.text), output.text


def test_a_long_joke_gets_its_whole_limit_where_the_opening_leaves_room_and_a_long_opening_half_the_context(engine):
    """The chats' "long" length (240 tokens) against the bundled models' 257 columns: once capped at half the
    context (128), it was hardly longer than "normal" (120)."""
    context = engine.models["nano"].model.config.max_seq_len  # 128 here
    long = [Job(request_id=f"l{i}", prompt=OPENING, top_k=0, temperature=1.0, top_p=None,
                max_new_tokens=context - 28, seed=i) for i in range(8)]
    assert max(output.new_tokens for output in engine.generate("nano", long)) == context - 28
    tokens = len(engine.models["nano"].tokenizer.encode("Штирлиц " * 100))
    assert tokens > context
    (squeezed,) = engine.generate("nano", [Job(request_id="s", prompt="Штирлиц " * 100, top_k=0, temperature=1.0,
                                               top_p=None, max_new_tokens=context - 28, seed=1)])
    assert squeezed.new_tokens <= context // 2
