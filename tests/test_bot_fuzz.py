"""Fuzzing the real bot: hypothesis generates Telegram updates, the fake Bot API delivers them to the running
`rujokes-bot` (the session's e2e stack, with its worker), and every example checks what the bot did.

Updates: any Unicode (RTL and bidi controls, zero-width characters, emoji sequences, combining marks, lone
surrogates), entities with offsets outside the text, optional fields left out, captions, stickers, photos,
forwarded messages, replies, edited messages, channel posts, 4096-character texts, callback data of any
bytes (and near-forgeries of the bot's own), inline queries of any length, chosen inline results.

Properties, per example:
  * the bot process never dies, and its log gains no traceback (a handler that raised, a log line lost);
  * every /joke (and every plain text in a private chat) gets a joke or a refusal in Russian, every other
    private message a hint in Russian (commands for other bots aside); every callback query and every
    inline query gets its answer;
  * nothing the bot sends exceeds Telegram's limits (the fake refuses what Telegram would: text over 4096
    UTF-16 units, callback data over 64 bytes, result ids over 64 bytes, callback answers over 200
    characters) or holds U+FFFD, and nothing is sent with a parse_mode or entities (no markup injection).

Examples: RUJOKES_FUZZ_EXAMPLES (default 40, about 30 s on a loaded 2-core machine); a larger run by hand
is recorded in BENCHMARKS.md ("Fuzzing"). RUJOKES_FUZZ_SHRINK=1 lets hypothesis shrink a failure (slow:
every step is a real round trip).
"""
from __future__ import annotations

import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from bot.telegram import texts as catalogue
from bot.telegram.texts import EN, language_for
from bot.telegram.texts import RU as texts
from tests.e2e_stack import BOT_USERNAME, Stack, button_texts, wait_until

EXAMPLES = int(os.environ.get("RUJOKES_FUZZ_EXAMPLES", "40"))
PHASES = [Phase.explicit, Phase.reuse, Phase.generate] + ([Phase.shrink] if os.environ.get("RUJOKES_FUZZ_SHRINK")
                                                          else [])
STATS: Counter[str] = Counter()  # what was generated, and what came back: printed at the end (BENCHMARKS.md)
OUTCOMES: Counter[str] = Counter()

# -- text ---------------------------------------------------------------------------------------------------

NASTY = [
    "\u202e", "\u202d", "\u202c", "\u2066", "\u2067", "\u2069", "\u200e", "\u200f", "\u061c",  # bidi controls
    "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad",  # zero-width and invisible
    "\u0301", "\u0489", "\u20dd", "\u0338", "\u1ab0",  # combining marks
    "👨‍👩‍👧‍👦", "🏳️‍🌈", "👍🏽", "🧑‍🚀", "🇷🇺", "1️⃣", "😀", "𝕊𝕥𝕚𝕣𝕝𝕚𝕥𝕫", "\U0010ffff",  # astral / sequences
    "\ud83d", "\ude00", "\udbff",  # lone surrogates (JSON can carry them)
    "\x00", "\x07", "\x1b[31m", "\r\n", "\t", "\u2028", "\u0085", "\x1c",  # controls and odd line breaks
    "<b>", "</i>", "<a href=\"javascript:x\">", "&amp;", "&#0;", "<tg-spoiler>", "*_`[", "\ufffd",  # markup
    "Штирлиц", "ё", "مرحبا", "שלום", "漢字", "ก๊", "ᄀᄀᄀ각",  # scripts
]
_pieces = st.one_of(st.sampled_from(NASTY), st.text(max_size=6),
                    st.characters(codec=None, categories=["Cs", "Co", "Cn", "Cf", "Mn", "Me", "Zl", "Zp"]))
text = st.one_of(
    st.lists(_pieces, max_size=25).map("".join),
    st.text(max_size=60),
    st.tuples(st.sampled_from(NASTY + ["ж", "я", "a"]), st.integers(1, 4096)).map(lambda p: (p[0] * p[1])[:4096]),
    st.just("ж" * 4096), st.just("😂" * 2048), st.just("e\u0301" * 2048),
)
short_text = st.lists(_pieces, max_size=4).map("".join)

# -- Telegram objects ---------------------------------------------------------------------------------------

@st.composite
def users(draw: st.DrawFn, user_id: int) -> dict:
    user = {"id": user_id, "is_bot": False, "first_name": draw(short_text) or "U"}
    for key, value in (("last_name", short_text), ("username", st.from_regex(r"[a-z]\w{4,20}", fullmatch=True)),
                       ("language_code", st.sampled_from(["ru", "en", "ar", "he", "zz"])),
                       ("is_premium", st.just(True))):
        if draw(st.booleans()):
            user[key] = draw(value)
    return user


def entities(length_hint: int) -> st.SearchStrategy[list[dict]]:
    kinds = ["bot_command", "mention", "bold", "url", "text_link", "custom_emoji", "pre", "spoiler", "hashtag",
             "blockquote", "no_such_type"]
    entity = st.fixed_dictionaries(
        {"type": st.sampled_from(kinds), "offset": st.integers(-5, length_hint + 50),
         "length": st.integers(-2, length_hint + 50)},
        optional={"url": st.text(max_size=20), "language": short_text, "custom_emoji_id": st.text(max_size=8)})
    return st.lists(entity, max_size=6)


# The users Telegram puts in `from` of messages sent as a group (its anonymous admins) or as a channel.
ANONYMOUS_ADMIN = {"id": 1087968824, "is_bot": True, "first_name": "Group", "username": "GroupAnonymousBot"}
CHANNEL_POSTER = {"id": 136817688, "is_bot": True, "first_name": "Channel", "username": "Channel_Bot"}


@dataclass
class Example:
    """The updates of one example and what each should get back."""

    updates: list[dict] = field(default_factory=list)
    replies_in: list[int] = field(default_factory=list)        # chats that must get a finished reply
    not_text_in: list[int] = field(default_factory=list)       # private chats that must get the NOT_TEXT hint
    russian_in: list[int] = field(default_factory=list)        # private chats: some reply in the sender's language
    callbacks: list[str] = field(default_factory=list)         # callback query ids that must be answered
    inline_queries: list[str] = field(default_factory=list)    # inline query ids that must be answered
    languages: dict[int | str, str] = field(default_factory=dict)  # chat or callback id -> the sender's language
    stats: list[str] = field(default_factory=list)             # what kinds of update these are


@st.composite
def message_update(draw: st.DrawFn, stack: Stack, example: Example) -> None:
    private = draw(st.booleans())
    user_id = stack.new_user()
    chat_id = user_id if private else stack.new_group()
    if private:
        chat = {"id": chat_id, "type": "private", "first_name": "U"}
    else:
        chat = {"id": chat_id, "type": draw(st.sampled_from(["group", "supergroup"])), "title": draw(short_text) or "G"}
        if draw(st.booleans()):
            chat["is_forum"] = True
    kind = draw(st.sampled_from(["joke", "joke_mention", "joke_other_bot", "plain", "caption_joke", "photo",
                                 "sticker", "command", "reply_joke"]))
    args = draw(text) or "ж"  # Telegram delivers no message with an empty text or caption
    message: dict[str, Any] = {"message_id": draw(st.integers(1, 2**31 - 1)), "date": int(time.time()), "chat": chat}
    anonymous = not private and draw(st.integers(0, 4)) == 0
    if anonymous:  # an anonymous admin (as the group) or someone posting as their channel, as Telegram sends them
        as_group = draw(st.booleans())
        message["sender_chat"] = dict(chat) if as_group else {"id": stack.new_group(), "type": "channel", "title": "C"}
        if draw(st.integers(0, 3)):  # Telegram's stand-in users; rarely none at all
            message["from"] = ANONYMOUS_ADMIN if as_group else CHANNEL_POSTER
    else:
        message["from"] = draw(users(user_id))
    body = {"joke": f"/joke {args}", "joke_mention": f"/joke@{BOT_USERNAME} {args}", "reply_joke": "/joke",
            "joke_other_bot": f"/joke@other_bot {args}", "plain": args,
            "command": draw(st.sampled_from(["/start", "/help", "/model", "/stats", "/x", "/"])) + " " + args}
    if kind in ("caption_joke", "photo"):
        message["photo"] = [{"file_id": "AgAC-p", "file_unique_id": "AQAD", "width": 90, "height": 90}]
        message["caption"] = f"/joke {args}" if kind == "caption_joke" else args
        if draw(st.booleans()):
            message["caption_entities"] = draw(entities(len(message["caption"])))
    elif kind == "sticker":
        message["sticker"] = {"file_id": "CAAC-s", "file_unique_id": "AgAD", "type": "regular", "width": 512,
                              "height": 512, "is_animated": False, "is_video": False, "emoji": draw(short_text)}
    else:
        message["text"] = body[kind]
        if draw(st.booleans()):
            message["entities"] = draw(entities(len(message["text"])))
    if kind == "reply_joke" or draw(st.integers(0, 3)) == 0:
        replied = {"message_id": 1, "date": 0, "chat": chat}
        replied.update(draw(st.sampled_from([{"text": args}, {"caption": args}, {}])))
        message["reply_to_message"] = replied
    if draw(st.integers(0, 3)) == 0:
        message["forward_origin"] = draw(st.sampled_from([
            {"type": "user", "date": 0, "sender_user": {"id": 1, "is_bot": False, "first_name": "F"}},
            {"type": "hidden_user", "date": 0, "sender_user_name": args[:64] or "H"},
            {"type": "channel", "date": 0, "chat": {"id": -1001, "type": "channel", "title": "C"}, "message_id": 5}]))
    update_kind = draw(st.sampled_from(["message"] * 6 + ["edited_message"]))
    if update_kind == "edited_message":
        message["edit_date"] = int(time.time())
    example.updates.append({update_kind: message})
    example.stats.append(f"{update_kind}:{kind}:{chat['type']}")
    example.languages[chat_id] = language_for(message.get("from", {}).get("language_code"))
    if update_kind != "message":
        return  # the bot does not subscribe to edits: Telegram never delivers them
    if kind in ("joke", "joke_mention", "caption_joke", "reply_joke") or (private and kind == "plain"
                                                                          and not args.lstrip().startswith("/")):
        example.replies_in.append(chat_id)
    elif private and kind == "sticker" or private and kind == "photo" and not args.lstrip().startswith("/"):
        example.not_text_in.append(chat_id)
    elif private and kind == "command":  # /start, /help, an admin command refused, an unknown command's hint
        example.russian_in.append(chat_id)


@st.composite
def callback_update(draw: st.DrawFn, stack: Stack, example: Example) -> None:
    user_id = stack.new_user()
    hexid = draw(st.from_regex(r"[0-9a-f]{32}", fullmatch=True))
    data = draw(st.one_of(
        st.binary(min_size=1, max_size=64).map(lambda raw: raw.decode("utf-8", "surrogateescape")),
        st.text(min_size=1, max_size=64),
        st.sampled_from(["j:more:", "j:up:", "j:down:", "w:"]).map(lambda p: p + hexid),
        st.tuples(st.sampled_from(["j:more:", "j:up:", "w:"]), st.text(max_size=20)).map(
            lambda p: f"{p[0]}{hexid}:{p[1]}"),
        st.just(f"j:more:{hexid}:" + "A" * 16)))
    query: dict[str, Any] = {"id": f"fuzz-cb-{user_id}", "from": draw(users(user_id)), "data": data,
                             "chat_instance": str(draw(st.integers()))}
    where = draw(st.sampled_from(["message", "inaccessible", "inline", "nowhere"]))
    chat = {"id": user_id, "type": "private", "first_name": "U"}
    if where == "message":
        query["message"] = {"message_id": draw(st.integers(1, 1000)), "date": int(time.time()), "chat": chat,
                            "from": stack.api.bot_user, "text": draw(text) or "x"}
    elif where == "inaccessible":
        query["message"] = {"message_id": draw(st.integers(1, 1000)), "date": 0, "chat": chat}
    elif where == "inline":
        query["inline_message_id"] = draw(st.text(min_size=1, max_size=80))
    example.updates.append({"callback_query": query})
    example.callbacks.append(query["id"])
    example.languages[query["id"]] = language_for(query["from"].get("language_code"))
    example.stats.append(f"callback_query:{where}")


def known_buttons(stack: Stack) -> list[tuple[dict | str, str]]:
    """(where it is: a bot message or an inline message id, callback data) of every button the bot has sent."""
    with stack.api._lock:
        found = [(message, button["callback_data"]) for message in stack.api.messages.values()
                 for row in (message.get("reply_markup") or {}).get("inline_keyboard", []) for button in row]
        results = [result for answer in stack.api.inline_answers for result in answer["results"]]
    found += [(f"fuzz-inline-{n}", button["callback_data"]) for n, result in enumerate(results)
              for row in (result.get("reply_markup") or {}).get("inline_keyboard", []) for button in row]
    return found


@st.composite
def replayed_button(draw: st.DrawFn, stack: Stack, example: Example) -> None:
    """A button the bot really sent, pressed where it is (by anyone), elsewhere, or a character off.

    Every choice is drawn before the stack is looked at, and the same choices in every case: which buttons
    exist depends on earlier examples, and hypothesis must see the same draws when it replays this one.
    """
    user_id = stack.new_user()
    pick, how = draw(st.integers(0, 10**6)), draw(st.sampled_from(["as sent", "elsewhere", "altered"]))
    position, character = draw(st.integers(0, 10**6)), draw(st.sampled_from("0aA_-:ж"))
    user, made_up = draw(users(user_id)), draw(st.text(min_size=1, max_size=64))
    buttons = known_buttons(stack) or [(f"fuzz-gone-{user_id}", made_up)]  # none sent yet: an unknown one
    where, data = buttons[pick % len(buttons)]
    if how == "altered":
        position %= len(data)
        data = data[:position] + character + data[position + 1:]
    query: dict[str, Any] = {"id": f"fuzz-cb-{user_id}", "from": user, "data": data, "chat_instance": "1"}
    if how == "elsewhere":
        where = {"message_id": 1, "date": int(time.time()), "chat": {"id": user_id, "type": "private",
                                                                         "first_name": "U"}} \
            if isinstance(where, str) else f"fuzz-elsewhere-{user_id}"
    if isinstance(where, str):
        with stack.api._lock:  # the inline message exists, as it would for a real press
            stack.api.inline_messages.setdefault(where, {"text": "анекдот", "reply_markup": None})
        query["inline_message_id"] = where
    else:
        query["message"] = where
    example.updates.append({"callback_query": query})
    example.callbacks.append(query["id"])
    example.languages[query["id"]] = language_for(query["from"].get("language_code"))
    example.stats.append(f"callback_query:replayed {how}")


@st.composite
def inline_updates(draw: st.DrawFn, stack: Stack, example: Example) -> None:
    user_id = stack.new_user()
    if draw(st.integers(0, 3)) == 0:
        chosen = {"result_id": draw(st.one_of(st.text(max_size=64), st.just("p:0123456789abcdef"))),
                  "from": draw(users(user_id)), "query": draw(text)[:256]}
        if draw(st.booleans()):
            chosen["inline_message_id"] = draw(st.text(min_size=1, max_size=80))
        example.updates.append({"chosen_inline_result": chosen})
        example.stats.append("chosen_inline_result")
        return
    query = {"id": f"fuzz-iq-{user_id}", "from": draw(users(user_id)), "query": draw(text),
             "offset": draw(st.text(max_size=10))}
    if draw(st.booleans()):
        query["chat_type"] = draw(st.sampled_from(["sender", "private", "group", "supergroup", "channel"]))
    example.updates.append({"inline_query": query})
    example.inline_queries.append(query["id"])
    example.stats.append("inline_query")


@st.composite
def channel_post(draw: st.DrawFn, stack: Stack, example: Example) -> None:
    chat = {"id": stack.new_group(), "type": "channel", "title": draw(short_text) or "C"}
    kind = draw(st.sampled_from(["channel_post", "edited_channel_post"]))
    example.updates.append({kind: {"message_id": 1, "date": int(time.time()), "chat": chat, "sender_chat": chat,
                                   "text": "/joke " + draw(text)}})
    example.stats.append(kind)


@st.composite
def examples(draw: st.DrawFn, stack: Stack) -> Example:
    example = Example()
    makers = [message_update] * 5 + [callback_update, replayed_button] + [inline_updates] * 2 + [channel_post]
    for maker in draw(st.lists(st.sampled_from(makers), min_size=1, max_size=3)):
        draw(maker(stack, example))
    return example


# -- properties ---------------------------------------------------------------------------------------------

def _template(text: str) -> re.Pattern:
    return re.compile(re.sub(r"\\{\w+\\}", r".+", re.escape(text)), re.S)


REFUSAL_KEYS = ("PROMPT_TOO_LONG", "RATE_LIMITED", "WORKERS_DOWN", "BUSY", "TIMEOUT", "FAILED", "UNKNOWN_SIZE", "EMPTY_JOKE")
REFUSALS = {t.language: [_template(form) for key in REFUSAL_KEYS for form in t.forms(key)] for t in (texts, EN)}
RATE_LIMITED = {t.language: _template(t.RATE_LIMITED) for t in (texts, EN)}
# Every text of a language: what any answer in that language must be (jokes aside).
TEMPLATES = {t.language: [_template(form) for key in t.keys() for form in t.forms(key)] for t in (texts, EN)}
# Errors a correct bot meets in the normal course of things (every other 4xx is a bug in what it sent).
BENIGN_ERRORS = ("message is not modified", "query is too old", "message to edit not found", "injected failure")
SENT_TEXT_KEYS = ("text", "message_text", "description", "title", "caption")


def _strings(value: Any) -> list[tuple[str, str]]:
    """Every (key, string) in a call's params, nested ones included."""
    if isinstance(value, dict):
        return [pair for key, item in value.items() for pair in
                ([(key, item)] if isinstance(item, str) else _strings(item))]
    if isinstance(value, list):
        return [pair for item in value for pair in _strings(item)]
    return []


def check_calls(calls: list) -> None:
    for call in calls:
        assert call.error is None or any(b in call.error[1] for b in BENIGN_ERRORS), (call.method, call.error)
        assert not call.params.get("parse_mode") and not call.params.get("entities"), call
        for key, value in _strings(call.params):
            if key in SENT_TEXT_KEYS or key == "callback_data":
                assert "\ufffd" not in value, (call.method, key, value[:200])
                assert not re.search(r"[\ud800-\udfff]", value), (call.method, key)


def joke_or_refusal_in(message: dict, language: str) -> bool:
    t = catalogue.get(language)
    return (button_texts(message) == [t.BUTTON_MORE, t.BUTTON_UP, t.BUTTON_DOWN]
            or any(p.fullmatch(message.get("text", "")) for p in REFUSALS[language]))


def in_language(text: str, language: str) -> bool:
    return any(p.fullmatch(text) for p in TEMPLATES[language])


def replies(stack: Stack, chat: int) -> list[dict]:
    """The finished bot messages in a chat, without the one-time "the jokes are Russian" notice."""
    return [m for m in stack.finished_messages(chat) if m.get("text") != EN.JOKES_ARE_RUSSIAN]


@pytest.fixture(scope="module")
def fuzz_stack(stack):
    yield stack
    by_type = Counter({name.split(":")[0]: 0 for name in STATS})
    for name, count in STATS.items():
        by_type[name.split(":")[0]] += count
    answers = {name: count for name, count in OUTCOMES.items() if name != "examples"}
    print(f"\nfuzz: {OUTCOMES['examples']} examples, {sum(STATS.values())} updates: "
          + ", ".join(f"{name} {count}" for name, count in sorted(by_type.items()))
          + "\nby kind: " + ", ".join(f"{name} {count}" for name, count in sorted(STATS.items()))
          + "\nanswers: " + ", ".join(f"{name} {count}" for name, count in sorted(answers.items())))


@settings(max_examples=EXAMPLES, deadline=None, phases=PHASES, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
                                 HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_generated_updates_never_break_the_bot(fuzz_stack, data):
    stack = fuzz_stack
    example = data.draw(examples(stack))
    STATS.update(example.stats)  # only now: a draw hypothesis gave up on midway was never sent
    OUTCOMES["examples"] += 1
    mark, log_offset = stack.api.mark(), stack.bot_log.stat().st_size
    with stack.api.together():
        for update in example.updates:
            stack.api.inject_update(update)

    def answered() -> bool:
        callbacks = {str(a["callback_query_id"]) for a in stack.api.callback_answers}
        inline = {str(a["inline_query_id"]) for a in stack.api.inline_answers}
        return (all(replies(stack, chat) for chat in example.replies_in + example.not_text_in + example.russian_in)
                and set(example.callbacks) <= callbacks and set(example.inline_queries) <= inline)

    wait_until(lambda: answered() or stack.bot.poll() is not None, 60,
               f"answers to {example}; bot log:\n{stack.log_tail(stack.bot_log)}")
    assert stack.bot.poll() is None, stack.log_tail(stack.bot_log)
    for chat in example.replies_in:
        language, found = example.languages[chat], replies(stack, chat)
        assert len(found) == 1 and joke_or_refusal_in(found[0], language), (chat, language, [(m.get("text"), button_texts(m)) for m in found])
        OUTCOMES["joke" if found[0].get("reply_markup") else "refusal"] += 1
        # Every sender here asks for the first time: a rate limit would mean it shares a bucket with others.
        assert not RATE_LIMITED[language].fullmatch(found[0]["text"]), (chat, found)
    for chat in example.not_text_in:
        assert [m["text"] for m in replies(stack, chat)] == [catalogue.get(example.languages[chat]).NOT_TEXT]
    for chat in example.russian_in:  # /start, /help, a refused admin command, a hint: in the sender's language
        (reply,) = replies(stack, chat)
        assert in_language(reply["text"], example.languages[chat]), (example.languages[chat], reply)
    for answer in stack.api.callback_answers:
        if str(answer["callback_query_id"]) in example.callbacks:
            language = example.languages[str(answer["callback_query_id"])]
            assert in_language(answer["text"] or "", language), (language, answer)
            OUTCOMES["button expired" if answer["text"] == catalogue.get(language).BUTTON_EXPIRED
                     else "button taken"] += 1
    for answer in stack.api.inline_answers:
        if str(answer["inline_query_id"]) in example.inline_queries:
            OUTCOMES["inline variants" if answer["results"] else "inline hint"] += 1
    check_calls(stack.api.calls()[mark:])
    with open(stack.bot_log, "rb") as log:
        log.seek(log_offset)
        added = log.read().decode(errors="replace")
    assert "Traceback" not in added and "Logging error" not in added, added[-4000:]
