"""Buttons under jokes: 🔁 Ещё (same opening again) and 👍 / 👎 (one vote per user per joke),
plus the "✍️ Написать анекдот" button of an inline placeholder message.

Only data the bot signed for the place of the press matches here (`SignedButton`); forged, copied and
old unsigned buttons fall through to the fallback router, which answers "button expired".
"""
from __future__ import annotations

from aiogram import Router
from aiogram.types import CallbackQuery, Update

from bot.common.metrics import Metrics
from bot.telegram.feedback import FeedbackStore
from bot.telegram.jokes import ChatOrigin, JokeService, topic_of
from bot.telegram.keyboards import JokeAction, SignedButton, WriteInline
from bot.telegram.outstanding import OutstandingRequests
from bot.telegram.texts import Texts
from bot.telegram.user_stats import UserStatsStore

router = Router(name="buttons")

# A vote's outcome -> the name of the text that answers it.
_VOTE_TEXTS = {"new": "VOTE_NEW", "changed": "VOTE_CHANGED", "same": "VOTE_SAME", "unknown": "JOKE_FORGOTTEN"}


@router.callback_query(SignedButton(JokeAction, actions={"more"}))
async def more(callback: CallbackQuery, callback_data: JokeAction, jokes: JokeService,
               feedback: FeedbackStore, event_update: Update, t: Texts) -> None:
    joke = await feedback.joke(callback_data.joke_id)
    if joke is None or not joke.prompt:
        await callback.answer(t.JOKE_FORGOTTEN)
        return
    if callback.inline_message_id is not None:
        refusal = await jokes.more_in_inline_message(callback.inline_message_id, callback.from_user.id, joke.prompt,
                                                     t, update_id=event_update.update_id)
        await callback.answer(refusal or t.MORE_STARTED)
        return
    origin = ChatOrigin(chat_id=callback.message.chat.id, user_id=callback.from_user.id,
                        private=callback.message.chat.type == "private",
                        reply_to_message_id=callback.message.message_id, thread_id=topic_of(callback.message),
                        update_id=event_update.update_id, language=t.language)
    go_ahead, answer = await jokes.admit_more(origin)
    # Answered before the joke starts: the spinner on the button stops at once, the joke follows as a new message.
    await callback.answer(answer)
    if go_ahead:
        await jokes.more_in_chat(origin, joke.prompt)


@router.callback_query(SignedButton(JokeAction, actions={"up", "down"}))
async def vote(callback: CallbackQuery, callback_data: JokeAction, feedback: FeedbackStore, metrics: Metrics,
               user_stats: UserStatsStore, t: Texts) -> None:
    value = 1 if callback_data.action == "up" else -1
    joke = await feedback.joke(callback_data.joke_id)
    outcome = await feedback.vote(callback_data.joke_id, callback.from_user.id, value, joke=joke)
    if outcome in ("new", "changed"):
        metrics.vote(joke.size, callback_data.action)
        await user_stats.count_vote(callback.from_user.id, value, outcome)
    emoji = t.BUTTON_UP if value == 1 else t.BUTTON_DOWN
    await callback.answer(getattr(t, _VOTE_TEXTS[outcome]).format(vote=emoji))


@router.callback_query(SignedButton(WriteInline))
async def write_inline(callback: CallbackQuery, callback_data: WriteInline, jokes: JokeService,
                       outstanding: OutstandingRequests, event_update: Update, t: Texts) -> None:
    # Works even where chosen_inline_result is off (it needs /setinlinefeedback in @BotFather).
    prompt = await outstanding.inline_prompt(callback_data.token)
    if callback.inline_message_id is None or prompt is None:
        await callback.answer(t.JOKE_FORGOTTEN)
        return
    refusal = await jokes.write_in_inline_message(callback.inline_message_id, callback.from_user.id, prompt, t,
                                                  update_id=event_update.update_id)
    await callback.answer(refusal or t.MORE_STARTED)
