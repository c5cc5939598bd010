"""The disk under Redis' AOF full (issue #20's fault matrix): Redis refuses every write (MISCONF) while it
still answers reads. The bot, a worker and their own Redis (AOF, the shipped `appendfsync everysec`) keep
running: a /joke asked meanwhile is refused with a message in the user's language, an inline query is told
so too, and once the disk has room again the next /joke is a joke. The disk is "full" through Redis'
RLIMIT_FSIZE (tests/conftest.py's RedisServer.disk_full), so no mount or root is needed; the fault drill
fills a real tmpfs instead (benchmarks/fault_drill.py, disk-full).
"""
from __future__ import annotations

import time
import uuid

import redis
from redis.exceptions import ResponseError

from bot.queue.connection import is_outage
from bot.telegram.texts import RU
from tests.e2e_stack import BOT_TOKEN, BOT_USERNAME, is_joke, make_stack, wait_until
from tests.fake_bot_api import FakeBotAPI
from tests.model_helpers import make_tiny_model_dir


def writes_refused(url: str) -> bool:
    with redis.Redis.from_url(url) as client:
        try:
            client.set("disk-probe", "1")  # the write that fills the disk is accepted into the AOF's buffer
            return False
        except ResponseError as error:
            return is_outage(error)


def test_a_full_disk_under_redis_refuses_new_jokes_clearly_and_serves_them_again_once_freed(redis_server_factory,
                                                                                             tmp_path):
    server = redis_server_factory(appendonly=True, fsync="everysec")
    nano = make_tiny_model_dir(tmp_path / "nano", seed=1)
    api = FakeBotAPI.start_in_thread(token=BOT_TOKEN, username=BOT_USERNAME)
    stack = make_stack(api, server.url, f"disk-{uuid.uuid4().hex[:6]}:", tmp_path, nano, nano)
    try:
        stack.start()
        user = stack.new_user()
        api.private_message(user, "/joke До аварии")
        assert is_joke(stack.wait_for_reply(user, timeout=60))

        # An inline "✍️" article offered before the disk filled up (no variant was ready: the worker is held)…
        inline_user = stack.new_user()
        stack.pause_worker()
        try:
            query_id = api.inline_query(inline_user, "Вовочка и диск")["inline_query"]["id"]
            (article,) = stack.inline_answer(query_id, timeout=30)["results"]
        finally:
            stack.resume_worker()

        server.disk_full(True)
        wait_until(lambda: writes_refused(server.url), 10, "Redis refusing writes")
        api.private_message(user, "/joke При полном диске")
        refusal = stack.wait_for_reply(user, nth=2, timeout=60)
        assert not is_joke(refusal) and refusal["text"] == RU.TEMPORARY_ERROR, refusal
        query_id = api.inline_query(stack.new_user(), "Штирлиц и полный диск")["inline_query"]["id"]
        answer = stack.inline_answer(query_id, timeout=30)
        assert answer["results"] == [] and answer["button"]["text"] == RU.INLINE_UNAVAILABLE, answer
        # …and sent meanwhile: its message says the joke could not be written, not "writing…" forever.
        api.chosen_inline_result(inline_user, article["id"], "Вовочка и диск", inline_message_id="inl-disk")
        wait_until(lambda: api.inline_messages["inl-disk"]["text"] == RU.TEMPORARY_ERROR, 30,
                   "the sent article telling the user")

        server.disk_full(False)
        wait_until(lambda: not writes_refused(server.url), 10, "Redis taking writes again")
        time.sleep(1)  # a heartbeat of the worker's: it has been waiting the outage out, not dead
        api.private_message(user, "/joke После аварии")
        joke = stack.wait_for_reply(user, nth=3, timeout=60)
        assert is_joke(joke) and joke["text"].startswith("После аварии"), joke
        assert stack.bot.poll() is None and stack.worker.poll() is None  # both waited it out
    finally:
        stack.close()
        api.stop()
