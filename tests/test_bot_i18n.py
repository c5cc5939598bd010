"""Two languages: the catalogues (same keys, same placeholders, every text the code names), the choice of
language from Telegram's language_code, and an English speaker's journey through the real bot.
"""
from __future__ import annotations

import re
import string
from pathlib import Path

import pytest

from bot.telegram import texts
from bot.telegram.texts import EN, RU, language_for
from tests.e2e_stack import button_texts, is_joke, wait_until

BOT_CODE = Path(__file__).resolve().parents[1] / "bot"


def placeholders(text: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(text) if field is not None}


def test_both_catalogues_have_the_same_texts_with_the_same_placeholders():
    assert RU.keys() == EN.keys()
    for key in RU.keys():
        forms = RU.forms(key) + EN.forms(key)
        assert all(form.strip() for form in forms), key
        assert len({frozenset(placeholders(form)) for form in forms}) == 1, key
        assert (len(RU.forms(key)), len(EN.forms(key))) in ((1, 1), (3, 2)), key  # plain, or every plural form


@pytest.mark.parametrize(("n", "ru", "en"), [
    (1, "1 раз", "1 time"), (2, "2 раза", "2 times"), (5, "5 раз", "5 times"), (11, "11 раз", "11 times"),
    (12, "12 раз", "12 times"), (21, "21 раз", "21 times"), (22, "22 раза", "22 times"), (0, "0 раз", "0 times"),
])
def test_a_text_around_a_count_takes_the_form_its_count_needs(n, ru, en):
    assert RU.plural("USER_STATS_OPENING", n, opening="Вовочка", uses=n) == f"«Вовочка» ({ru})"
    assert EN.plural("USER_STATS_OPENING", n, opening="Вовочка", uses=n) == f"«Вовочка» ({en})"


def test_refusals_with_a_count_agree_with_it_in_russian():
    """Before, every count took one form: "301 символов", "1 чатам", "(2 раз)"."""
    assert "301 символ," in RU.plural("PROMPT_TOO_LONG", 301, length=301, limit=300)
    assert "302 символа," in RU.plural("PROMPT_TOO_LONG", 302, length=302, limit=300)
    assert "(до 21 символа)" in RU.plural("INLINE_TOO_LONG", 21, limit=21)
    assert "(до 300 символов)" in RU.plural("INLINE_TOO_LONG", 300, limit=300)
    assert RU.plural("BROADCAST_STARTED", 1, count=1) == "📣 Рассылаю 1 чату…"
    assert RU.plural("BROADCAST_STARTED", 3, count=3) == "📣 Рассылаю 3 чатам…"
    with pytest.raises(AttributeError, match="plural"):
        _ = RU.PROMPT_TOO_LONG  # a text around a count is never shown in one form for every count


def test_every_text_the_code_names_is_in_the_catalogues():
    named: set[str] = set()
    for path in BOT_CODE.rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        named |= set(re.findall(r"\bt\.([A-Z][A-Z0-9_]+)\b", source))
        named |= set(re.findall(r"\btexts\.(?:RU|EN)\.([A-Z][A-Z0-9_]+)\b", source))
        named |= set(re.findall(r'"([A-Z][A-Z0-9_]+)"', source)) & RU.keys()  # names looked up with getattr
    assert named, "the pattern found nothing: the code's way of naming texts changed"
    assert named <= RU.keys(), sorted(named - RU.keys())
    for name in (*texts.COMMAND_NAMES, *texts.ADMIN_COMMAND_NAMES):
        assert RU.command(name) and EN.command(name)


def test_russian_texts_are_russian_and_english_ones_english():
    cyrillic = re.compile("[а-яё]", re.IGNORECASE)
    assert cyrillic.search(RU.START) and cyrillic.search(RU.TIMEOUT) and cyrillic.search(RU.BUTTON_MORE)
    # English texts may quote Russian openings («Штирлиц…»), but their own words are English.
    for key in ("TIMEOUT", "BUTTON_MORE", "WORKERS_DOWN", "RATE_LIMITED", "SETTINGS", "ADMIN_ONLY"):
        assert not cyrillic.search(EN.__getattr__(key)), key


@pytest.mark.parametrize(("code", "language"), [
    ("ru", "ru"), ("uk", "ru"), ("be", "ru"), ("kk", "ru"), ("ru-RU", "ru"), ("UK", "ru"), (None, "ru"), ("", "ru"),
    ("en", "en"), ("en-GB", "en"), ("de", "en"), ("ar", "en"), ("zz", "en"),
])
def test_language_follows_telegram_language_code(code, language):
    assert language_for(code) == language
    assert texts.for_user(code) is (RU if language == "ru" else EN)


def test_an_unknown_text_is_a_loud_error_not_a_silent_blank():
    with pytest.raises(AttributeError, match="NO_SUCH_TEXT"):
        _ = EN.NO_SUCH_TEXT
    assert EN.setting_value("size", "mini") == "mini"  # sizes have no label: they show as their names


# -- end to end ---------------------------------------------------------------------------------------------

def english(stack, user_id: int, code: str = "en-US") -> dict:
    return {**stack.api.make_user(user_id), "language_code": code}


def test_an_english_speaker_gets_english_texts_around_russian_jokes_and_is_told_once(stack):
    user = english(stack, stack.new_user())
    stack.api.private_message(user, "/start")
    assert stack.wait_for_reply(user["id"])["text"] == EN.START
    stack.api.private_message(user, "/joke Штирлиц пришел домой")
    notice = stack.wait_for_reply(user["id"], nth=2)
    assert notice["text"] == EN.JOKES_ARE_RUSSIAN
    joke = stack.wait_for_reply(user["id"], nth=3, timeout=60)
    assert joke["text"].startswith("Штирлиц пришел домой")
    assert button_texts(joke) == [EN.BUTTON_MORE, EN.BUTTON_UP, EN.BUTTON_DOWN]
    stack.api.private_message(user, "/joke Вовочка")
    second = stack.wait_for_reply(user["id"], nth=4, timeout=60)
    assert second["text"].startswith("Вовочка")  # no second notice
    query = stack.api.press_button(user, joke, EN.BUTTON_UP)
    assert stack.callback_answer(query["callback_query"]["id"])["text"] == EN.VOTE_NEW.format(vote=EN.BUTTON_UP)
    stack.api.private_message(user, "/joke " + "х" * 2000)
    assert stack.wait_for_reply(user["id"], nth=5)["text"].startswith(EN.forms("PROMPT_TOO_LONG")[0].split("{")[0])
    stack.api.private_message(user, "/nonsense")
    assert stack.wait_for_reply(user["id"], nth=6)["text"] == EN.UNKNOWN_COMMAND


def test_ukrainian_and_unknown_language_codes_get_russian(stack):
    for code in ("uk", None):
        user = {**stack.api.make_user(stack.new_user()), "language_code": code}
        if code is None:
            del user["language_code"]
        stack.api.private_message(user, "/joke Приходит мужик к врачу")
        joke = stack.wait_for_reply(user["id"], timeout=60)
        assert is_joke(joke) and joke["text"].startswith("Приходит мужик к врачу")  # Russian buttons, no notice


def test_an_english_speaker_in_a_group_gets_english_texts_and_the_russian_speaker_russian(stack):
    group = stack.new_group()
    en_user, ru_user = english(stack, stack.new_user(), "en"), stack.new_user()
    stack.api.group_message(group, en_user, "/settings")
    wait_until(lambda: any(m["text"].startswith(EN.SETTINGS.split("\n")[0]) for m in stack.bot_messages(group)), 20,
               "the settings in English")
    stack.api.group_message(group, ru_user, "/settings")
    wait_until(lambda: any(m["text"].startswith(RU.SETTINGS.split("\n")[0]) for m in stack.bot_messages(group)), 20,
               "the settings in Russian")
