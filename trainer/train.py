"""The training loop: corpus → tokenizer → packed rows → accelerate loop → weights, metrics, card.

Runs unchanged on CPU, one GPU (bf16 autocast) or several (DDP via `accelerate launch`).
Batches are a pure function of (seed, step), so `--resume` continues exactly where it stopped.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from rujokes_model import ByteLevelBPETokenizer, ModelConfig, TransformerForCausalLM
from rujokes_model.model import causal_lm_loss

from .best import BestWeights
from .data import DEFAULT_CORPUS, Corpus, CorpusFormatError, prepare_corpus
from .ema import EMAWeights
from .evaluate import evaluate_texts
from .memorisation import VerbatimIndex, memorisation_report, sample_texts
from .packing import PackedRows, TooFewTokens, encode_documents, pack_documents
from .recipes import TrainConfig
from .report import SAMPLE_PROMPTS, plot_losses, write_model_card
from .schedule import build_optimizer, lr_factor

CHECKPOINT_DIR = "checkpoint"
METRICS_FILE = "metrics.jsonl"
STAGES_FILE = "stages.json"     # what each training stage saw, oldest first


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    tokens_seen: int
    wall_time_s: float
    final_eval: dict                # the evaluation of the weights the run keeps
    model: TransformerForCausalLM
    tokenizer: ByteLevelBPETokenizer
    selected_step: int = 0          # the step those weights come from (the last step unless an earlier was better)


def rows_for_step(step: int, n_rows: int, batch_size: int, seed: int) -> torch.Tensor:
    """Global row indices of optimizer step `step`: a fresh permutation each epoch, by seed + epoch."""
    steps_per_epoch = max(1, n_rows // batch_size)
    epoch, offset = divmod(step, steps_per_epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_rows, generator=generator)
    return order[offset * batch_size:(offset + 1) * batch_size]


def build_tokenizer(corpus: Corpus, vocab_size: int, out_dir: Path, resume: bool) -> ByteLevelBPETokenizer:
    saved = out_dir / "tokenizer.json"
    if resume and saved.is_file():
        return ByteLevelBPETokenizer.from_file(saved)
    return ByteLevelBPETokenizer.train_from_iterator(corpus.train, vocab_size=vocab_size)


def describe_source(data: str) -> str:
    """The corpus as the model card names it: no machine paths in published cards."""
    if str(data).startswith("hf://"):
        return str(data)
    if Path(data).resolve() == Path(DEFAULT_CORPUS).resolve():
        return "../shared/data/russian_jokes.jsonl"
    return Path(data).name


def hardware_description(accelerator: Accelerator) -> str:
    if accelerator.device.type == "cuda":
        return f"{accelerator.num_processes}× {torch.cuda.get_device_name(accelerator.device)}"
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


@dataclass
class _Run:
    """What one call of `train` holds between its phases (prepare → steps → finish)."""
    config: TrainConfig
    accelerator: Accelerator
    out_dir: Path
    corpus: Corpus
    tokenizer: ByteLevelBPETokenizer
    rows: PackedRows
    model: torch.nn.Module          # as prepared by accelerate (a DDP wrapper on several processes)
    raw_model: TransformerForCausalLM
    optimizer: torch.optim.Optimizer
    total_steps: int
    best: BestWeights
    ema: EMAWeights | None
    stages_before: list[dict]       # what earlier runs (--init-from) trained this model on
    start_step: int = 0
    tokens_seen: int = 0
    elapsed_before: float = 0.0

    @property
    def metrics_file(self) -> Path:
        return self.out_dir / METRICS_FILE


def train(config: TrainConfig, data: str, out_dir: str | Path, *, resume: bool = False, hub_dir: str | None = None,
          progress: bool = True, cpu: bool = False, stop_after: int | None = None,
          tokenizer: ByteLevelBPETokenizer | None = None) -> TrainResult:
    """Train per `config`; `stop_after` pauses after that many steps of this call, leaving only a checkpoint
    for `resume=True` (the schedule still follows the full run). `tokenizer` replaces the one the run would
    train on its corpus (a first stage uses one trained on every stage's corpus); `config.init_from` starts
    from a saved model and its tokenizer instead."""
    run = _prepare(config, data, Path(out_dir), resume=resume, hub_dir=hub_dir, cpu=cpu, tokenizer=tokenizer)
    bar = tqdm(total=run.total_steps, initial=run.start_step,
               disable=not (progress and run.accelerator.is_main_process),
               desc=f"train {config.size}", unit="step", dynamic_ncols=True)
    clock = _Clock(config, run.elapsed_before)
    last_eval: dict = {}
    run.model.train()
    for step in range(run.start_step, run.total_steps):
        lr = config.lr * lr_factor(clock.done_fraction(step, run.total_steps), clock.warmup_fraction(run.total_steps),
                                   config.min_lr_ratio)
        record = _train_step(run, step, lr)
        wall = clock.wall()
        record.update(wall_time_s=round(wall, 2), tokens_per_s=round(run.tokens_seen / max(wall, 1e-9)))
        is_last = step + 1 == run.total_steps or clock.out_of_budget(wall)
        if (step + 1) % config.eval_every == 0 or is_last:
            last_eval = _evaluate(run, step + 1)
            record.update(last_eval)
        if run.accelerator.is_main_process:
            with run.metrics_file.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", tok_s=record["tokens_per_s"],
                        **({"val_bpc": f"{last_eval['val_bpc']:.3f}"} if last_eval else {}))
        bar.update(1)
        pausing = stop_after is not None and step + 1 - run.start_step >= stop_after and not is_last
        if ((step + 1) % config.checkpoint_every == 0 or pausing) and not is_last:
            _checkpoint(run, step + 1, wall)
        if pausing:
            bar.close()
            return TrainResult(run.out_dir, step + 1, run.tokens_seen, wall, last_eval, run.raw_model,
                               run.tokenizer, step + 1)
        if is_last:
            run.total_steps = step + 1
            break
    bar.close()
    return _finish(run, data, clock.wall(), last_eval)


class _Clock:
    """How far the run is, by steps, process CPU time (equal-cost ablations) or a wall-clock cap."""

    def __init__(self, config: TrainConfig, elapsed_before: float) -> None:
        self.config, self.elapsed_before = config, elapsed_before
        self.started, self.cpu_started = time.perf_counter(), time.process_time()

    def wall(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def done_fraction(self, step: int, total_steps: int) -> float:
        config = self.config
        cpu_used = time.process_time() - self.cpu_started
        done = cpu_used / config.cpu_budget_s if config.cpu_budget_s else step / total_steps
        if config.time_limit_s:  # whichever of steps and time runs out first sets the pace
            done = max(done, self.wall() / config.time_limit_s)
        return done

    def warmup_fraction(self, total_steps: int) -> float:
        if self.config.cpu_budget_s:
            return self.config.warmup_fraction
        return self.config.warmup_steps / max(total_steps, 1)

    def out_of_budget(self, wall: float) -> bool:
        # Checked only after a step, so the last step always gets its evaluation.
        config = self.config
        return bool(config.cpu_budget_s and time.process_time() - self.cpu_started >= config.cpu_budget_s) or bool(
            config.time_limit_s and wall >= config.time_limit_s)


def _check_corpus(corpus: Corpus, val_fraction: float) -> None:
    """A corpus training cannot use is said before anything is built: no texts, or no validation split."""
    if not corpus.train and not corpus.val:
        raise CorpusFormatError(corpus.source, None, "no texts in it (every record is empty)")
    if not corpus.val or not corpus.train:
        raise CorpusFormatError(corpus.source, None, f"{len(corpus.train)} training and {len(corpus.val)} validation "
                                f"texts: training needs both, and a hash of each text sends about "
                                f"{val_fraction:.0%} of them to validation; add texts")


def _prepare(config: TrainConfig, data: str, out_dir: Path, *, resume: bool, hub_dir: str | None, cpu: bool,
             tokenizer: ByteLevelBPETokenizer | None) -> _Run:
    out_dir.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(cpu=cpu, mixed_precision="bf16" if torch.cuda.is_available() and not cpu else "no")
    set_seed(config.seed)
    corpus = prepare_corpus(data, val_fraction=config.val_fraction, hub_dir=hub_dir)
    _check_corpus(corpus, config.val_fraction)
    stages_before: list[dict] = []
    if config.init_from:
        model, tokenizer = initial_model(config)
        stages_before = read_stages(Path(config.init_from))
    else:
        tokenizer = tokenizer or build_tokenizer(corpus, config.vocab_size, out_dir, resume)
        torch.manual_seed(config.seed)
        model = TransformerForCausalLM(ModelConfig.preset(config.size, vocab_size=tokenizer.vocab_size, **{
            "max_seq_len": max(config.seq_len + 1, ModelConfig.preset(config.size).max_seq_len),
            **config.model_overrides}))
    try:
        rows = pack_documents(encode_documents(tokenizer, corpus.train), config.seq_len)
    except TooFewTokens as error:
        raise CorpusFormatError(corpus.source, None, f"its training split is {error} (--seq-len "
                                f"{config.seq_len}); add texts or lower --seq-len") from None
    steps_per_epoch = max(1, len(rows) // config.batch_size)
    total_steps = config.steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    if config.cpu_budget_s:
        total_steps = config.steps or 10**9  # stopped by the budget; the schedule follows CPU time instead
    optimizer = build_optimizer(model, config.lr, config.weight_decay)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    raw_model = accelerator.unwrap_model(prepared)
    ema = EMAWeights(raw_model, config.ema_decay) if config.ema_decay else None
    run = _Run(config, accelerator, out_dir, corpus, tokenizer, rows, prepared, raw_model, optimizer, total_steps,
               BestWeights(), ema, stages_before)
    checkpoint = out_dir / CHECKPOINT_DIR
    if resume and (checkpoint / "trainer_state.json").is_file():
        accelerator.load_state(str(checkpoint))
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        run.start_step, run.tokens_seen, run.elapsed_before = state["step"], state["tokens_seen"], state["wall_time_s"]
        run.best = BestWeights.load(checkpoint)
        if ema is not None:
            ema.load(checkpoint)
    if micro_batch_size(config, accelerator.num_processes) < 1:
        raise ValueError("batch_size must be ≥ grad_accum × number of processes")
    if accelerator.is_main_process:
        tokenizer.save_pretrained(out_dir)
        (out_dir / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        if not resume:
            run.metrics_file.write_text("")
    return run


def initial_model(config: TrainConfig) -> tuple[TransformerForCausalLM, ByteLevelBPETokenizer]:
    """The saved model a later stage starts from, with its own tokenizer and config (overrides such as dropout
    applied on top; a shape change fails loudly when the weights are loaded)."""
    source = Path(config.init_from)
    tokenizer = ByteLevelBPETokenizer.from_pretrained(source)
    saved = TransformerForCausalLM.from_pretrained(source)
    model_config = ModelConfig.from_dict({**saved.config.to_dict(), **config.model_overrides})
    if config.seq_len + 1 > model_config.max_seq_len:
        raise ValueError(f"seq_len {config.seq_len} does not fit the initial model's max_seq_len "
                         f"{model_config.max_seq_len}")
    model = TransformerForCausalLM(model_config)
    model.load_state_dict(saved.state_dict())
    return model, tokenizer


def micro_batch_size(config: TrainConfig, num_processes: int) -> int:
    return config.batch_size // (config.grad_accum * num_processes)


def _train_step(run: _Run, step: int, lr: float) -> dict:
    """One optimizer step over the global batch `rows_for_step(step)`; returns its metrics record."""
    config, accelerator = run.config, run.accelerator
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    step_rows = rows_for_step(step, len(run.rows), config.batch_size, config.seed)
    # Each process takes its slice of the global batch, then splits it into accumulation micro-batches.
    mine = step_rows[accelerator.process_index::accelerator.num_processes]
    loss_sum = 0.0
    for micro_rows in mine.split(micro_batch_size(config, accelerator.num_processes)):
        batch = {k: v.to(accelerator.device) for k, v in run.rows.batch(micro_rows).items()}
        with accelerator.autocast():
            # Through the prepared model (the DDP wrapper when there are several processes), so gradients
            # are all-reduced; the loss itself is the model's own.
            logits = run.model(batch["input_ids"], document_ids=batch["document_ids"],
                               position_ids=batch["position_ids"])
            loss = causal_lm_loss(logits, batch["targets"])
        accelerator.backward(loss / config.grad_accum)
        loss_sum += loss.item() / config.grad_accum
    grad_norm = accelerator.clip_grad_norm_(run.model.parameters(), config.grad_clip)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    if run.ema is not None:
        run.ema.update(run.raw_model, step)
    run.tokens_seen += int(step_rows.numel() * config.seq_len)
    return {"step": step + 1, "train_loss": loss_sum, "lr": lr, "grad_norm": float(grad_norm),
            "tokens_seen": run.tokens_seen}


def _evaluate(run: _Run, step: int) -> dict:
    """Validate the weights the run would ship (the average, with EMA) and remember the best."""
    with run.ema.applied(run.raw_model) if run.ema is not None else contextlib.nullcontext():
        metrics = _validate(run.raw_model, run.tokenizer, run.corpus.val, run.config, run.accelerator)
        if run.config.keep_best:
            run.best.offer(step, metrics, run.raw_model)
    return metrics


def _finish(run: _Run, data: str, wall: float, last_eval: dict) -> TrainResult:
    """Checkpoint, pick the weights to ship, and write them with their curve, stages and card."""
    config, raw_model = run.config, run.raw_model
    _checkpoint(run, run.total_steps, wall)
    if run.ema is not None:
        run.ema.copy_to(raw_model)
    selected_step, selected_eval = run.total_steps, last_eval
    if config.keep_best and run.best.beats(last_eval):
        # The run overfitted after its best evaluation: ship those weights, and say so in the card.
        raw_model.load_state_dict(run.best.state)
        selected_step, selected_eval = run.best.step, run.best.metrics
    stages = [*run.stages_before, {"name": config.stage_name or config.size, "corpus": describe_source(data),
                                   "documents": len(run.corpus.train), "steps": run.total_steps,
                                   "tokens": run.tokens_seen, "val_bpc": selected_eval.get("val_bpc")}]
    if run.accelerator.is_main_process:
        memorisation = _memorisation(run) if config.card_memorisation_samples else None
        raw_model.save_pretrained(run.out_dir)
        (run.out_dir / STAGES_FILE).write_text(json.dumps(stages, indent=2, ensure_ascii=False) + "\n")
        plot_losses(run.out_dir, f"rujokes {config.size}: {raw_model.num_parameters() / 1e6:.2f} M parameters")
        write_model_card(run.out_dir, size=config.size, model=raw_model, tokenizer=run.tokenizer,
                         train_config=config.to_dict(), data_source=describe_source(data),
                         n_train=len(run.corpus.train), n_val=len(run.corpus.val), tokens_seen=run.tokens_seen,
                         wall_time_s=wall, hardware=hardware_description(run.accelerator), final_eval=selected_eval,
                         steps=run.total_steps, sample_tokens=config.card_sample_tokens, selected_step=selected_step,
                         training_stages=stages if len(stages) > 1 else None, memorisation=memorisation)
    return TrainResult(run.out_dir, run.total_steps, run.tokens_seen, wall, selected_eval, raw_model, run.tokenizer,
                       selected_step)


def _memorisation(run: _Run) -> dict:
    """How many of the card's samples copy a training document verbatim (trainer/memorisation.py)."""
    config = run.config
    texts = sample_texts(run.raw_model, run.tokenizer, SAMPLE_PROMPTS, config.card_memorisation_samples,
                         max_new_tokens=config.card_sample_tokens)
    return memorisation_report(VerbatimIndex(run.corpus.train), texts).to_dict()


def read_stages(model_dir: Path) -> list[dict]:
    """The stages a saved model went through (none recorded: one stage, named from its train_config)."""
    path = model_dir / STAGES_FILE
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    train_config = model_dir / "train_config.json"
    name = json.loads(train_config.read_text()).get("size", "?") if train_config.is_file() else model_dir.name
    return [{"name": name, "corpus": "unrecorded"}]


def _validate(model, tokenizer, val_texts, config: TrainConfig, accelerator: Accelerator) -> dict:
    texts = val_texts if config.eval_batches is None else val_texts[: config.eval_batches * 32]
    with accelerator.autocast():
        result = evaluate_texts(model, tokenizer, texts, seq_len=config.seq_len, device=accelerator.device)
    return result.to_dict()


class _TiedHeadNotice(logging.Filter):
    """accelerate warns at every checkpoint that it left out the output layer, "but check…": it is the
    embedding itself (tied), restored with it on resume (tests pin the resumed weights). Other removals
    still warn."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor {'lm_head.weight'}" not in record.getMessage()


logging.getLogger("accelerate.utils.other").addFilter(_TiedHeadNotice())


def _checkpoint(run: _Run, step: int, wall: float) -> None:
    path = run.out_dir / CHECKPOINT_DIR
    run.accelerator.save_state(str(path))
    if run.accelerator.is_main_process:
        run.best.save(path)
        if run.ema is not None:
            run.ema.save(path)
        (path / "trainer_state.json").write_text(json.dumps(
            {"step": step, "tokens_seen": run.tokens_seen, "wall_time_s": wall}))
