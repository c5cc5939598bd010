"""Prompt cleaning, model-output cleaning and message fitting: what users type and what the model
writes, made safe to show."""
from __future__ import annotations

import random

import pytest

from bot.telegram.outbox import draft_id_for, fit_message, utf16_len
from bot.telegram.prompts import CLASSIC_OPENINGS, PromptTooLong, clean_model_text, clean_prompt, random_opening


def test_control_characters_are_stripped():
    assert clean_prompt("Штирлиц\x00\x07\x1b[31m пришёл", 100) == "Штирлиц[31m пришёл"


def test_bidi_overrides_and_invisible_characters_are_stripped():
    assert clean_prompt("\u202eШтирлиц\u202c \u200b\u200fпришел\ufeff", 100) == "Штирлиц пришел"


def test_whitespace_is_collapsed_and_trimmed():
    assert clean_prompt("  Вовочка \n\n\t приходит   в школу  ", 100) == "Вовочка приходит в школу"


def test_emoji_sequences_keep_their_zero_width_joiner():
    assert clean_prompt("👨‍👩‍👧 семья", 100) == "👨‍👩‍👧 семья"


def test_nothing_visible_means_no_prompt():
    assert clean_prompt("\u200b\u200d \x00\n", 100) == ""
    assert clean_prompt(None, 100) == ""


def test_a_typed_replacement_character_is_dropped_so_no_reply_can_echo_one():
    assert clean_prompt("Штирлиц \ufffd\ufffdпришёл\ufffd", 100) == "Штирлиц пришёл"
    assert clean_prompt("\ufffd", 100) == ""
    assert clean_model_text("Штирлиц\ufffd пришёл \ufffd") == "Штирлиц пришёл"


def test_html_like_text_is_kept_verbatim():
    assert clean_prompt("<b>Штирлиц</b> & Мюллер &amp;", 100) == "<b>Штирлиц</b> & Мюллер &amp;"


def test_too_long_prompt_is_refused_with_both_lengths():
    with pytest.raises(PromptTooLong) as refused:
        clean_prompt("ж" * 301, 300)
    assert (refused.value.length, refused.value.limit) == (301, 300)
    assert clean_prompt("ж" * 300, 300) == "ж" * 300


def test_the_length_cap_applies_after_cleaning():
    assert clean_prompt("а" + " " * 500 + "б", 10) == "а б"


def test_truncation_keeps_the_end_of_a_long_text():
    assert clean_prompt("начало " + "x" * 20 + " конец", 12, truncate=True) == "xxxxxx конец"


def test_random_opening_is_a_classic_one():
    rng = random.Random(0)
    assert {random_opening(rng) for _ in range(50)} <= set(CLASSIC_OPENINGS)


def test_model_text_loses_control_and_bidi_characters_but_keeps_lines():
    raw = "Штирлиц\x08 пришел\u202e\n— Ты кто?\r\n— Я ёж.\x00"
    assert clean_model_text(raw) == "Штирлиц пришел\n— Ты кто?\n— Я ёж."


def test_fit_message_respects_telegrams_utf16_limit():
    assert fit_message("короткий") == "короткий"
    emoji = fit_message("😂" * 3000)  # 6000 UTF-16 units
    assert utf16_len(emoji) <= 4096 and emoji.endswith("…") and "\ufffd" not in emoji


def test_draft_ids_are_stable_non_zero_and_31_bit():
    assert draft_id_for("00000000abc") == 1
    assert draft_id_for("ffffffffabc") == 0x7FFFFFFF
    assert draft_id_for("1234abcd99") == draft_id_for("1234abcd00")


def test_a_variants_preview_shows_a_long_openings_end_and_what_follows_it():
    from bot.telegram.handlers.inline import PREVIEW_CHARS, variant_preview

    opening = "Штирлиц пришел домой и увидел на столе записку"
    assert variant_preview(f"{opening}: «Ушла к Мюллеру».", opening) == "…увидел на столе записку: «Ушла к Мюллеру»."
    assert variant_preview("Вовочка спрашивает папу.", "Вовочка") == "Вовочка спрашивает папу."  # short: whole
    long = variant_preview(opening + " А там " + "очень " * 40 + "длинная история.", opening)
    assert long.startswith("…увидел на столе записку А там") and long.endswith("…") and utf16_len(long) <= PREVIEW_CHARS
    assert variant_preview("Другое начало.", opening) == "Другое начало."  # the model did not keep the opening
