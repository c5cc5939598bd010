"""Where a joke that ran into its token limit ends: after its last whole sentence, never mid-word.

A row that samples <eos> ends where the model ended it. A row cut by its limit (`max_new_tokens`: the bot's
MAX_NEW_TOKENS or a chat's short length, `ServingModel.complete`'s, `rujokes joke`'s) would stop mid-sentence,
often mid-word; it ends instead after its last sentence that is past the opening, and where the new text
finished none, at its last whole word with an ellipsis, so that the cut reads as one. The opening is the
user's and is never cut.
"""
from __future__ import annotations

import re

# . ! ? … (repeated, as in "?!" or "..."), then any closing quotes and brackets, then a space or the end:
# "3.14" is no end, "Штирлиц.»" and "Что?!" are.
_SENTENCE_END = re.compile(r"[.!?…]+[»“”\"')\]]*(?=\s|$)")
# What a cut at a word must not leave hanging before its ellipsis.
_DANGLING = " \t\n,;:-–—«„\"'("
ELLIPSIS = "…"
# A joke writes at least this many tokens before it may sample <eos>: after an opening that is a whole sentence
# nano ended at once in 22 of 400 samples, answering with the opening alone (BENCHMARKS.md).
MIN_JOKE_TOKENS = 4


def end_at_sentence(text: str, opening: str) -> str:
    """`text` (the opening, then what the model added to it) cut to end after a sentence.

    The cut is searched for only past `opening` (when `text` starts with it), so an opening that holds
    a sentence end does not shorten the joke to itself.
    """
    start = len(opening) if text.startswith(opening) else 0
    ends = list(_SENTENCE_END.finditer(text, start))
    if ends:
        return text[:ends[-1].end()].strip()
    words = text.rstrip()
    space = max(words.rfind(" ", start), words.rfind("\n", start))
    if space >= start:  # the last word is probably cut: drop it
        words = words[:space]
    return words[:start] + words[start:].rstrip(_DANGLING) + ELLIPSIS  # the opening as typed, to its last character
