"""Does a generated joke copy a training joke? Long verbatim word runs shared with the training corpus.

A sample "copies" when it shares a run of at least `min_words` consecutive words (case- and ё-folded)
with one training document. Every `min_words`-word window of every training document goes into a set
of hashes; a sample's run is found by sliding the same window over it, and consecutive hits extend it.
Runs that join windows from two different documents are counted as one: an upper bound, which is the
safe side for a check like this.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

DEFAULT_MIN_WORDS = 12
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return [w.lower().replace("ё", "е") for w in _WORD.findall(text)]


class VerbatimIndex:
    """Hashes of every `min_words`-word window of the training documents."""

    def __init__(self, documents: Iterable[str], min_words: int = DEFAULT_MIN_WORDS) -> None:
        if min_words < 1:
            raise ValueError("min_words must be positive")
        self.min_words = min_words
        self._windows: set[int] = set()
        for document in documents:
            tokens = words(document)
            for start in range(len(tokens) - min_words + 1):
                self._windows.add(hash(tuple(tokens[start:start + min_words])))

    def __len__(self) -> int:
        return len(self._windows)

    def longest_run(self, text: str) -> int:
        """Words in the longest run of `text` found verbatim in the corpus (0 when none reaches min_words)."""
        tokens, n = words(text), self.min_words
        longest = streak = 0
        for start in range(len(tokens) - n + 1):
            streak = streak + 1 if hash(tuple(tokens[start:start + n])) in self._windows else 0
            longest = max(longest, streak)
        return longest + n - 1 if longest else 0


@dataclass
class MemorisationReport:
    samples: int
    copying: int            # samples with a verbatim run of ≥ min_words words
    longest_run: int        # words, over all samples
    min_words: int

    @property
    def copy_rate(self) -> float:
        return self.copying / self.samples if self.samples else 0.0

    def to_dict(self) -> dict:
        return {"samples": self.samples, "copying": self.copying, "copy_rate": round(self.copy_rate, 4),
                "longest_run_words": self.longest_run, "min_words": self.min_words}


def memorisation_report(index: VerbatimIndex, samples: list[str]) -> MemorisationReport:
    runs = [index.longest_run(sample) for sample in samples]
    return MemorisationReport(len(samples), sum(run > 0 for run in runs), max(runs, default=0), index.min_words)


def sample_texts(model, tokenizer, prompts: list[str], count: int, *, max_new_tokens: int = 120, top_k: int = 10,
                 temperature: float = 1.0, seed: int = 0) -> list[str]:
    """`count` samples spread evenly over the prompts, with the bot's sampling settings (top-k 10,
    temperature 1); the copies of one prompt are decoded together as one batch."""
    import math

    import torch

    generator = torch.Generator(device=model.device).manual_seed(seed)
    per_prompt = math.ceil(count / len(prompts))
    texts = []
    for prompt in prompts:
        ids = torch.tensor([tokenizer.encode(prompt)] * per_prompt, device=model.device)
        out = model.generate(ids, max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id, do_sample=True, top_k=top_k,
                             temperature=temperature, generator=generator)
        texts += [tokenizer.decode([t for t in row.tolist() if t != tokenizer.pad_token_id]) for row in out]
    return texts[:count]
