"""A joke cut by its token limit ends after a whole sentence (bot/worker/endings.py), through the engine too."""
from __future__ import annotations

import re

import pytest
import torch

from bot.worker.endings import ELLIPSIS, end_at_sentence
from bot.worker.engine import ModelEngine
from bot.worker.engine_api import Job
from bot.worker.loading import load_source
from tests.model_helpers import make_tiny_model_dir

OPENING = "Штирлиц пришел домой"


@pytest.mark.parametrize("text, ended", [
    # the last whole sentence past the opening, whatever closes it
    (f"{OPENING}. Жена спит. Он лег и подум", f"{OPENING}. Жена спит."),
    (f"{OPENING} и спросил: «Кто здесь?» Тишина. В шкафу кто-то чих", f"{OPENING} и спросил: «Кто здесь?» Тишина."),
    (f"{OPENING}.\n- Ты где был?!\n- На работе, доро", f"{OPENING}.\n- Ты где был?!"),
    (f"{OPENING}, а там... Мюллер сид", f"{OPENING}, а там..."),
    (f"{OPENING}. «Опять!» — подумал он. А по", f"{OPENING}. «Опять!» — подумал он."),
    (f"{OPENING} (усталый). Потом", f"{OPENING} (усталый)."),
    # a dot inside a number is no end
    (f"{OPENING} в 3.14 утра и", f"{OPENING} в 3.14 утра{ELLIPSIS}"),
    # no sentence ended past the opening: the last whole word, an ellipsis, nothing dangling before it
    (f"{OPENING} и увидел, что жена — не", f"{OPENING} и увидел, что жена{ELLIPSIS}"),
    (f"{OPENING} и увидел, что", f"{OPENING} и увидел{ELLIPSIS}"),
    (f"{OPENING} подум", f"{OPENING}{ELLIPSIS}"),
    (OPENING, f"{OPENING}{ELLIPSIS}"),
])
def test_a_cut_joke_ends_after_its_last_whole_sentence_past_the_opening(text, ended):
    assert end_at_sentence(text, OPENING) == ended


def test_a_sentence_end_inside_the_opening_does_not_shorten_the_joke_to_it():
    opening = "Приходит мужик к врачу. Доктор говорит"
    assert end_at_sentence(f"{opening}: раздевайтесь, и", opening) == f"{opening}: раздевайтесь{ELLIPSIS}"
    assert end_at_sentence(f"{opening} ему: «Раздевайтесь!» Мужик", opening) == f"{opening} ему: «Раздевайтесь!»"


def test_the_opening_keeps_its_last_character_whatever_it_is():
    assert end_at_sentence("Штирлиц спросил: Кто", "Штирлиц спросил:") == f"Штирлиц спросил:{ELLIPSIS}"
    assert end_at_sentence("&lt;b&gt; &amp; &#x27; Qx", "&lt;b&gt; &amp; &#x27;") == f"&lt;b&gt; &amp; &#x27;{ELLIPSIS}"
    assert end_at_sentence("Он сказал — и, — не", "Он сказал — и, —") == f"Он сказал — и, —{ELLIPSIS}"


def test_without_an_opening_every_sentence_end_counts():
    assert end_at_sentence("Кот. Пес. Мыш", "") == "Кот. Пес."
    assert end_at_sentence("Котопе", "") == f"Котопе{ELLIPSIS}"  # one word: nothing to drop


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
