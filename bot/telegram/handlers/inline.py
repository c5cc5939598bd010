"""Inline mode: `@bot Штирлиц пришел домой` in any chat.

Telegram drops an answer after ~10 s, so variants are generated at high priority and whatever is
ready within INLINE_WAIT_S is offered. If nothing is, one "✍️ Написать анекдот" article is offered
instead: once sent (chosen_inline_result, or its button) the joke is written into that message.
"""
from __future__ import annotations

import logging
import re
import uuid

from aiogram import F, Router
from aiogram.exceptions import TelegramAPIError
from aiogram.types import (
    ChosenInlineResult,
    InlineQuery,
    InlineQueryResultArticle,
    InlineQueryResultsButton,
    InputTextMessageContent,
    Update,
)

from bot.queue.submit import QueueFull
from bot.telegram.jokes import JokeService
from bot.telegram.keyboards import joke_keyboard, write_keyboard
from bot.telegram.outbox import fit_message
from bot.telegram.outstanding import OutstandingRequests
from bot.telegram.signing import INLINE_SCOPE, Signer
from bot.telegram.texts import Texts

log = logging.getLogger(__name__)
router = Router(name="inline")

# Short and per user: every answer is freshly generated, and the same text should give new jokes.
CACHE_TIME_S = 5
PENDING_PREFIX = "p:"
_TOKEN = re.compile(r"[0-9a-f]{16}")


# Of a long opening a variant's preview shows only its end: every variant starts with the same opening, and a
# client shows two lines or so of a description, which must show what tells the variants apart.
PREVIEW_OPENING_CHARS = 24
PREVIEW_CHARS = 120


def variant_preview(text: str, opening: str) -> str:
    """A ready variant's description: its text, with an opening longer than PREVIEW_OPENING_CHARS cut to "…"
    and its last words."""
    if len(opening) > PREVIEW_OPENING_CHARS and text.startswith(opening):
        end = opening[-PREVIEW_OPENING_CHARS:]
        end = end[end.find(" ") + 1:] if " " in end else end  # from a whole word on
        text = "…" + end + text[len(opening):]
    return fit_message(text, PREVIEW_CHARS)


async def answer_hint(query: InlineQuery, hint: str) -> None:
    # A button instead of a result: nothing gets sent to the chat by mistake.
    await query.answer([], cache_time=CACHE_TIME_S, is_personal=True,
                       button=InlineQueryResultsButton(text=hint[:64], start_parameter="inline_help"))


@router.inline_query()
async def inline_query(query: InlineQuery, jokes: JokeService, outstanding: OutstandingRequests, signer: Signer,
                       event_update: Update, t: Texts) -> None:
    if not query.query.strip():
        await answer_hint(query, t.INLINE_HINT)
        return
    prompt, hint = await jokes.inline_prompt_or_hint(query.from_user.id, query.query, t)
    if hint is not None:
        await answer_hint(query, hint)
        return
    try:
        ready = await jokes.inline_variants(query.id, query.from_user.id, prompt, update_id=event_update.update_id)
    except QueueFull:
        await answer_hint(query, t.INLINE_BUSY)
        return
    results = [
        InlineQueryResultArticle(
            id=result.request_id, title=t.INLINE_VARIANT_TITLE.format(number=number),
            description=variant_preview(result.text, prompt),
            input_message_content=InputTextMessageContent(message_text=fit_message(result.text)),
            reply_markup=joke_keyboard(result.request_id, signer, INLINE_SCOPE, t),
        )
        for number, result in enumerate(ready, start=1)
    ]
    if not results:
        token = uuid.uuid4().hex[:16]
        await outstanding.remember_inline_prompt(token, prompt)
        results.append(InlineQueryResultArticle(
            id=signer.sign(PENDING_PREFIX + token, INLINE_SCOPE), title=t.INLINE_PENDING_TITLE,
            description=fit_message(t.INLINE_PENDING_DESCRIPTION.format(prompt=prompt), PREVIEW_CHARS),
            input_message_content=InputTextMessageContent(message_text=t.PLACEHOLDER),
            reply_markup=write_keyboard(token, signer, t),
        ))
    try:
        await query.answer(results, cache_time=CACHE_TIME_S, is_personal=True)
    except TelegramAPIError as error:  # too late (query too old): the user has moved on
        log.warning("inline answer for %s not accepted: %s", query.id, error)


def _pending_token(result_id: str, signer: Signer) -> str | None:
    """The prompt token of a ✍️ article's id the bot signed, else None."""
    body = signer.verified(result_id, INLINE_SCOPE)
    token = body.removeprefix(PENDING_PREFIX) if body is not None and body.startswith(PENDING_PREFIX) else None
    return token if token is not None and _TOKEN.fullmatch(token) else None


@router.chosen_inline_result(F.result_id.startswith(PENDING_PREFIX))
async def chosen_pending(chosen: ChosenInlineResult, jokes: JokeService, outstanding: OutstandingRequests,
                         signer: Signer, event_update: Update, t: Texts) -> None:
    """Needs inline feedback on (@BotFather → /setinlinefeedback); the article's button covers it otherwise."""
    token = _pending_token(chosen.result_id, signer)
    prompt = await outstanding.inline_prompt(token) if token is not None else None
    if chosen.inline_message_id is None or prompt is None:
        return
    # Refused (rate limit), the message says so and keeps its ✍️ button for a later try.
    await jokes.write_in_inline_message(chosen.inline_message_id, chosen.from_user.id, prompt, t,
                                        retry_markup=write_keyboard(token, signer, t), update_id=event_update.update_id)
