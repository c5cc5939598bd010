"""The training loop: corpus → tokenizer → packed rows → accelerate loop → weights, metrics, card.

Runs unchanged on CPU, one GPU (bf16 autocast) or several (DDP via `accelerate launch`).
Batches are a pure function of (seed, step), so `--resume` continues exactly where it stopped.
"""
from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from rujokes_model import ByteLevelBPETokenizer, ModelConfig, TransformerForCausalLM

from .best import BestWeights
from .data import DEFAULT_CORPUS, Corpus, prepare_corpus
from .evaluate import evaluate_texts
from .packing import encode_documents, pack_documents
from .recipes import TrainConfig
from .report import plot_losses, write_model_card
from .schedule import build_optimizer, lr_factor

CHECKPOINT_DIR = "checkpoint"
METRICS_FILE = "metrics.jsonl"


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


def train(config: TrainConfig, data: str, out_dir: str | Path, *, resume: bool = False, hub_dir: str | None = None,
          progress: bool = True, cpu: bool = False, stop_after: int | None = None) -> TrainResult:
    """Train per `config`; `stop_after` pauses after that many steps of this call, leaving only a checkpoint
    for `resume=True` (the schedule still follows the full run)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(cpu=cpu, mixed_precision="bf16" if torch.cuda.is_available() and not cpu else "no")
    set_seed(config.seed)
    corpus = prepare_corpus(data, val_fraction=config.val_fraction, hub_dir=hub_dir)
    tokenizer = build_tokenizer(corpus, config.vocab_size, out_dir, resume)
    model_config = ModelConfig.preset(config.size, vocab_size=tokenizer.vocab_size,
                                      **{"max_seq_len": max(config.seq_len + 1, ModelConfig.preset(config.size).max_seq_len),
                                         **config.model_overrides})
    torch.manual_seed(config.seed)
    model = TransformerForCausalLM(model_config)
    rows = pack_documents(encode_documents(tokenizer, corpus.train), config.seq_len)
    steps_per_epoch = max(1, len(rows) // config.batch_size)
    total_steps = config.steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    if config.cpu_budget_s:
        total_steps = config.steps or 10**9  # stopped by the budget; the schedule follows CPU time instead
    optimizer = build_optimizer(model, config.lr, config.weight_decay)
    model, optimizer = accelerator.prepare(model, optimizer)

    start_step, tokens_seen, elapsed_before = 0, 0, 0.0
    if resume and (out_dir / CHECKPOINT_DIR / "trainer_state.json").is_file():
        accelerator.load_state(str(out_dir / CHECKPOINT_DIR))
        state = json.loads((out_dir / CHECKPOINT_DIR / "trainer_state.json").read_text())
        start_step, tokens_seen, elapsed_before = state["step"], state["tokens_seen"], state["wall_time_s"]
    best = BestWeights.load(out_dir / CHECKPOINT_DIR) if resume else BestWeights()
    if accelerator.is_main_process:
        tokenizer.save_pretrained(out_dir)
        (out_dir / "train_config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")

    metrics_file = out_dir / METRICS_FILE
    if not resume and accelerator.is_main_process:
        metrics_file.write_text("")
    micro = config.batch_size // (config.grad_accum * accelerator.num_processes)
    if micro < 1:
        raise ValueError("batch_size must be ≥ grad_accum × number of processes")
    raw_model = accelerator.unwrap_model(model)
    started = time.perf_counter()
    bar = tqdm(total=total_steps, initial=start_step, disable=not (progress and accelerator.is_main_process),
               desc=f"train {config.size}", unit="step", dynamic_ncols=True)
    last_eval: dict = {}
    model.train()
    cpu_started = time.process_time()
    for step in range(start_step, total_steps):
        # Equal-CPU-time runs (ablations) follow the clock; normal runs follow the step count.
        # The budget is checked only after a step (`is_last`), so the last step always gets its evaluation.
        cpu_used = time.process_time() - cpu_started
        progress = cpu_used / config.cpu_budget_s if config.cpu_budget_s else step / total_steps
        if config.time_limit_s:  # a wall-clock cap: whichever of steps and time runs out first sets the pace
            progress = max(progress, (elapsed_before + time.perf_counter() - started) / config.time_limit_s)
        lr = config.lr * lr_factor(progress, config.warmup_steps / max(total_steps, 1) if not config.cpu_budget_s
                                   else config.warmup_fraction, config.min_lr_ratio)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_rows = rows_for_step(step, len(rows), config.batch_size, config.seed)
        # Each process takes its slice of the global batch, then splits it into accumulation micro-batches.
        mine = step_rows[accelerator.process_index::accelerator.num_processes]
        loss_sum = 0.0
        for micro_rows in mine.split(micro):
            batch = {k: v.to(accelerator.device) for k, v in rows.batch(micro_rows).items()}
            with accelerator.autocast():
                loss = _loss(model, batch)
            accelerator.backward(loss / config.grad_accum)
            loss_sum += loss.item() / config.grad_accum
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens_seen += int(step_rows.numel() * config.seq_len)
        wall = elapsed_before + time.perf_counter() - started
        record = {"step": step + 1, "train_loss": loss_sum, "lr": lr,
                  "grad_norm": float(grad_norm), "tokens_seen": tokens_seen, "wall_time_s": round(wall, 2),
                  "tokens_per_s": round(tokens_seen / max(wall, 1e-9))}
        is_last = step + 1 == total_steps or bool(
            config.cpu_budget_s and time.process_time() - cpu_started >= config.cpu_budget_s) or bool(
            config.time_limit_s and wall >= config.time_limit_s)
        if (step + 1) % config.eval_every == 0 or is_last:
            last_eval = _validate(raw_model, tokenizer, corpus.val, config, accelerator)
            record.update(last_eval)
            if config.keep_best:
                best.offer(step + 1, last_eval, raw_model)
        if accelerator.is_main_process:
            with metrics_file.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
        bar.set_postfix(loss=f"{loss_sum:.3f}", tok_s=record["tokens_per_s"],
                        **({"val_bpc": f"{last_eval['val_bpc']:.3f}"} if last_eval else {}))
        bar.update(1)
        pausing = stop_after is not None and step + 1 - start_step >= stop_after and not is_last
        if ((step + 1) % config.checkpoint_every == 0 or pausing) and not is_last:
            _checkpoint(accelerator, out_dir, step + 1, tokens_seen, wall, best)
        if pausing:
            bar.close()
            return TrainResult(out_dir, step + 1, tokens_seen, wall, last_eval, raw_model, tokenizer, step + 1)
        if is_last:
            total_steps = step + 1
            break
    bar.close()
    wall = elapsed_before + time.perf_counter() - started
    _checkpoint(accelerator, out_dir, total_steps, tokens_seen, wall, best)
    selected_step, selected_eval = total_steps, last_eval
    if config.keep_best and best.beats(last_eval):
        # The run overfitted after its best evaluation: ship those weights, and say so in the card.
        raw_model.load_state_dict(best.state)
        selected_step, selected_eval = best.step, best.metrics
    if accelerator.is_main_process:
        raw_model.save_pretrained(out_dir)
        plot_losses(out_dir, f"rujokes {config.size}: {raw_model.num_parameters() / 1e6:.2f} M parameters")
        write_model_card(out_dir, size=config.size, model=raw_model, tokenizer=tokenizer,
                         train_config=config.to_dict(), data_source=describe_source(data), n_train=len(corpus.train),
                         n_val=len(corpus.val), tokens_seen=tokens_seen, wall_time_s=wall,
                         hardware=hardware_description(accelerator), final_eval=selected_eval, steps=total_steps,
                         sample_tokens=config.card_sample_tokens, selected_step=selected_step)
    return TrainResult(out_dir, total_steps, tokens_seen, wall, selected_eval, raw_model, tokenizer, selected_step)


def _loss(model, batch) -> torch.Tensor:
    # Through the prepared model (the DDP wrapper when there are several processes), so gradients are all-reduced.
    logits = model(batch["input_ids"], document_ids=batch["document_ids"], position_ids=batch["position_ids"])
    return F.cross_entropy(logits.float().flatten(0, 1), batch["targets"].flatten(), ignore_index=-100)


def _validate(model, tokenizer, val_texts, config: TrainConfig, accelerator: Accelerator) -> dict:
    texts = val_texts if config.eval_batches is None else val_texts[: config.eval_batches * 32]
    with accelerator.autocast():
        result = evaluate_texts(model, tokenizer, texts, seq_len=config.seq_len, device=accelerator.device)
    return result.to_dict()


def _checkpoint(accelerator: Accelerator, out_dir: Path, step: int, tokens_seen: int, wall: float,
                best: BestWeights) -> None:
    path = out_dir / CHECKPOINT_DIR
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        best.save(path)
        (path / "trainer_state.json").write_text(json.dumps(
            {"step": step, "tokens_seen": tokens_seen, "wall_time_s": wall}))
