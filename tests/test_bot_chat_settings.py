"""Per-chat settings on a real Redis: the store, its presets, who may change them (getChatMember through the fake
Bot API, cached) and the /settings keyboard's payloads."""
from __future__ import annotations

import pytest

from bot.common.settings import Settings
from bot.queue.protocol import ACTIVE_SIZE
from bot.telegram.chat_settings import ChatSettings, ChatSettingsStore, allowed_values, sampling_for
from bot.telegram.keyboards import ChatSetting, settings_keyboard
from bot.telegram.signing import Signer, chat_scope
from bot.telegram.texts import RU

SIGNER = Signer(b"test key")

GROUP, ADMIN, MEMBER = -1001234567890, 501, 502


@pytest.fixture
def settings() -> Settings:
    return Settings(_env_file=None, chat_sizes="nano,mini", max_new_tokens=100, length_short_tokens=30,
                    length_long_tokens=300, temperature=1.0, top_k=10, chat_admin_cache_s=60)


@pytest.fixture
def store(redis_client, key_prefix, settings) -> ChatSettingsStore:
    return ChatSettingsStore(redis_client, key_prefix, settings)




async def test_a_chat_without_settings_gets_the_defaults(store):
    assert await store.get(GROUP) == ChatSettings("normal", "normal", ACTIVE_SIZE)


async def test_settings_are_stored_per_chat_and_outlive_the_store(store, redis_client, key_prefix, settings):
    assert (await store.set(GROUP, "length", "short")).length == "short"
    await store.set(GROUP, "size", "nano")
    restarted = ChatSettingsStore(redis_client, key_prefix, settings)  # a new bot process reads the same hash
    assert await restarted.get(GROUP) == ChatSettings("short", "normal", "nano")
    assert await restarted.get(GROUP - 1) == ChatSettings()
    assert await redis_client.hgetall(f"{key_prefix}bot:chat:{GROUP}:settings") == {"length": "short", "size": "nano"}


async def test_a_value_the_deployment_does_not_offer_is_refused_and_never_read(store, redis_client, key_prefix):
    for field, value in [("length", "huge"), ("creativity", ""), ("size", "small"), ("colour", "red"),
                         ("length", "x" * 10_000)]:
        with pytest.raises(ValueError):
            await store.set(GROUP, field, value)
    # A hand-edited hash, or one written when CHAT_SIZES still had small: each odd value reads as the default.
    await redis_client.hset(f"{key_prefix}bot:chat:{GROUP}:settings",
                            mapping={"length": "long", "creativity": "extreme", "size": "small"})
    assert await store.get(GROUP) == ChatSettings("long", "normal", ACTIVE_SIZE)


async def test_without_chat_sizes_no_size_is_offered(redis_client, key_prefix):
    store = ChatSettingsStore(redis_client, key_prefix, Settings(_env_file=None))
    assert allowed_values("size", store._settings) == ()
    with pytest.raises(ValueError):
        await store.set(GROUP, "size", ACTIVE_SIZE)


@pytest.mark.parametrize("chat_id", ["-100:evil", "-100", 1.5, True, None])
async def test_keys_are_built_from_an_integer_chat_id_only(store, chat_id):
    with pytest.raises(TypeError):
        await store.get(chat_id)
    with pytest.raises(TypeError):
        await store.set(chat_id, "length", "short")


def test_presets_turn_into_sampling(settings):
    normal = sampling_for(settings, ChatSettings())
    assert (normal.max_new_tokens, normal.temperature, normal.top_k) == (100, 1.0, 10)  # the deployment's own
    short_calm = sampling_for(settings, ChatSettings(length="short", creativity="calm"))
    assert (short_calm.max_new_tokens, short_calm.temperature, short_calm.top_k) == (30, 0.7, 5)
    long_wild = sampling_for(settings, ChatSettings(length="long", creativity="wild"))
    assert (long_wild.max_new_tokens, long_wild.temperature, long_wild.top_k) == (300, 1.3, 50)


async def test_in_a_group_only_its_admins_may_change_settings_and_the_answer_is_cached(store, bot, api):
    api.set_chat_member(GROUP, ADMIN, "administrator")
    api.set_chat_member(GROUP, MEMBER + 1, "creator")
    api.set_chat_member(GROUP, MEMBER, "member")
    assert await store.may_change(bot, GROUP, "supergroup", ADMIN) is True
    assert await store.may_change(bot, GROUP, "supergroup", MEMBER + 1) is True
    assert await store.may_change(bot, GROUP, "supergroup", MEMBER) is False
    assert await store.may_change(bot, GROUP, "supergroup", 999) is False  # not in the group: "left"
    calls = len(api.calls("getChatMember"))
    api.set_chat_member(GROUP, MEMBER, "administrator")  # promoted: seen once the cached answer expires
    assert await store.may_change(bot, GROUP, "supergroup", MEMBER) is False
    assert await store.may_change(bot, GROUP, "supergroup", ADMIN) is True
    assert len(api.calls("getChatMember")) == calls


async def test_the_admin_cache_lives_chat_admin_cache_s(store, bot, api, redis_client, key_prefix):
    api.set_chat_member(GROUP, ADMIN, "administrator")
    assert await store.may_change(bot, GROUP, "group", ADMIN) is True
    assert 0 < await redis_client.ttl(f"{key_prefix}bot:chat:{GROUP}:admin:{ADMIN}") <= 60


async def test_a_private_chat_belongs_to_its_user_without_asking_telegram(store, bot, api):
    assert await store.may_change(bot, MEMBER, "private", MEMBER) is True
    assert await store.may_change(bot, MEMBER, "private", ADMIN) is False
    assert api.calls("getChatMember") == []


async def test_when_telegram_cannot_say_the_answer_is_unknown_and_not_cached(store, bot, api):
    api.set_chat_member(GROUP, ADMIN, "administrator")
    api.fail_next("getChatMember", error_code=400, description="Bad Request: chat not found")
    assert await store.may_change(bot, GROUP, "supergroup", ADMIN) is None
    assert await store.may_change(bot, GROUP, "supergroup", ADMIN) is True


def test_the_keyboard_ticks_the_current_values_and_its_payloads_fit_telegrams_64_bytes(settings):
    chat_id = -1009999999999999  # as long as a supergroup id gets
    current = ChatSettings("short", "normal", "nano")
    offered = {field: allowed_values(field, settings) for field in ("length", "creativity", "size")}
    rows = settings_keyboard(chat_id, current, offered, SIGNER, RU).inline_keyboard
    assert [[button.text for button in row] for row in rows] == [
        ["✓ Короткие", "Обычные", "Длинные"], ["Сдержанная", "✓ Обычная", "Буйная"], ["Как у всех", "✓ nano", "mini"]]
    payloads = [button.callback_data for row in rows for button in row]
    assert max(len(payload.encode()) for payload in payloads) <= 64
    body = SIGNER.verified(payloads[0], chat_scope(chat_id))  # signed for this chat, and only for it
    assert ChatSetting.unpack(body) == ChatSetting(chat_id=chat_id, field="length", value="short")
    assert SIGNER.verified(payloads[0], chat_scope(GROUP)) is None


def test_without_chat_sizes_the_keyboard_has_no_size_row():
    settings = Settings(_env_file=None)
    offered = {field: allowed_values(field, settings) for field in ("length", "creativity", "size")}
    assert len(settings_keyboard(GROUP, ChatSettings(), offered, SIGNER, RU).inline_keyboard) == 2
