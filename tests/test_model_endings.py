"""A text cut by its token limit ends after its last whole sentence past the opening (rujokes_model/endings.py)."""
from __future__ import annotations

import pytest

from rujokes_model.endings import ELLIPSIS, end_at_sentence

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
