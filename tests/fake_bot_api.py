"""Fake Telegram Bot API server for end-to-end tests of the rujokes bot.

Real HTTP (aiohttp.web, 127.0.0.1, ephemeral port), so the real bot process can point aiogram at ``base_url``.
Tests inject updates (private_message, inline_query, ...) and failures (fail_next), then inspect what the bot
did (calls, wait_for_call, messages_in_chat). Three ways to run it:
    async with FakeBotAPI() as api: ...             # in the test's event loop
    api = FakeBotAPI.start_in_thread(); api.stop()  # sync tests; bot as a subprocess
    python tests/fake_bot_api.py --port 8081        # standalone; control API over HTTP under /_control/
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import itertools
import json
import logging
import re
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

from aiohttp import web

log = logging.getLogger("fake_bot_api")

DEFAULT_TOKEN = "123456789:TEST-fake-token"
MAX_TEXT = 4096
MAX_CALLBACK_DATA_BYTES = 64    # InlineKeyboardButton.callback_data: 1-64 bytes
MAX_RESULT_ID_BYTES = 64        # InlineQueryResult.id: 1-64 bytes
MAX_CALLBACK_ANSWER = 200       # answerCallbackQuery text: 0-200 characters
_START_PARAMETER = re.compile(r"[A-Za-z0-9_-]{1,64}")
NOT_MODIFIED = ("Bad Request: message is not modified: specified new message content and reply markup "
                "are exactly the same as a current content and reply markup of the message")
QUERY_TOO_OLD = "Bad Request: query is too old and response timeout expired or query ID is invalid"
POLL_CONFLICT = "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running"
_DESCRIPTIONS = {400: "Bad Request: injected failure", 401: "Unauthorized",
                 403: "Forbidden: bot was blocked by the user", 404: "Not Found", 409: POLL_CONFLICT,
                 500: "Internal Server Error", 502: "Bad Gateway"}
# Form data (aiogram's default encoding) carries only strings: restore the types tests compare against.
_INT_FIELDS = {"chat_id", "message_id", "offset", "limit", "timeout", "draft_id", "cache_time", "user_id",
               "message_thread_id", "reply_to_message_id", "from_chat_id"}
_BOOL_FIELDS = {"is_personal", "show_alert", "disable_notification", "protect_content", "drop_pending_updates"}
_JSON_FIELDS = {"reply_markup", "entities", "caption_entities", "results", "commands", "scope", "allowed_updates",
                "link_preview_options", "reply_parameters", "button", "message_ids"}
_HTML_TAGS = {"b": "bold", "strong": "bold", "i": "italic", "em": "italic", "u": "underline", "ins": "underline",
              "s": "strikethrough", "strike": "strikethrough", "del": "strikethrough", "tg-spoiler": "spoiler",
              "span": "spoiler", "a": "text_link", "code": "code", "pre": "pre", "blockquote": "blockquote"}
_TAG = re.compile(r"<(/?)([a-zA-Z][\w-]*)([^<>]*)>")
# Entities Telegram itself attaches to what users type.
_AUTO_ENTITIES = [("bot_command", re.compile(r"(?<!\S)/\w{1,32}(?:@\w{3,32})?", re.ASCII)),
                  ("mention", re.compile(r"(?<![\w@])@\w{5,32}", re.ASCII)), ("url", re.compile(r"https?://\S+"))]
UserRef = int | dict  # a user id (a plain test user is made up for it) or a full User dict
MessageRef = dict | tuple | str  # a Message dict, (chat_id, message_id), or an inline_message_id
# Methods the bot may call at startup whose effect no test inspects (beyond the call log).
# ChatMemberAdministrator's boolean rights (Bot API 9.x), all required in a response.
_ADMIN_RIGHTS = ("can_manage_chat", "can_delete_messages", "can_manage_video_chats", "can_restrict_members",
                 "can_promote_members", "can_change_info", "can_invite_users", "can_post_stories", "can_edit_stories",
                 "can_delete_stories", "can_send_welcome_messages", "can_pin_messages", "can_manage_topics")
_ALWAYS_TRUE = {"sendChatAction", "setMyDescription", "setMyShortDescription", "setMyName", "setChatMenuButton",
                "close", "logOut"}


def utf16_len(text: str) -> int:
    """Telegram counts offsets and lengths in UTF-16 code units: 😂 is 2."""
    return len(text.encode("utf-16-le")) // 2


def text_entities(text: str) -> list[dict]:
    found = [{"type": kind, "offset": utf16_len(text[:m.start()]), "length": utf16_len(m.group())}
             for kind, rx in _AUTO_ENTITIES for m in rx.finditer(text)]
    return sorted(found, key=lambda e: e["offset"])


class ApiError(Exception):
    def __init__(self, code: int, description: str, parameters: dict | None = None):
        super().__init__(description)
        self.code, self.description, self.parameters = code, description, parameters

    def response(self) -> web.Response:
        body = {"ok": False, "error_code": self.code, "description": self.description}
        return web.json_response({**body, "parameters": self.parameters} if self.parameters else body, status=self.code)


def parse_html(text: str) -> tuple[str, list[dict]]:
    """Loose parse_mode=HTML: (plain text, entities), or 400 "can't parse entities" on unknown/unbalanced tags."""
    plain, entities, open_tags, pos = "", [], [], 0
    for tag in _TAG.finditer(text):
        plain, pos = plain + html.unescape(text[pos:tag.start()]), tag.end()
        closing, name, attrs = tag.group(1), tag.group(2).lower(), tag.group(3)
        if name not in _HTML_TAGS:
            problem = f'Unsupported start tag "{name}"'
        elif not closing:
            open_tags.append((name, attrs, utf16_len(plain)))
            continue
        elif open_tags and open_tags[-1][0] == name:
            _, attrs, start = open_tags.pop()
            entity = {"type": _HTML_TAGS[name], "offset": start, "length": utf16_len(plain) - start}
            if name == "a":
                entity["url"] = html.unescape(re.search(r'href="([^"]*)"|$', attrs).group(1) or "")
            entities += [entity] if entity["length"] else []
            continue
        else:
            problem = f'Unmatched end tag "{name}"'
        raise ApiError(400, f"Bad Request: can't parse entities: {problem} at byte offset {tag.start()}")
    if open_tags:
        raise ApiError(400, f"Bad Request: can't parse entities: Can't find end tag corresponding to start tag "
                            f'"{open_tags[-1][0]}"')
    return plain + html.unescape(text[pos:]), sorted(entities, key=lambda e: (e["offset"], -e["length"]))


def _coerce(key: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if key in _JSON_FIELDS and value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    if key in _INT_FIELDS and re.fullmatch(r"-?\d+", value):
        return int(value)
    return value.lower() == "true" if key in _BOOL_FIELDS and value.lower() in ("true", "false") else value


async def _read_params(request: web.Request) -> dict:
    """Query string merged with a JSON, urlencoded or multipart body."""
    params: dict[str, Any] = dict(request.query)
    if request.can_read_body and request.content_type == "application/json":
        body = await request.json()
        params.update(body if isinstance(body, dict) else {})
    elif request.can_read_body:
        for key, value in (await request.post()).items():
            is_file = not isinstance(value, str)  # an uploaded file: keep what a test may assert on
            params[key] = {"filename": value.filename, "size": len(value.file.read())} if is_file else value
    return {key: _coerce(key, value) for key, value in params.items()}


@dataclass
class Call:
    method: str
    params: dict
    time: float
    error: tuple[int, str] | None = None  # (error_code, description) when answered with ok=false

    def __iter__(self):  # unpacks as (method, params, time)
        return iter((self.method, self.params, self.time))


def _inline_markup(params: dict) -> dict | None:
    markup = params.get("reply_markup")  # a Message only ever echoes inline keyboards
    markup = markup if isinstance(markup, dict) and "inline_keyboard" in markup else None
    _check_buttons(markup)
    return markup


def _check_buttons(markup: Any) -> None:
    """Telegram refuses a keyboard whose callback_data is empty or over 64 bytes."""
    rows = markup.get("inline_keyboard", []) if isinstance(markup, dict) else []
    for button in (b for row in rows for b in row if isinstance(b, dict)):
        if "callback_data" in button and not 1 <= len(str(button["callback_data"]).encode()) <= MAX_CALLBACK_DATA_BYTES:
            raise ApiError(400, "Bad Request: BUTTON_DATA_INVALID")


def _message_key(message: dict | tuple[int, int]) -> tuple[int, int]:
    return (message["chat"]["id"], message["message_id"]) if isinstance(message, dict) else tuple(message)


class FakeBotAPI:
    def __init__(self, token: str = DEFAULT_TOKEN, *, username: str = "rujokes_test_bot",
                 first_name: str = "RuJokes Test Bot", bot_id: int | None = None,
                 host: str = "127.0.0.1", port: int = 0):
        prefix = token.split(":", 1)[0]
        self.token, self.host, self.port = token, host, port
        self.bot_user = {"id": bot_id or (int(prefix) if prefix.isdigit() else 123456789), "is_bot": True,
                         "first_name": first_name, "username": username}
        self._lock = threading.RLock()  # tests may call helpers from another thread than the server's loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self._new_updates = asyncio.Event()  # set and replaced on each wake-up; long polls wait on it
        self._methods = {n[3:].lower(): n[3:] for n in dir(self) if n.startswith("_m_")}
        self._methods.update({n.lower(): n for n in _ALWAYS_TRUE})
        self.reset()

    def reset(self) -> None:
        """Forget updates, messages, calls and failures; the server keeps running."""
        with self._lock:
            self.call_log: list[Call] = []
            self.pending_updates: list[dict] = []
            self.chats: dict[int, dict] = {}
            self.chat_members: dict[tuple[int, int], dict] = {}  # (chat_id, user_id) -> ChatMember, for getChatMember
            self.messages: dict[tuple[int, int], dict] = {}  # (chat_id, message_id) -> current version; users' too
            self.inline_messages: dict[str, dict] = {}       # inline_message_id -> {"text", "reply_markup"}
            self.inline_answers: list[dict] = []
            self.callback_answers: list[dict] = []
            self.drafts: dict[int, list[dict]] = {}           # chat_id -> every sendMessageDraft, in order
            self._disruptions: dict[str, dict] = {}          # method (lower case) or "*" -> see disrupt()
            self.commands: dict[str, list] = {}
            self.webhook_url, self.allowed_updates = "", []
            self._ids = itertools.count(1)                    # update ids, query ids, file ids
            self._message_ids: dict[int, itertools.count] = {}
            self._open_queries: set[str] = set()
            self._failures: dict[str, list[dict]] = {}
            self._poll_generation = 0
            self._stall: asyncio.Event | None = None          # while polls stall; set by resume_polls
            self.stalled_polls: list[dict] = []               # params of each getUpdates that stalled

    # ---- lifecycle -------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> FakeBotAPI:
        self._loop, self._closing = asyncio.get_running_loop(), False
        self._new_updates = asyncio.Event()  # a fresh one, in case an earlier run used another loop
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._handle_api)
        app.router.add_route("*", "/_control/{action}", self._handle_control)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def aclose(self) -> None:
        self._closing = True
        self._wake()  # pending long polls answer [] now rather than hold up the shutdown
        self.resume_polls()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeBotAPI:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @classmethod
    def start_in_thread(cls, **kwargs: Any) -> FakeBotAPI:
        """Serve from a daemon thread with its own event loop; call .stop() when done."""
        api, started, failures = cls(**kwargs), threading.Event(), []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(api.start())
            except BaseException as exc:  # re-raised in the caller's thread below
                failures.append(exc)
                loop.close()
                return
            finally:
                started.set()
            loop.run_forever()
            loop.run_until_complete(api.aclose())
            loop.close()

        api._thread = threading.Thread(target=serve, name="fake-bot-api", daemon=True)
        api._thread.start()
        if not started.wait(15) or failures:
            raise failures[0] if failures else RuntimeError("fake Bot API did not start within 15 s")
        return api

    def stop(self) -> None:
        if self._thread is None:
            raise RuntimeError("stop() is for start_in_thread(); in async code use `await api.aclose()`")
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(15)
        self._thread = None

    # ---- HTTP ------------------------------------------------------------------------------------------
    async def _handle_api(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return ApiError(401, "Unauthorized").response()
        name = self._methods.get(request.match_info["method"].lower())  # Telegram ignores the case
        try:
            call = Call(name or request.match_info["method"], await _read_params(request), time.time())
        except ValueError:  # malformed JSON body
            return ApiError(400, "Bad Request: can't parse request body").response()
        try:
            if name is None:
                log.warning("fake Bot API: unsupported method %s(%s)", call.method, call.params)
                raise ApiError(404, "Not Found")
            disruption = self._disruption(name)
            if disruption is not None and disruption["kind"] == "reset":
                call.error = (0, "connection reset by the fake")
                request.transport.close()  # before any answer: the client sees the connection drop
                return web.Response()
            if disruption is not None and disruption["kind"] == "5xx":
                raise ApiError(502, "Bad Gateway")
            self._raise_injected_failure(name)
            result = True if name in _ALWAYS_TRUE else getattr(self, "_m_" + name)(call.params)
            if asyncio.iscoroutine(result):
                result = await result
            if disruption is not None and disruption["kind"] == "hang":
                await asyncio.sleep(disruption["hang_s"])  # done, but answered after the client gave up
            return web.json_response({"ok": True, "result": result})
        except ApiError as exc:
            call.error = (exc.code, exc.description)
            return exc.response()
        finally:  # logged after the state change: whoever sees the call also sees its effect
            with self._lock:
                self.call_log.append(call)

    _CONTROL_ACTIONS = {"inject_update", "private_message", "group_message", "sticker_message", "photo_message",
                        "inline_query", "chosen_inline_result", "callback_query", "press_button", "fail_next", "reset",
                        "stall_polls", "resume_polls", "set_chat_member", "disrupt"}

    async def _handle_control(self, request: web.Request) -> web.Response:
        """For tests in another process. POST /_control/<helper> with JSON kwargs (helpers above), or GET
        calls?method=, messages?chat_id=, drafts?chat_id=, wait_for_call?method=&since=&timeout= (408 on timeout)."""
        action, query = request.match_info["action"], request.query
        try:
            if action == "calls":
                result = [asdict(call) for call in self.calls(query.get("method"))]
            elif action in ("messages", "drafts"):
                chat_id = int(query["chat_id"])
                result = self.messages_in_chat(chat_id) if action == "messages" else self.drafts.get(chat_id, [])
            elif action == "wait_for_call":
                result = asdict(await self.wait_for_call(query["method"], since=int(query.get("since", 0)),
                                                         timeout=float(query.get("timeout", 5))))
            elif action in self._CONTROL_ACTIONS:
                result = getattr(self, action)(**(await request.json() if request.can_read_body else {}))
            else:
                raise ApiError(404, "Not Found")
        except TimeoutError as exc:
            return ApiError(408, str(exc)).response()
        except (LookupError, TypeError, ValueError) as exc:
            return ApiError(400, f"Bad Request: {exc!r}").response()
        except ApiError as exc:
            return exc.response()
        return web.json_response({"ok": True, "result": result})

    # ---- failures, call log, inspection -----------------------------------------------------------------
    def fail_next(self, method: str, error_code: int = 429, retry_after: int = 1, times: int = 1,
                  description: str | None = None, parameters: dict | None = None) -> None:
        """Answer the next `times` calls of `method` ("*": any method) with this error instead of running them."""
        if error_code == 429:
            description = description or f"Too Many Requests: retry after {retry_after}"
            parameters = {"retry_after": retry_after, **(parameters or {})}
        failure = {"code": error_code, "description": description or _DESCRIPTIONS.get(error_code, "Error"),
                   "parameters": parameters, "times": times}
        with self._lock:
            self._failures.setdefault(method.lower(), []).append(failure)

    def disrupt(self, method: str, kind: str, for_s: float, hang_s: float = 0.0) -> None:
        """For the next `for_s` seconds every call of `method` ("*": any but getUpdates) fails the way a troubled
        Telegram does: "5xx" (502 Bad Gateway, nothing done), "reset" (the connection drops before anything is
        done) or "hang" (done, but answered only after `hang_s`: a client that timed out cannot tell)."""
        if kind not in ("5xx", "reset", "hang"):
            raise ValueError(f"unknown disruption {kind!r}")
        with self._lock:
            self._disruptions[method.lower()] = {"kind": kind, "until": time.time() + for_s, "hang_s": hang_s}

    def _disruption(self, method: str) -> dict | None:
        with self._lock:
            found = self._disruptions.get(method.lower()) or (
                self._disruptions.get("*") if method.lower() != "getupdates" else None)
            return found if found is not None and time.time() < found["until"] else None

    def _raise_injected_failure(self, method: str) -> None:
        with self._lock:
            queue = self._failures.get(method.lower()) or self._failures.get("*")
            if not queue:
                return
            failure = queue[0]
            failure["times"] -= 1
            if failure["times"] <= 0:
                queue.pop(0)
        raise ApiError(failure["code"], failure["description"], failure["parameters"])

    def stall_polls(self) -> None:
        """From now on a getUpdates whose offset would confirm an update gets no answer, as if lost on its
        way to Telegram: it confirms nothing, so a bot killed meanwhile gets those updates again when it
        polls anew (Telegram re-delivers every update no later getUpdates offset confirmed)."""
        with self._lock:
            self._stall = self._stall or asyncio.Event()

    def resume_polls(self) -> None:
        """Stalled getUpdates calls fail with 502, still confirming nothing; later calls run as usual."""
        with self._lock:
            stall, self._stall = self._stall, None
        if stall is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(stall.set)

    @contextlib.contextmanager
    def together(self) -> Iterator[None]:
        """Updates injected inside the block reach a long poll in one getUpdates answer."""
        with self._lock:
            yield

    def calls(self, method: str | None = None) -> list[Call]:
        """Logged calls, oldest first, failed ones included (with .error set); method is case-insensitive."""
        with self._lock:
            return [c for c in self.call_log if method is None or c.method.lower() == method.lower()]

    def mark(self) -> int:
        """Current end of the call log: pass as wait_for_call(since=...) to ignore earlier calls."""
        return len(self.call_log)

    async def wait_for_call(self, method: str, predicate: Callable[[dict], bool] | None = None,
                            timeout: float = 5.0, since: int = 0, include_failed: bool = False) -> Call:
        """First call of `method` at log index >= since whose params satisfy predicate; TimeoutError if none.
        Polls rather than waits on an event, so it works from any event loop, not only the server's."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                for call in self.call_log[since:]:
                    if (call.method.lower() == method.lower() and (include_failed or call.error is None)
                            and (predicate is None or predicate(call.params))):
                        return call
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {method} call in {timeout}s; calls: {[c.method for c in self.calls()]}")
            await asyncio.sleep(0.01)

    def wait_for_call_blocking(self, *args: Any, **kwargs: Any) -> Call:
        """wait_for_call for sync tests (server started with start_in_thread)."""
        return asyncio.run(self.wait_for_call(*args, **kwargs))

    def messages_in_chat(self, chat_id: int) -> list[str]:
        """Current text (after edits, without deleted ones) of each bot message in the chat, oldest first."""
        with self._lock:
            return [m.get("text", m.get("caption", "")) for (cid, _), m in sorted(self.messages.items())
                    if cid == chat_id and m.get("from", {}).get("id") == self.bot_user["id"]]

    # ---- update injection ------------------------------------------------------------------------------
    @staticmethod
    def make_user(user_id: int = 1001, first_name: str | None = None, username: str | None = None) -> dict:
        return {"id": user_id, "is_bot": False, "first_name": first_name or f"User{user_id}",
                "username": username or f"user{user_id}", "language_code": "ru"}

    def _user(self, user: UserRef) -> dict:
        return user if isinstance(user, dict) else self.make_user(user)

    def _register_chat(self, chat: int | dict, user: dict | None = None) -> dict:
        if isinstance(chat, int) and chat > 0:
            user = user or self.make_user(chat)
            chat = {"id": chat, "type": "private", "first_name": user["first_name"], "username": user.get("username")}
        elif isinstance(chat, int):
            chat = {"id": chat, "type": "supergroup" if str(chat).startswith("-100") else "group",
                    "title": f"Test group {chat}"}
        with self._lock:
            self.chats[chat["id"]] = chat
        return chat

    def _store_message(self, chat: dict, sender: dict, reply_to: int | dict | None = None, **content: Any) -> dict:
        with self._lock:
            counter = self._message_ids.setdefault(chat["id"], itertools.count(1))  # shared by bot and users
            message = {"message_id": next(counter), "from": sender, "chat": chat, "date": int(time.time())}
            reply_id = reply_to["message_id"] if isinstance(reply_to, dict) else reply_to
            if original := self.messages.get((chat["id"], reply_id)):
                message["reply_to_message"] = {k: v for k, v in original.items() if k != "reply_to_message"}
            message.update({k: v for k, v in content.items() if v not in (None, [], "")})
            self.messages[(chat["id"], message["message_id"])] = message
        return message

    def inject_update(self, update: dict) -> dict:
        """Queue a raw update (update_id assigned here) and wake the long poll."""
        with self._lock:
            update = {"update_id": next(self._ids), **{k: v for k, v in update.items() if k != "update_id"}}
            for kind in ("callback_query", "inline_query"):  # raw queries may be answered like the helpers' ones
                if isinstance(update.get(kind), dict) and "id" in update[kind]:
                    self._open_queries.add(str(update[kind]["id"]))
            self.pending_updates.append(update)
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake)
        return update

    def _wake(self) -> None:
        self._new_updates.set()
        self._new_updates = asyncio.Event()

    def _inject_message(self, chat: int | dict | None, user: UserRef, reply_to: Any = None, **content: Any) -> dict:
        user = self._user(user)
        chat = self._register_chat(user["id"] if chat is None else chat, user)
        with self._lock:  # whoever writes in a group is one of its members (getChatMember), unless set otherwise
            self.chat_members.setdefault((chat["id"], user["id"]), {"status": "member", "user": user})
        return self.inject_update({"message": self._store_message(chat, user, reply_to, **content)})

    def private_message(self, user: UserRef, text: str, topic: int | None = None) -> dict:
        """topic: the thread of a private chat whose user keeps topics with the bot (Bot API 9.3)."""
        return self._inject_message(None, user, text=text, entities=text_entities(text), message_thread_id=topic,
                                    is_topic_message=True if topic else None)

    def group_message(self, chat: int | dict, user: UserRef, text: str, reply_to: int | dict | None = None,
                      entities: list[dict] | None = None, topic: int | None = None) -> dict:
        """chat: negative id (-100... is a supergroup) or Chat dict; reply_to: a Message dict or message_id;
        entities: instead of the ones Telegram would find in the text (e.g. a text_mention, which a client adds);
        topic: the forum topic (message_thread_id) it is written in."""
        return self._inject_message(chat, user, reply_to, text=text,
                                    entities=text_entities(text) if entities is None else entities,
                                    message_thread_id=topic, is_topic_message=True if topic else None)

    def set_chat_member(self, chat: int, user: UserRef, status: str = "administrator") -> dict:
        """What getChatMember answers for this user in this chat: "creator", "administrator", "member", "left"…"""
        user = self._user(user)
        member: dict[str, Any] = {"status": status, "user": user}
        if status == "creator":
            member["is_anonymous"] = False
        elif status == "administrator":  # ChatMemberAdministrator's required fields, rights of a typical admin
            member.update(dict.fromkeys(_ADMIN_RIGHTS, True), can_be_edited=False, is_anonymous=False,
                          can_promote_members=False)
        with self._lock:
            self.chat_members[(chat, user["id"])] = member
        return member

    def channel_post(self, chat_id: int, text: str) -> dict:
        """A post in a channel the bot administers: no `from`, the channel is the sender (sender_chat)."""
        chat = self._register_chat({"id": chat_id, "type": "channel", "title": f"Test channel {chat_id}"})
        with self._lock:
            counter = self._message_ids.setdefault(chat_id, itertools.count(1))
            post = {"message_id": next(counter), "sender_chat": chat, "chat": chat, "date": int(time.time()),
                    "text": text, **({"entities": text_entities(text)} if text_entities(text) else {})}
            self.messages[(chat_id, post["message_id"])] = post
        return self.inject_update({"channel_post": post})

    def sticker_message(self, user: UserRef, chat: int | dict | None = None, emoji: str = "😂") -> dict:
        n = next(self._ids)
        return self._inject_message(chat, user, sticker={
            "file_id": f"CAACAgIAAxk-sticker-{n}", "file_unique_id": f"AgADs{n}", "type": "regular",
            "width": 512, "height": 512, "is_animated": False, "is_video": False, "emoji": emoji})

    def photo_message(self, user: UserRef, chat: int | dict | None = None, caption: str | None = None) -> dict:
        n = next(self._ids)
        photo = [{"file_id": f"AgACAgIAAxk-photo-{n}-{side}", "file_unique_id": f"AQADp{n}{side}", "width": side,
                  "height": side, "file_size": side * 100} for side in (90, 320, 800)]
        return self._inject_message(chat, user, photo=photo, caption=caption,
                                    caption_entities=text_entities(caption) if caption else None)

    def inline_query(self, user: UserRef, query: str, offset: str = "", chat_type: str = "sender") -> dict:
        query_id = str(next(self._ids))
        self._open_queries.add(query_id)
        return self.inject_update({"inline_query": {"id": query_id, "from": self._user(user), "query": query,
                                                    "offset": offset, "chat_type": chat_type}})

    def chosen_inline_result(self, user: UserRef, result_id: str, query: str,
                             inline_message_id: str | None = None) -> dict:
        """The user picked a result: the message it sent becomes editable by inline_message_id."""
        inline_message_id = inline_message_id or f"AgAAAInline{next(self._ids)}"
        sent = {"text": "", "reply_markup": None}
        for result in (r for answer in reversed(self.inline_answers) for r in answer["results"]):
            if str(result.get("id")) == str(result_id):
                content = result.get("input_message_content") or {}
                sent = {"text": content.get("message_text", ""), "reply_markup": result.get("reply_markup")}
                break
        with self._lock:
            self.inline_messages[inline_message_id] = sent
        return self.inject_update({"chosen_inline_result": {"result_id": str(result_id), "from": self._user(user),
                                                            "query": query, "inline_message_id": inline_message_id}})

    def callback_query(self, user: UserRef, message: MessageRef, data: str) -> dict:
        """A button press on a bot message: a Message dict, (chat_id, message_id), or an inline_message_id."""
        query = {"id": str(next(self._ids)), "from": self._user(user), "data": data}
        self._open_queries.add(query["id"])
        if isinstance(message, str):
            query.update(inline_message_id=message, chat_instance="inline")
        elif (current := self.messages.get(_message_key(message))) is not None:
            query.update(message=current, chat_instance=str(abs(current["chat"]["id"])))
        else:
            raise LookupError(f"no message {_message_key(message)} to press a button on")
        return self.inject_update({"callback_query": query})

    def press_button(self, user: UserRef, message: MessageRef, button_text: str) -> dict:
        """callback_query with the callback_data of the button labelled button_text in the message's markup."""
        if isinstance(message, str):
            stored = self.inline_messages.get(message)
        else:
            stored = self.messages.get(_message_key(message))
        markup = (stored or {}).get("reply_markup") or {}
        for button in (b for row in markup.get("inline_keyboard", []) for b in row):
            if button.get("text") == button_text and "callback_data" in button:
                return self.callback_query(user, message, button["callback_data"])
        raise LookupError(f"no callback button {button_text!r} in {markup}")

    # ---- Bot API methods: _m_<name>(params) -> result, or raise ApiError ---------------------------------
    def _chat(self, chat_id: Any) -> dict:
        if chat_id in self.chats:
            return self.chats[chat_id]
        if not isinstance(chat_id, int):
            raise ApiError(400, "Bad Request: chat not found")
        return self._register_chat(chat_id)  # lenient: any numeric chat the bot names exists

    def _text(self, params: dict, required: bool = True) -> tuple[str, list]:
        text = str(params.get("text") or "")
        if isinstance(params.get("entities"), list):
            entities = params["entities"]
        elif str(params.get("parse_mode") or "").lower() == "html":
            text, entities = parse_html(text)
        else:
            entities = []  # Markdown modes pass through unparsed
        if required and not text.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        if utf16_len(text) > MAX_TEXT:
            raise ApiError(400, "Bad Request: message is too long")
        return text, entities

    def _m_getMe(self, p: dict) -> dict:
        return {**self.bot_user, "can_join_groups": True, "can_read_all_group_messages": False,
                "supports_inline_queries": True, "can_connect_to_business": False, "has_main_web_app": False}

    async def _m_getUpdates(self, p: dict) -> list[dict]:
        offset = int(p.get("offset") or 0)
        with self._lock:
            ids = [u["update_id"] for u in self.pending_updates]
            confirms = any(i < offset for i in ids) if offset >= 0 else len(ids) > -offset
            stall = self._stall if confirms else None
            if stall is not None:
                self.stalled_polls.append(p)
        if stall is not None:
            await stall.wait()
            raise ApiError(502, _DESCRIPTIONS[502])
        if self.webhook_url:
            raise ApiError(409, "Conflict: can't use getUpdates method while webhook is active; "
                                "use deleteWebhook to delete the webhook first")
        limit = min(max(int(p.get("limit") or 100), 1), 100)
        if isinstance(p.get("allowed_updates"), list):
            self.allowed_updates = p["allowed_updates"]  # sticks for later calls, as in Telegram
        with self._lock:
            self._poll_generation += 1
            generation = self._poll_generation
        self._wake()  # a concurrent older long poll ends with 409, like a second bot instance would cause
        deadline = time.monotonic() + max(float(p.get("timeout") or 0), 0)
        while True:
            with self._lock:
                if generation != self._poll_generation:
                    raise ApiError(409, POLL_CONFLICT)
                pending = self.pending_updates  # the offset confirms (drops) every update before it
                pending = pending[offset:] if offset < 0 else [u for u in pending if u["update_id"] >= offset]
                if self.allowed_updates:  # types the bot did not subscribe to are dropped
                    pending = [u for u in pending if set(u) & set(self.allowed_updates)]
                self.pending_updates, event = pending, self._new_updates
            remaining = deadline - time.monotonic()
            if pending or remaining <= 0 or self._closing:
                return pending[:limit]
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    def _m_setWebhook(self, p: dict) -> bool:
        self.webhook_url = str(p.get("url") or "")
        return True

    def _m_deleteWebhook(self, p: dict) -> bool:
        with self._lock:
            self.webhook_url = ""
            if p.get("drop_pending_updates"):
                self.pending_updates = []
        return True

    @staticmethod
    def _commands_key(p: dict) -> str:
        return json.dumps([p.get("scope") or {"type": "default"}, p.get("language_code") or ""], sort_keys=True)

    def _m_setMyCommands(self, p: dict) -> bool:
        self.commands[self._commands_key(p)] = list(p.get("commands") or [])
        return True

    def _m_getMyCommands(self, p: dict) -> list:
        return self.commands.get(self._commands_key(p), [])

    def _m_deleteMyCommands(self, p: dict) -> bool:
        self.commands.pop(self._commands_key(p), None)
        return True

    def _m_getChat(self, p: dict) -> dict:
        gifts = dict.fromkeys(["unlimited_gifts", "limited_gifts", "unique_gifts", "premium_subscription",
                               "gifts_from_channels"], False)  # required ChatFullInfo fields in aiogram 3.2x+
        return {**self._chat(p.get("chat_id")), "accent_color_id": 0, "max_reaction_count": 11,
                "accepted_gift_types": gifts}

    def _m_getChatMember(self, p: dict) -> dict:
        chat, user_id = self._chat(p.get("chat_id")), p.get("user_id")
        if not isinstance(user_id, int) or user_id <= 0:
            raise ApiError(400, "Bad Request: invalid user_id specified")
        with self._lock:
            member = self.chat_members.get((chat["id"], user_id))
        if member is None and chat["type"] == "private" and chat["id"] == user_id:
            member = {"status": "member", "user": self.make_user(user_id)}
        # Telegram answers "left" for a user who is not (or no longer) in the chat.
        return member or {"status": "left", "user": self.make_user(user_id)}

    def _m_sendMessage(self, p: dict) -> dict:
        chat = self._chat(p.get("chat_id"))
        text, entities = self._text(p)
        reply_to = (p.get("reply_parameters") or {}).get("message_id") or p.get("reply_to_message_id")
        topic = p.get("message_thread_id")
        return self._store_message(chat, self.bot_user, reply_to, text=text, entities=entities,
                                   message_thread_id=topic, is_topic_message=True if topic else None,
                                   reply_markup=_inline_markup(p))

    def _edit(self, p: dict, **changes: Any) -> dict | bool:
        inline = bool(p.get("inline_message_id"))
        store = self.inline_messages if inline else self.messages
        key = str(p["inline_message_id"]) if inline else (p.get("chat_id"), p.get("message_id"))
        with self._lock:
            if (old := store.get(key)) is None:
                raise ApiError(400, "Bad Request: message to edit not found")
            if not inline and old.get("from", {}).get("id") != self.bot_user["id"]:
                raise ApiError(400, "Bad Request: message can't be edited")
            new = {k: v for k, v in old.items() if k not in changes}  # an omitted reply_markup removes it
            new.update({k: v for k, v in changes.items() if v not in (None, [])})
            fields = ("text", "entities", "reply_markup")
            if [new.get(f) or None for f in fields] == [old.get(f) or None for f in fields]:
                raise ApiError(400, NOT_MODIFIED)
            if not inline:
                new["edit_date"] = int(time.time())
            store[key] = new  # a fresh dict: messages handed out earlier keep their old content
        return True if inline else new

    def _m_editMessageText(self, p: dict) -> dict | bool:
        text, entities = self._text(p)
        return self._edit(p, text=text, entities=entities, reply_markup=_inline_markup(p))

    def _m_editMessageReplyMarkup(self, p: dict) -> dict | bool:
        return self._edit(p, reply_markup=_inline_markup(p))

    def _m_deleteMessage(self, p: dict) -> bool:
        with self._lock:
            if self.messages.pop((p.get("chat_id"), p.get("message_id")), None) is None:
                raise ApiError(400, "Bad Request: message to delete not found")
        return True

    def _m_sendMessageDraft(self, p: dict) -> bool:
        """Bot API 9.x: stream a partial message; drafts exist in private chats only, draft_id is non-zero."""
        chat_id = p.get("chat_id")
        if not isinstance(chat_id, int) or chat_id <= 0:
            raise ApiError(400, "Bad Request: TEXTDRAFT_PEER_INVALID")
        if not p.get("draft_id"):
            raise ApiError(400, "Bad Request: draft_id must be non-zero")
        text, entities = self._text(p, required=False)
        with self._lock:
            self.drafts.setdefault(chat_id, []).append({"draft_id": p["draft_id"], "text": text, "entities": entities,
                                                        "message_thread_id": p.get("message_thread_id")})
        return True

    def _m_answerInlineQuery(self, p: dict) -> bool:
        query_id, results = str(p.get("inline_query_id")), p.get("results") or []
        if query_id not in self._open_queries:
            raise ApiError(400, QUERY_TOO_OLD)
        if len(results) > 50:
            raise ApiError(400, "Bad Request: RESULTS_TOO_MUCH")
        if len({str(r.get("id")) for r in results}) != len(results):
            raise ApiError(400, "Bad Request: RESULT_ID_DUPLICATE")
        for result in results:
            if not 1 <= len(str(result.get("id", "")).encode()) <= MAX_RESULT_ID_BYTES:
                raise ApiError(400, "Bad Request: RESULT_ID_INVALID")
            content = result.get("input_message_content") or {}
            if "message_text" in content:
                self._text({"text": content["message_text"], "parse_mode": content.get("parse_mode")})
            _check_buttons(result.get("reply_markup"))
        button = p.get("button")
        if isinstance(button, dict) and "start_parameter" in button:
            if not _START_PARAMETER.fullmatch(str(button["start_parameter"])):
                raise ApiError(400, "Bad Request: START_PARAM_INVALID")
        with self._lock:
            self.inline_answers.append({
                "inline_query_id": query_id, "results": results, "cache_time": p.get("cache_time", 300),
                "is_personal": bool(p.get("is_personal")), "next_offset": p.get("next_offset", ""),
                "button": p.get("button")})
        return True

    def _m_answerCallbackQuery(self, p: dict) -> bool:
        if str(p.get("callback_query_id")) not in self._open_queries:
            raise ApiError(400, QUERY_TOO_OLD)
        if len(str(p.get("text") or "")) > MAX_CALLBACK_ANSWER:
            raise ApiError(400, "Bad Request: MESSAGE_TOO_LONG")
        with self._lock:
            self.callback_answers.append({k: p.get(k) for k in ("callback_query_id", "text", "show_alert", "url")})
        return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake Telegram Bot API server for tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", default=DEFAULT_TOKEN)
    parser.add_argument("--username", default="rujokes_test_bot")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)

    async def serve() -> None:
        async with FakeBotAPI(args.token, username=args.username, host=args.host, port=args.port) as api:
            print(f"fake Bot API on {api.base_url} token {api.token}", flush=True)
            await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
