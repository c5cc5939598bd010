"""The memorisation metric on hand-made examples: long verbatim runs are found, short or paraphrased ones not."""
from __future__ import annotations

import pytest

from trainer.memorisation import VerbatimIndex, memorisation_report

TRAINING = [
    "Штирлиц шел по лесу и увидел голубые ели. Присмотрелся и понял: не голубые, а просто замерзшие.",
    "Приходит мужик к врачу, а врач ему говорит: раздевайтесь, будем вас слушать.",
]


@pytest.fixture(scope="module")
def index() -> VerbatimIndex:
    return VerbatimIndex(TRAINING, min_words=12)


def test_a_sample_that_copies_a_training_joke_has_its_whole_run_counted(index):
    copied = "Вот: штирлиц ШЕЛ по лесу и увидел голубые ёли, присмотрелся и понял не голубые. Конец."
    # "штирлиц … не голубые" is 13 words of the first joke (case, punctuation and ё folded).
    assert index.longest_run(copied) == 13


def test_runs_shorter_than_the_threshold_do_not_count(index):
    assert index.longest_run("Штирлиц шел по лесу и увидел голубые ели, а потом пошел домой спать.") == 0


def test_a_paraphrase_is_not_a_copy(index):
    assert index.longest_run("Штирлиц брел по лесу и заметил синие ели, пригляделся и понял: замерзли.") == 0


def test_windows_do_not_span_two_training_documents():
    joined = " ".join(TRAINING)
    # The last 6 words of one joke followed by the first 6 of the next were never one training run.
    words_across = " ".join(joined.split()[10:22])
    assert VerbatimIndex(TRAINING, min_words=12).longest_run(words_across) == 0


def test_report_counts_copying_samples_and_the_longest_run(index):
    samples = [TRAINING[1], "Совсем новый анекдот про Вовочку, которого никто не слышал.", TRAINING[0] + " Ещё."]
    report = memorisation_report(index, samples)
    assert (report.samples, report.copying, report.longest_run) == (3, 2, 16)
    assert report.to_dict()["copy_rate"] == pytest.approx(2 / 3, abs=1e-4)
