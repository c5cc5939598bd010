"""The daily joke: time and time zone parsing, the next due moment across DST, the scheduler's claims against a
real Redis (two replicas, a crash between steps, a Redis restart, retries), and /daily end to end in a private
chat, a group and a channel through the real bot, worker and fake Bot API.

The scheduler runs on the real clock; the end-to-end tests make a post due by moving the chat's due time in
Redis to the present (waiting for 09:00 would take a day), which is the state the clock would have reached.
"""
from __future__ import annotations

import asyncio
import time
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from redis.asyncio import Redis

from bot.queue.submit import QueueFull
from bot.telegram.daily import (
    BUSY_RETRY_S,
    MAX_ATTEMPTS,
    MAX_LATE_S,
    DailyJokes,
    Subscription,
    next_due,
    parse_time,
    post_id_for,
)
from bot.telegram.texts import EN, RU
from bot.telegram.timezones import RUSSIAN_NAMES, parse_timezone, zone_label
from tests.e2e_stack import button_texts, wait_until

MOSCOW = ZoneInfo("Europe/Moscow")


def at(zone: str, *fields: int) -> float:
    return datetime(*fields, tzinfo=ZoneInfo(zone)).timestamp()


# -- parsing and the clock -------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [("09:00", (9, 0)), ("9:05", (9, 5)), ("21.30", (21, 30)),
                                                ("00:00", (0, 0)), (" 23:59 ", (23, 59))])
def test_times_are_read_as_hours_and_minutes(text, expected):
    parsed = parse_time(text)
    assert (parsed.hour, parsed.minute) == expected


@pytest.mark.parametrize("text", ["24:00", "9", "09:60", "9:5", "nine", "09:00:00", "-1:00", "", "٠٩:٠٠"])
def test_anything_else_is_not_a_time(text):
    assert parse_time(text) is None


def test_time_zones_are_iana_names_in_any_case_and_nothing_else():
    assert parse_timezone("europe/berlin") == "Europe/Berlin"
    assert parse_timezone("UTC") == parse_timezone("utc") == "UTC"
    assert parse_timezone("Asia/Almaty") == "Asia/Almaty"
    for bad in ("Mars/Base", "../../etc/passwd", "/etc/localtime", "", "Europe", "UTC+15", "+5:30", "Спрингфилд"):
        assert parse_timezone(bad) is None, bad


@pytest.mark.parametrize(("text", "zone"), [
    ("Москва", "Europe/Moscow"), ("МСК", "Europe/Moscow"), ("питер", "Europe/Moscow"),
    ("Санкт Петербург", "Europe/Moscow"), ("Нижний Новгород", "Europe/Moscow"), ("Новосибирск", "Asia/Novosibirsk"),
    ("Алма-Ата", "Asia/Almaty"), ("Кишинёв", "Europe/Chisinau"),  # ё or е
    ("Berlin", "Europe/Berlin"), ("new york", "America/New_York"), ("America/New_York", "America/New_York"),
])
def test_a_city_is_its_zone_in_russian_or_as_its_iana_name_ends(text, zone):
    assert parse_timezone(text) == zone


@pytest.mark.parametrize(("text", "zone", "shown"), [
    ("UTC+5", "Etc/GMT-5", "UTC+5"), ("utc + 5", "Etc/GMT-5", "UTC+5"), ("GMT-3", "Etc/GMT+3", "UTC-3"),
    ("+3", "Etc/GMT-3", "UTC+3"), ("+03:00", "Etc/GMT-3", "UTC+3"), ("−4", "Etc/GMT+4", "UTC-4"),
    ("МСК+4", "Etc/GMT-7", "UTC+7"), ("UTC+0", "UTC", "UTC"),
])
def test_a_whole_hour_offset_is_its_etc_zone_shown_the_way_it_was_meant(text, zone, shown):
    """Etc/GMT-5 is five hours *east* of Greenwich (POSIX signs): shown as it was written, UTC+5."""
    assert parse_timezone(text) == zone and zone_label(zone) == shown
    assert next_due("09:00", zone, 0)[0] % 86400 == (9 - int(shown[3:] or 0)) % 24 * 3600  # 09:00 there, in UTC


def test_every_russian_name_points_at_a_zone_this_machine_knows():
    assert all(parse_timezone(name) == zone for zone, names in RUSSIAN_NAMES.items() for name in names)


def test_the_next_post_is_today_if_its_time_has_not_come_else_tomorrow():
    before = at("Europe/Moscow", 2026, 12, 1, 8, 59)
    due, day = next_due("09:00", "Europe/Moscow", before)
    assert due == at("Europe/Moscow", 2026, 12, 1, 9, 0) and day == date(2026, 12, 1)
    due, day = next_due("09:00", "Europe/Moscow", due)  # exactly at the time: that one is taken, so tomorrow
    assert due == at("Europe/Moscow", 2026, 12, 2, 9, 0) and day == date(2026, 12, 2)
    # the same moment is 07:00 in Berlin: 09:00 there is two hours later
    assert next_due("09:00", "Europe/Berlin", before)[0] == before + 60 + 2 * 3600


def test_across_dst_a_post_keeps_its_local_time_and_comes_once_a_day():
    zone = ZoneInfo("Europe/Berlin")
    stamps, after = [], at("Europe/Berlin", 2027, 3, 26, 12, 0)
    for _ in range(4):  # clocks jump 02:00 -> 03:00 on 2027-03-28
        after, _ = next_due("09:00", "Europe/Berlin", after)
        stamps.append(after)
    moments = [datetime.fromtimestamp(stamp, zone) for stamp in stamps]
    assert [m.hour for m in moments] == [9, 9, 9, 9]
    assert [m.date() for m in moments] == [date(2027, 3, 27) + timedelta(days=i) for i in range(4)]
    assert [b - a for a, b in zip(stamps, stamps[1:])] == [23 * 3600, 24 * 3600, 24 * 3600]  # the short day
    # a time the clocks skip still gets its day's post (an hour later), and only one
    skipped, day = next_due("02:30", "Europe/Berlin", at("Europe/Berlin", 2027, 3, 28, 0, 0))
    assert day == date(2027, 3, 28) and datetime.fromtimestamp(skipped, zone).hour == 3
    following, next_day = next_due("02:30", "Europe/Berlin", skipped)
    assert next_day == date(2027, 3, 29)
    # a time that happens twice (clocks go back 03:00 -> 02:00 on 2026-10-25) posts once
    first, day = next_due("02:30", "Europe/Berlin", at("Europe/Berlin", 2026, 10, 25, 0, 0))
    second, next_day = next_due("02:30", "Europe/Berlin", first)
    assert day == date(2026, 10, 25) and next_day == date(2026, 10, 26) and second - first > 23 * 3600


# -- the scheduler on a real Redis --------------------------------------------------------------------------

def subscription(chat_id: int, at_: str = "09:00", timezone: str = "Europe/Moscow", **fields) -> Subscription:
    return Subscription(chat_id=chat_id, at=at_, timezone=timezone, language="ru", chat_type="private",
                        since=time.time(), **fields)


class Recorder:
    """A stand-in for JokeService.daily_joke that remembers what it was asked to submit."""

    def __init__(self, refuse: bool = False) -> None:
        self.posts: list[str] = []
        self.refuse = refuse

    async def __call__(self, sub: Subscription, post_id: str) -> None:
        if self.refuse:
            raise QueueFull(100, 100)
        await asyncio.sleep(0)  # let the other replica interleave
        self.posts.append(post_id)


def scheduler(redis: Redis, prefix: str, lease_s: float = 60.0) -> DailyJokes:
    return DailyJokes(redis, prefix, lease_s=lease_s, check_interval_s=0.1)


NOW = at("Europe/Moscow", 2026, 12, 1, 9, 0, 30)  # half a minute past 09:00 in Moscow


async def test_two_replicas_post_each_chats_joke_once_and_move_it_to_the_next_day(redis_client, key_prefix):
    one, two = scheduler(redis_client, key_prefix), scheduler(redis_client, key_prefix)
    chats = list(range(1, 41)) + [-1001234567890]
    for chat_id in chats:
        await one.subscribe(subscription(chat_id), now=NOW - 3600)  # subscribed at 08:00:30
    first, second = Recorder(), Recorder()
    await asyncio.gather(*(replica.tick(recorder, now=NOW) for _ in range(3)
                           for replica, recorder in ((one, first), (two, second))))
    posted = first.posts + second.posts
    assert sorted(posted) == sorted(post_id_for(chat, date(2026, 12, 1)) for chat in chats)  # each once
    for chat_id in chats:
        assert await one.due_at(chat_id) == at("Europe/Moscow", 2026, 12, 2, 9, 0)
    # the same morning again (a restart, a late round): nothing more
    await asyncio.gather(one.tick(first, now=NOW + 5), two.tick(second, now=NOW + 5))
    assert len(first.posts + second.posts) == len(chats)


async def test_a_claimed_post_survives_a_crash_before_its_submit(redis_client, key_prefix):
    crashed, survivor = scheduler(redis_client, key_prefix), scheduler(redis_client, key_prefix)
    await crashed.subscribe(subscription(7), now=NOW - 60)
    claimed = await crashed.claim_due(NOW)  # ...and the process dies here, before run_pending
    assert [post.post_id for post in claimed] == [post_id_for(7, date(2026, 12, 1))]
    recorder = Recorder()
    assert await survivor.tick(recorder, now=NOW + 1) == 1
    assert recorder.posts == [post_id_for(7, date(2026, 12, 1))]


async def test_a_post_whose_joke_never_came_is_tried_again_after_its_lease_then_given_up(redis_client, key_prefix):
    daily = scheduler(redis_client, key_prefix, lease_s=30)
    await daily.subscribe(subscription(8), now=NOW - 60)
    recorder = Recorder()
    await daily.tick(recorder, now=NOW)
    await daily.tick(recorder, now=NOW + 29)  # within the lease: the first attempt may still answer
    assert len(recorder.posts) == 1
    for attempt in range(2, MAX_ATTEMPTS + 2):
        await daily.tick(recorder, now=NOW + 31 * attempt)
    assert recorder.posts == [post_id_for(8, date(2026, 12, 1))] * MAX_ATTEMPTS  # the same id: deduplicated
    assert await redis_client.zcard(f"{key_prefix}bot:daily:pending") == 0  # given up, not retried forever


async def test_a_sent_post_is_never_sent_or_submitted_again(redis_client, key_prefix):
    daily = scheduler(redis_client, key_prefix, lease_s=30)
    await daily.subscribe(subscription(9), now=NOW - 60)
    recorder = Recorder()
    await daily.tick(recorder, now=NOW)
    post_id = recorder.posts[0]
    assert await daily.claim_send(post_id) is True
    assert await daily.claim_send(post_id) is False  # a second result of the same post, a second replica
    await daily.tick(recorder, now=NOW + 31)  # the lease ran out before the delivery said done: still once
    assert recorder.posts == [post_id]


async def test_a_full_queue_retries_the_post_soon(redis_client, key_prefix):
    daily = scheduler(redis_client, key_prefix)
    await daily.subscribe(subscription(10), now=NOW - 60)
    assert await daily.tick(Recorder(refuse=True), now=NOW) == 0
    recorder = Recorder()
    await daily.tick(recorder, now=NOW + BUSY_RETRY_S - 1)
    assert recorder.posts == []
    await daily.tick(recorder, now=NOW + BUSY_RETRY_S + 1)
    assert recorder.posts == [post_id_for(10, date(2026, 12, 1))]


async def test_a_day_missed_by_half_a_day_is_skipped_not_posted_late(redis_client, key_prefix):
    daily = scheduler(redis_client, key_prefix)
    await daily.subscribe(subscription(11), now=NOW - 60)
    recorder = Recorder()
    await daily.tick(recorder, now=NOW + MAX_LATE_S + 60)  # the bot was away from 09:00 to after 21:00
    assert recorder.posts == []
    assert await daily.due_at(11) == at("Europe/Moscow", 2026, 12, 2, 9, 0)


async def test_unsubscribed_chats_get_no_more_posts(redis_client, key_prefix):
    daily = scheduler(redis_client, key_prefix)
    await daily.subscribe(subscription(12), now=NOW - 60)
    assert await daily.unsubscribe(12) is True and await daily.unsubscribe(12) is False
    recorder = Recorder()
    await daily.tick(recorder, now=NOW)
    assert recorder.posts == [] and await daily.get(12) is None


async def test_subscriptions_and_claimed_posts_outlive_a_redis_restart(redis_server_factory, key_prefix):
    server = redis_server_factory(appendonly=True)
    client = Redis.from_url(server.url, decode_responses=True)
    daily = scheduler(client, key_prefix)
    await daily.subscribe(subscription(13), now=NOW - 60)
    await daily.subscribe(subscription(14, "10:00"), now=NOW - 60)
    await daily.claim_due(NOW)  # 13's post is claimed; then Redis is killed
    await client.aclose()
    server.restart(kill=True)
    client = Redis.from_url(server.url, decode_responses=True)
    try:
        daily = scheduler(client, key_prefix)
        recorder = Recorder()
        await daily.tick(recorder, now=NOW + 1)
        assert recorder.posts == [post_id_for(13, date(2026, 12, 1))]
        assert await daily.claim_send(recorder.posts[0])  # shown, as the delivery does
        await daily.done(recorder.posts[0])
        await daily.tick(recorder, now=at("Europe/Moscow", 2026, 12, 1, 10, 0, 1))
        assert recorder.posts[1:] == [post_id_for(14, date(2026, 12, 1))]
    finally:
        await client.aclose()


# -- end to end -----------------------------------------------------------------------------------------------

def make_due_now(stack, chat_id: int) -> None:
    with stack.redis() as client:
        assert client.zadd(f"{stack.prefix}bot:daily:due", {str(chat_id): int(time.time()) - 1}, xx=True, ch=True) == 1


def daily_posts(stack, chat_id: int, t=RU) -> list[dict]:
    return [m for m in stack.bot_messages(chat_id) if m.get("text", "").startswith(t.DAILY_HEADER)]


def due_at(stack, chat_id: int) -> float | None:
    with stack.redis() as client:
        return client.zscore(f"{stack.prefix}bot:daily:due", str(chat_id))


def test_daily_in_a_private_chat_subscribes_posts_once_and_stops(stack):
    user = stack.new_user()
    stack.api.private_message(user, "/daily")
    assert stack.wait_for_reply(user)["text"] == RU.DAILY_STATUS_OFF.format(timezone="Europe/Moscow")
    stack.api.private_message(user, "/daily 9:00")
    assert stack.wait_for_reply(user, nth=2)["text"] == RU.DAILY_SUBSCRIBED.format(at="09:00", timezone="Europe/Moscow")
    assert due_at(stack, user) == next_due("09:00", "Europe/Moscow", time.time())[0]
    make_due_now(stack, user)
    (post,) = wait_until(lambda: daily_posts(stack, user), 60, "the joke of the day")
    assert len(post["text"]) > len(RU.DAILY_HEADER) + 2
    assert button_texts(post) == [RU.BUTTON_MORE, RU.BUTTON_UP, RU.BUTTON_DOWN]
    query = stack.api.press_button(user, post, RU.BUTTON_UP)  # the post's buttons work like any joke's
    assert stack.callback_answer(query["callback_query"]["id"])["text"] == RU.VOTE_NEW.format(vote=RU.BUTTON_UP)
    assert due_at(stack, user) == next_due("09:00", "Europe/Moscow", time.time())[0]  # tomorrow's
    time.sleep(2)  # several scheduler rounds later: still one
    assert len(daily_posts(stack, user)) == 1
    stack.api.private_message(user, "/daily")
    status = wait_until(lambda: [m for m in stack.finished_messages(user)
                                 if m["text"] == RU.DAILY_STATUS_ON.format(at="09:00", timezone="Europe/Moscow")],
                        20, "the status")
    assert status
    stack.api.private_message(user, "/daily off")
    wait_until(lambda: any(m["text"] == RU.DAILY_UNSUBSCRIBED for m in stack.finished_messages(user)), 20, "off")
    assert due_at(stack, user) is None


def test_daily_refuses_bad_times_and_time_zones_and_keeps_a_named_zone(stack):
    user = stack.new_user()
    stack.api.private_message(user, "/daily 25:00")
    assert stack.wait_for_reply(user)["text"] == RU.DAILY_BAD_TIME.format(value="25:00")
    stack.api.private_message(user, "/daily 09:00 Mars/Base")
    assert stack.wait_for_reply(user, nth=2)["text"] == RU.DAILY_BAD_TIMEZONE.format(value="Mars/Base")
    stack.api.private_message(user, "/daily 09:00 " + "<b>x</b>" * 40)
    assert "<b>x</b>" in stack.wait_for_reply(user, nth=3)["text"]  # quoted back plain, cut short
    assert due_at(stack, user) is None  # nothing subscribed by bad input
    stack.api.private_message(user, "/daily 09:00 Нижний Новгород")  # a zone of two words
    assert stack.wait_for_reply(user, nth=4)["text"] == RU.DAILY_SUBSCRIBED.format(at="09:00", timezone="Europe/Moscow")
    stack.api.private_message(user, "/daily 09:00 UTC+5")
    assert stack.wait_for_reply(user, nth=5)["text"] == RU.DAILY_SUBSCRIBED.format(at="09:00", timezone="UTC+5")
    assert due_at(stack, user) == next_due("09:00", "Etc/GMT-5", time.time())[0]
    stack.api.private_message(user, "/daily 07:15 europe/berlin")
    assert stack.wait_for_reply(user, nth=6)["text"] == RU.DAILY_SUBSCRIBED.format(at="07:15", timezone="Europe/Berlin")
    stack.api.private_message(user, "/daily 08:00")  # the chat's zone stays
    assert stack.wait_for_reply(user, nth=7)["text"] == RU.DAILY_SUBSCRIBED.format(at="08:00", timezone="Europe/Berlin")
    assert due_at(stack, user) == next_due("08:00", "Europe/Berlin", time.time())[0]
    stack.api.private_message(user, "/daily off")
    stack.wait_for_reply(user, nth=8)


def test_in_a_group_only_admins_subscribe_and_the_post_comes_to_the_group(stack):
    group, member, admin = stack.new_group(), stack.new_user(), stack.new_user()
    stack.api.set_chat_member(group, admin, "administrator")
    stack.api.group_message(group, member, "/daily 09:00")
    wait_until(lambda: any(m["text"] == RU.DAILY_ADMINS_ONLY for m in stack.bot_messages(group)), 20, "the refusal")
    assert due_at(stack, group) is None
    stack.api.group_message(group, admin, "/daily 09:00")
    wait_until(lambda: due_at(stack, group) is not None, 20, "the group's subscription")
    make_due_now(stack, group)
    (post,) = wait_until(lambda: daily_posts(stack, group), 60, "the group's joke of the day")
    assert button_texts(post) == [RU.BUTTON_MORE, RU.BUTTON_UP, RU.BUTTON_DOWN]
    stack.api.group_message(group, member, "/daily off")  # a member cannot stop it either
    wait_until(lambda: sum(m["text"] == RU.DAILY_ADMINS_ONLY for m in stack.bot_messages(group)) == 2, 20, "refused")
    assert due_at(stack, group) is not None
    stack.api.group_message(group, admin, "/daily off")
    wait_until(lambda: due_at(stack, group) is None, 20, "the group unsubscribed")


def test_in_a_forum_the_joke_of_the_day_comes_to_the_topic_daily_was_set_in_or_general_once_it_is_gone(stack):
    group, admin, topic = stack.new_group(), stack.new_user(), 31
    stack.api.set_chat_member(group, admin, "administrator")
    stack.api.group_message(group, admin, "/daily 09:00", topic=topic)
    confirmation = stack.wait_for_reply(group)
    assert confirmation["text"].startswith("🗓") and confirmation.get("message_thread_id") == topic
    make_due_now(stack, group)
    (post,) = wait_until(lambda: daily_posts(stack, group), 60, "the topic's joke of the day")
    assert post.get("message_thread_id") == topic
    # Another group's topic deleted since /daily: Telegram refuses the post there; it comes to General, not never.
    other = stack.new_group()
    stack.api.set_chat_member(other, admin, "administrator")
    stack.api.group_message(other, admin, "/daily 09:00", topic=topic)
    stack.wait_for_reply(other)
    stack.api.fail_next("sendMessage", 400, description="Bad Request: message thread not found")
    make_due_now(stack, other)
    (post,) = wait_until(lambda: daily_posts(stack, other), 60, "the other group's joke of the day")
    assert "message_thread_id" not in post
    for chat in (group, other):
        stack.api.group_message(chat, admin, "/daily off")
        wait_until(lambda: due_at(stack, chat) is None, 20, "unsubscribed")


def test_a_channel_gets_its_joke_of_the_day_with_votes_only(stack):
    channel = -1009000000000 - stack.new_user()
    stack.api.channel_post(channel, "/daily 08:30")
    wait_until(lambda: any(m["text"] == RU.DAILY_SUBSCRIBED.format(at="08:30", timezone="Europe/Moscow")
                           for m in stack.bot_messages(channel)), 20, "the channel's subscription")
    make_due_now(stack, channel)
    (post,) = wait_until(lambda: daily_posts(stack, channel), 60, "the channel's joke of the day")
    assert button_texts(post) == [RU.BUTTON_UP, RU.BUTTON_DOWN]  # 🔁 would let any reader post into the channel
    stack.api.channel_post(channel, "/daily off")
    wait_until(lambda: due_at(stack, channel) is None, 20, "the channel unsubscribed")


def test_an_english_speaker_subscribes_in_english_and_gets_an_english_header(stack):
    user = {**stack.api.make_user(stack.new_user()), "language_code": "en"}
    stack.api.private_message(user, "/daily 18:00 Europe/London")
    assert stack.wait_for_reply(user["id"])["text"] == EN.DAILY_SUBSCRIBED.format(at="18:00", timezone="Europe/London")
    make_due_now(stack, user["id"])
    (post,) = wait_until(lambda: daily_posts(stack, user["id"], EN), 60, "the joke of the day in English")
    assert button_texts(post) == [EN.BUTTON_MORE, EN.BUTTON_UP, EN.BUTTON_DOWN]
