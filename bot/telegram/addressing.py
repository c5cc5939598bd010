"""Is a message meant for the bot? Mentions read from Telegram's entities, never from a substring of the text.

A mention is a `mention` entity whose text is @our_username (any case: usernames are case-insensitive), or a
`text_mention` entity of our user id (a mention of a user without a username, or one picked from a list).
Text that merely contains "@our_username" inside a word, a URL or a code entity is no mention: Telegram gives
it no mention entity.
"""
from __future__ import annotations

from collections.abc import Sequence

from aiogram.types import MessageEntity

_UNIT = 2  # bytes per UTF-16 code unit: entity offsets and lengths count UTF-16 code units
_ADDRESS_PUNCTUATION = " ,:"


def is_bot_mention(entity: MessageEntity, units: bytes, bot_id: int, username: str | None) -> bool:
    start, end = entity.offset * _UNIT, (entity.offset + entity.length) * _UNIT
    if entity.offset < 0 or entity.length <= 0 or end > len(units):
        return False  # an entity outside the text (forged or stale) mentions no one
    if entity.type == "text_mention":
        return entity.user is not None and entity.user.id == bot_id
    if entity.type != "mention" or not username:
        return False
    return units[start:end].decode("utf-16-le", errors="replace").lower() == f"@{username.lower()}"


def without_bot_mentions(text: str | None, entities: Sequence[MessageEntity] | None, bot_id: int,
                         username: str | None) -> str | None:
    """`text` with the bot's mentions cut out, or None when it does not mention the bot.

    What is left may be empty (a bare "@bot"): the caller decides what that means.
    """
    if not text or not entities:
        return None
    # surrogatepass: JSON can carry an unpaired surrogate, which is still one UTF-16 unit of Telegram's offsets.
    units = text.encode("utf-16-le", "surrogatepass")
    spans = sorted((e.offset, e.offset + e.length) for e in entities if is_bot_mention(e, units, bot_id, username))
    if not spans:
        return None
    kept, position = [], 0
    for start, end in spans:
        kept.append(units[position * _UNIT:max(position, start) * _UNIT])
        position = max(position, end)
        # "@bot, Штирлиц…", "Слушай, @bot: Штирлиц…": the comma or colon addressing the bot goes with it.
        while units[position * _UNIT:(position + 1) * _UNIT].decode("utf-16-le", errors="ignore") in (",", ":"):
            position += 1
    kept.append(units[position * _UNIT:])
    # A space where each mention was, so the words around it stay apart (clean_prompt collapses whitespace
    # anyway); a split surrogate pair (a forged offset) is dropped rather than shown as U+FFFD.
    rest = " ".join(part.decode("utf-16-le", errors="ignore") for part in kept)
    return " ".join(rest.split()).strip(_ADDRESS_PUNCTUATION)  # "Штирлиц…, @bot": the comma before it, too
