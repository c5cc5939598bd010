"""Which group messages are meant for the bot: mentions by entity (bot/telegram/addressing.py), and replies to
its jokes (remembered in Redis when shown)."""
from __future__ import annotations

import pytest
from aiogram.types import MessageEntity, User

from bot.telegram.addressing import without_bot_mentions
from bot.telegram.feedback import FeedbackStore
from tests.fake_bot_api import text_entities

BOT_ID, USERNAME = 123456789, "rujokes_test_bot"
BOT_USER = User(id=BOT_ID, is_bot=True, first_name="RuJokes")


def typed(text: str) -> list[MessageEntity]:
    """The entities Telegram attaches to text as a user types it (mentions, commands, URLs)."""
    return [MessageEntity(**entity) for entity in text_entities(text)]


def opening(text: str, entities: list[MessageEntity] | None = None) -> str | None:
    return without_bot_mentions(text, typed(text) if entities is None else entities, BOT_ID, USERNAME)


@pytest.mark.parametrize(("text", "expected"), [
    (f"@{USERNAME} Штирлиц пришел домой", "Штирлиц пришел домой"),
    (f"Штирлиц пришел домой @{USERNAME}", "Штирлиц пришел домой"),
    (f"Слушай, @{USERNAME} Штирлиц пришел домой", "Слушай, Штирлиц пришел домой"),
    (f"Слушай, @{USERNAME}, Штирлиц пришел домой", "Слушай, Штирлиц пришел домой"),
    (f"Штирлиц пришел домой, @{USERNAME}", "Штирлиц пришел домой"),
    (f"@{USERNAME}, Вовочка приходит в школу", "Вовочка приходит в школу"),
    (f"@{USERNAME.upper()}: Вовочка", "Вовочка"),  # usernames are case-insensitive
    (f"😂😂 @{USERNAME} Чапаев", "😂😂 Чапаев"),  # offsets count UTF-16 units: an emoji is two
    (f"@{USERNAME} @{USERNAME} Петька", "Петька"),
    (f"@{USERNAME}", ""),  # a bare mention: the handler picks the opening
    (f"@other_user, @{USERNAME} про @other_user", "@other_user, про @other_user"),
])
def test_a_mention_of_the_bot_anywhere_is_cut_out_of_the_opening(text, expected):
    assert opening(text) == expected


@pytest.mark.parametrize("text", [
    "Штирлиц пришел домой",  # no mention at all
    "@other_bot Штирлиц",  # someone else
    f"@{USERNAME}_fan Штирлиц",  # a longer username that starts with ours
    f"пишите на mail{USERNAME}@example.com",  # the name inside an address: no entity
    f"https://t.me/{USERNAME}",  # a link, not a mention
])
def test_text_that_only_contains_the_name_is_no_mention(text):
    assert opening(text) is None


def test_a_text_mention_of_the_bots_user_id_counts_and_of_another_user_does_not():
    text = "Бот, расскажи про Штирлица"
    ours = [MessageEntity(type="text_mention", offset=0, length=3, user=BOT_USER)]
    assert opening(text, ours) == "расскажи про Штирлица"
    someone = User(id=42, is_bot=False, first_name="Бот")
    assert opening(text, [MessageEntity(type="text_mention", offset=0, length=3, user=someone)]) is None


def test_the_entity_decides_not_the_text_under_it():
    """A mention entity whose text is not our @username (stale or forged offsets) mentions no one."""
    text = f"Штирлиц @{USERNAME}"
    assert opening(text, [MessageEntity(type="mention", offset=0, length=8)]) is None
    assert opening(text, [MessageEntity(type="mention", offset=8, length=500)]) is None
    assert opening(text, [MessageEntity(type="text_mention", offset=-3, length=3, user=BOT_USER)]) is None
    assert opening(text, [MessageEntity(type="code", offset=8, length=len(USERNAME) + 1)]) is None
    assert opening("", [MessageEntity(type="mention", offset=0, length=5)]) is None
    assert opening(text, []) is None


async def test_a_reply_finds_the_joke_only_in_the_message_and_chat_it_was_shown_in(redis_client, key_prefix):
    feedback = FeedbackStore(redis_client, key_prefix)
    await feedback.remember_chat_joke(-100500, 7, "a" * 32)
    assert await feedback.chat_joke(-100500, 7) == "a" * 32
    assert await feedback.chat_joke(-100500, 8) is None  # another message (a refusal, /help, a user's)
    assert await feedback.chat_joke(-100501, 7) is None  # the same message id in another chat
    assert 0 < await redis_client.ttl(f"{key_prefix}bot:chat_joke:-100500:7") <= 30 * 86_400


def test_a_lone_surrogate_in_the_text_counts_as_one_unit_and_is_dropped():
    """JSON may carry an unpaired "\\ud83d" (the fuzzer sent one in a caption): its UTF-16 unit still counts in
    the offsets, and it never reaches the opening (encoding it strictly raised inside the handler's filter)."""
    text = f"\ud83d @{USERNAME} Штирлиц"
    assert opening(text, [MessageEntity(type="mention", offset=2, length=len(USERNAME) + 1)]) == "Штирлиц"
    assert opening(f"@{USERNAME} Чапаев \udc00", typed(f"@{USERNAME} Чапаев")) == "Чапаев"
