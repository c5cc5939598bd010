"""Turn what a user typed into a prompt the model may see, and pick classic openings for empty ones."""
from __future__ import annotations

import random
import re
import unicodedata

# Classic openings for `/joke` with no text: the model knows how these continue.
CLASSIC_OPENINGS = (
    "Штирлиц",
    "Штирлиц пришел домой",
    "Штирлиц шел по лесу",
    "Вовочка",
    "Вовочка приходит в школу",
    "Приходит мужик к врачу",
    "Приходит мужик в магазин",
    "Встречаются как-то русский, немец и француз",
    "Поручик Ржевский",
    "Армянское радио спрашивают",
    "Идет медведь по лесу",
    "Сидят два программиста",
)

# Unicode categories removed outright: controls (Cc), formatting incl. bidi overrides and
# zero-width characters (Cf), surrogates (Cs), private use (Co) and unassigned (Cn).
_DROPPED_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn"}
# Keep ZWJ: it glues emoji sequences (👨‍👩‍👧) that would otherwise fall apart.
_KEPT_FORMAT = {"\u200d"}
# U+FFFD marks a character broken before it reached us (typed, pasted, or a model's stray bytes): it
# means nothing in a joke, and replies never contain one, so it is dropped in and out.
_REPLACEMENT = "\ufffd"
_WHITESPACE = re.compile(r"\s+")


class PromptTooLong(ValueError):
    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"prompt of {length} characters exceeds {limit}")
        self.length = length
        self.limit = limit


def clean_prompt(text: str | None, max_chars: int, *, truncate: bool = False) -> str:
    """Strip control/bidi/invisible characters and U+FFFD, collapse whitespace; "" means "no prompt".

    Raises PromptTooLong when what is left is longer than max_chars: cutting what a user typed
    silently would surprise them more than a clear message does. truncate=True keeps the last
    max_chars instead (for text the user did not write for us, e.g. a message they replied to).
    """
    if not text:
        return ""
    kept = "".join(
        " " if char in "\n\r\t" else char
        for char in unicodedata.normalize("NFC", text)
        if char in "\n\r\t" or char in _KEPT_FORMAT or _shown(char)
    )
    cleaned = _WHITESPACE.sub(" ", kept).strip()
    if not cleaned.replace("\u200d", "").strip():
        return ""  # nothing visible left
    if len(cleaned) > max_chars:
        if not truncate:
            raise PromptTooLong(len(cleaned), max_chars)
        # The end of a long text leads into the joke's continuation better than its start.
        cleaned = cleaned[-max_chars:].lstrip()
    return cleaned


def _shown(char: str) -> bool:
    return char != _REPLACEMENT and unicodedata.category(char) not in _DROPPED_CATEGORIES


def random_opening(rng: random.Random | None = None) -> str:
    return (rng or random).choice(CLASSIC_OPENINGS)


def clean_model_text(text: str) -> str:
    """Model output made safe to display: no control, bidi or invisible characters, no U+FFFD; newlines kept.

    A random or half-trained model can emit any byte sequence, e.g. a bidi override that would
    flip the rest of the chat line, or a backspace.
    """
    kept = "".join(char for char in text if char == "\n" or char in _KEPT_FORMAT or _shown(char))
    return re.sub(r"[ \t]*\n[ \t\n]*\n", "\n\n", kept).strip()
