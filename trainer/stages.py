"""Two stages in one call: pretrain on a general Russian corpus, then fine-tune on the jokes.

The jokes corpus alone (≈ 6 M characters) is too small to teach a model Russian; literature is not
jokes. The first stage learns the language from the general corpus, the second continues from its
weights (`TrainConfig.init_from`) on the jokes, so the second is exactly `rujokes-train --init-from`.
The budget (steps, CPU seconds or a wall-clock cap) is shared between the stages by `pretrain_share`;
a budget in epochs gives the first stage `pretrain_epochs` over its own corpus instead.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from rujokes_model import ByteLevelBPETokenizer

from .data import DEFAULT_CORPUS, prepare_corpus
from .recipes import TrainConfig
from .train import STAGES_FILE, TrainResult, train

DEFAULT_PRETRAIN_CORPUS = str(Path(DEFAULT_CORPUS).with_name("russian_literature.jsonl"))
PRETRAIN_DIR = "pretrain"
TOKENIZER_CORPORA = ("both", "jokes")
# The general corpus's validation split is large (book chunks of up to 8,000 characters): a few batches
# of it tell the first stage's best weights apart at a fraction of the cost.
PRETRAIN_EVAL_BATCHES = 2


def stage_configs(config: TrainConfig, pretrain_dir: Path, *, pretrain_share: float,
                  pretrain_epochs: float) -> tuple[TrainConfig, TrainConfig]:
    """The first (general corpus) and second (jokes, from the first's weights) stage of `config`'s budget."""
    if not 0.0 < pretrain_share < 1.0:
        raise ValueError(f"pretrain_share must be in (0, 1), got {pretrain_share}")
    if config.init_from:
        raise ValueError("a two-stage run trains its own first stage; init_from is for the second stage alone")
    first = replace(config, model_overrides=dict(config.model_overrides), stage_name="pretrain", ema_decay=None,
                    card_memorisation_samples=0,  # literature samples copying literature says nothing
                    eval_batches=min(config.eval_batches or PRETRAIN_EVAL_BATCHES, PRETRAIN_EVAL_BATCHES))
    second = replace(config, model_overrides=dict(config.model_overrides), stage_name="jokes",
                     init_from=str(pretrain_dir))
    if config.steps:
        first.steps = max(1, round(config.steps * pretrain_share))
        second.steps = max(1, config.steps - first.steps)
    elif not config.cpu_budget_s:
        first.epochs = pretrain_epochs
    if config.cpu_budget_s:
        first.cpu_budget_s = config.cpu_budget_s * pretrain_share
        second.cpu_budget_s = config.cpu_budget_s - first.cpu_budget_s
    if config.time_limit_s:
        first.time_limit_s = config.time_limit_s * pretrain_share
        second.time_limit_s = config.time_limit_s - first.time_limit_s
    return first, second


def joint_tokenizer(jokes: list[str], general: list[str], vocab_size: int) -> ByteLevelBPETokenizer:
    """One byte-level BPE for both stages, trained on both training splits (never on a validation split)."""
    return ByteLevelBPETokenizer.train_from_iterator([*jokes, *general], vocab_size=vocab_size)


def train_two_stage(config: TrainConfig, pretrain_data: str, data: str, out_dir: str | Path, *,
                    pretrain_share: float = 0.5, pretrain_epochs: float = 1.0, tokenizer_corpus: str = "both",
                    resume: bool = False, hub_dir: str | None = None, progress: bool = True,
                    cpu: bool = False) -> TrainResult:
    """Pretrain into `out_dir/pretrain`, then fine-tune into `out_dir`; `resume` skips a finished first
    stage and continues whichever stage was interrupted."""
    if tokenizer_corpus not in TOKENIZER_CORPORA:
        raise ValueError(f"tokenizer_corpus must be one of {TOKENIZER_CORPORA}, got {tokenizer_corpus!r}")
    out_dir = Path(out_dir)
    pretrain_dir = out_dir / PRETRAIN_DIR
    first, second = stage_configs(config, pretrain_dir, pretrain_share=pretrain_share,
                                  pretrain_epochs=pretrain_epochs)
    first_done = (pretrain_dir / STAGES_FILE).is_file()  # written only when a stage has finished
    if not (resume and first_done):
        tokenizer = None
        if not (resume and (pretrain_dir / "tokenizer.json").is_file()):
            jokes = prepare_corpus(data, val_fraction=config.val_fraction, hub_dir=hub_dir).train
            general = prepare_corpus(pretrain_data, val_fraction=config.val_fraction).train if \
                tokenizer_corpus == "both" else []
            tokenizer = joint_tokenizer(jokes, general, config.vocab_size)
        train(first, pretrain_data, pretrain_dir, resume=resume, progress=progress, cpu=cpu, tokenizer=tokenizer)
        resume = False  # the second stage starts afresh from the first's weights
    return train(second, data, out_dir, resume=resume, hub_dir=hub_dir, progress=progress, cpu=cpu)
