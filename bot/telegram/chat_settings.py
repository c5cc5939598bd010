"""Per-chat settings (/settings): joke length, creativity and, where the bot's admins allow it, the model size.

Stored in Redis per chat, so they outlive bot restarts; the bot puts them into every request it submits for
that chat (JokeRequest.sampling and .size), and the worker applies them per request. In groups only the chat's
admins may change them; Telegram's answer to "is this user an admin here?" (getChatMember) is cached briefly.

Keys (under the deployment prefix), built from the chat's integer id only:
    bot:chat:{chat_id}:settings          hash {length, creativity, size}; a missing or unknown value reads as
                                         the default, so an old or hand-edited hash never breaks a joke
    bot:chat:{chat_id}:admin:{user_id}   "1" | "0" with a TTL of CHAT_ADMIN_CACHE_S
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from aiogram import Bot
from aiogram.exceptions import TelegramAPIError
from redis.asyncio import Redis

from bot.common.settings import Settings
from bot.queue.protocol import ACTIVE_SIZE, SamplingParams

log = logging.getLogger(__name__)

# Every value a setting may take, in the order the keyboard shows them.
LENGTHS = ("short", "normal", "long")
CREATIVITIES = ("calm", "normal", "wild")
FIELDS = ("length", "creativity", "size")
ADMIN_STATUSES = frozenset({"creator", "administrator"})


@dataclass(frozen=True)
class ChatSettings:
    length: str = "normal"
    creativity: str = "normal"
    size: str = ACTIVE_SIZE  # "active": whatever /model made every chat's size


def allowed_values(field: str, settings: Settings) -> tuple[str, ...]:
    """What `field` may be set to in this deployment (sizes: "active" and CHAT_SIZES)."""
    if field == "length":
        return LENGTHS
    if field == "creativity":
        return CREATIVITIES
    if field == "size":
        return (ACTIVE_SIZE, *settings.chat_sizes) if settings.chat_sizes else ()
    return ()


def sampling_for(settings: Settings, chat: ChatSettings) -> SamplingParams:
    """The deployment's sampling with the chat's length and creativity presets applied."""
    base = settings.sampling_params()
    tokens = {"short": settings.length_short_tokens, "long": settings.length_long_tokens}.get(chat.length)
    temperature, top_k = {"calm": (settings.calm_temperature, settings.calm_top_k),
                          "wild": (settings.wild_temperature, settings.wild_top_k)}.get(
        chat.creativity, (base.temperature, base.top_k))
    return base.model_copy(update={"max_new_tokens": tokens or base.max_new_tokens, "temperature": temperature,
                                   "top_k": top_k})


def _chat_key_part(chat_id: int) -> str:
    # Only a real integer makes a key: nothing a user typed or a button carried becomes part of one.
    if isinstance(chat_id, bool) or not isinstance(chat_id, int):
        raise TypeError(f"chat id must be an int, not {type(chat_id).__name__}")
    return str(chat_id)


class ChatSettingsStore:
    def __init__(self, redis: Redis, prefix: str, settings: Settings) -> None:
        self._redis = redis
        self._prefix = f"{prefix}bot:chat:"
        self._settings = settings

    def _key(self, chat_id: int) -> str:
        return f"{self._prefix}{_chat_key_part(chat_id)}:settings"

    def _admin_key(self, chat_id: int, user_id: int) -> str:
        return f"{self._prefix}{_chat_key_part(chat_id)}:admin:{_chat_key_part(user_id)}"

    async def get(self, chat_id: int) -> ChatSettings:
        stored = await self._redis.hgetall(self._key(chat_id))
        chat = ChatSettings()
        for field in FIELDS:
            value = stored.get(field)
            if value is not None and value in allowed_values(field, self._settings):
                chat = replace(chat, **{field: value})
        return chat

    async def set(self, chat_id: int, field: str, value: str) -> ChatSettings:
        """Store one setting (ValueError for a field or value this deployment does not offer)."""
        if value not in allowed_values(field, self._settings):
            raise ValueError(f"{field}={value!r} is not offered")
        await self._redis.hset(self._key(chat_id), field, value)
        return await self.get(chat_id)

    async def may_change(self, bot: Bot, chat_id: int, chat_type: str, user_id: int) -> bool | None:
        """Whether the user may change this chat's settings; None when Telegram could not tell us.

        Private chats belong to their user; in groups and channels only admins may (getChatMember, cached).
        """
        if chat_type == "private":
            return chat_id == user_id
        key = self._admin_key(chat_id, user_id)
        cached = await self._redis.get(key)
        if cached is not None:
            return cached == "1"
        try:
            member = await bot.get_chat_member(chat_id, user_id)
        except TelegramAPIError as error:
            log.warning("getChatMember(%s, %s) failed: %s", chat_id, user_id, error)
            return None
        is_admin = member.status in ADMIN_STATUSES
        await self._redis.set(key, "1" if is_admin else "0", ex=self._settings.chat_admin_cache_s)
        return is_admin
