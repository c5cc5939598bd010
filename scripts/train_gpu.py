"""Train nano, mini and small on one GPU with the two-stage recipe, bundle them, and pack them for the trip back.

    python scripts/train_gpu.py [--runs runs/gpu] [--budget-s 500] [--only mini ...] [--export DIR]
    python scripts/train_gpu.py --smoke --no-bundle          # a few tiny steps of every run, on any machine

About 8 minutes on one H100/H200 (`scripts/gpu_session.sh` runs it there). Every size first learns Russian
from the literature corpus (../shared/data/russian_literature.jsonl), then the jokes from those weights
(trainer/stages.py); one tokenizer, trained once on both corpora, serves every size. Each run has a
wall-clock cap (the lr schedule compresses to fit), scaled down when `--budget-s` would be overrun, and
ships its best-validation weights. Bundled: nano fp32, mini and small int8 (the CPU worker's own rounding,
measured at +0.0001 bits/char; dequantized on load for a GPU). `--export DIR` packs the bundled weights and
every run's card and summary into one tar in checksummed parts (trainer/parts.py): as many as one return
of the GPU machine holds go to DIR, the others to `<runs>/export-rest/1`, `/2`, … for the calls that fetch
them. On the CPU side `python scripts/install_gpu_weights.py DIR [DIR ...]` joins, verifies and installs.
Writes <runs>/summary.json with every run's figures.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rujokes_model.pretrained import WEIGHTS_ROOT  # noqa: E402
from trainer.data import DEFAULT_CORPUS, prepare_corpus  # noqa: E402
from trainer.parts import RETURN_MAX_BYTES, RETURN_MAX_FILES, pack_for_return  # noqa: E402
from trainer.recipes import recipe  # noqa: E402
from trainer.stages import DEFAULT_PRETRAIN_CORPUS, joint_tokenizer  # noqa: E402

# run name → (size, recipe overrides, model overrides, first stage's share of the cap, bundle dtype)
PLAN = {
    "nano": ("nano", dict(epochs=10, eval_every=100, time_limit_s=60), {}, 0.5, "fp32"),
    "mini": ("mini", dict(epochs=8, eval_every=100, time_limit_s=110), {}, 0.5, "int8"),
    "small": ("small", dict(epochs=6, eval_every=50, time_limit_s=200), {"dropout": 0.1}, 0.5, "int8"),
}
# What a run spends beyond its cap, for --budget-s: loading and packing the literature again, evaluations,
# the card's samples (a guess from the jokes-only H200 run plus the first stage; each run re-measures what is left).
RUN_OVERHEAD_S = 35.0
# A few steps of every run at toy sizes: checks the plan end to end on a CPU before spending GPU time.
SMOKE = dict(steps=4, time_limit_s=None, batch_size=4, seq_len=32, eval_every=1000, eval_batches=1,
             card_sample_tokens=4, card_memorisation_samples=5)
SMOKE_MODEL = dict(n_layer=1, d_model=32, n_head=2, n_kv_head=2, d_ff=64, kv_lora_rank=16, qk_rope_head_dim=8,
                   qk_nope_head_dim=8, v_head_dim=8)


def shared_tokenizer(runs: Path, data: str, pretrain_data: str, vocab_size: int, smoke: bool):
    """One BPE on both training splits for every size (trained once: it is the slowest CPU step)."""
    from rujokes_model import ByteLevelBPETokenizer

    path = runs / "tokenizer" / "tokenizer.json"
    if path.is_file():
        return ByteLevelBPETokenizer.from_file(path)
    jokes, general = prepare_corpus(data).train, prepare_corpus(pretrain_data).train
    if smoke:
        jokes, general = jokes[:300], general[:30]
    tokenizer = joint_tokenizer(jokes, general, vocab_size)
    tokenizer.save_pretrained(path.parent)
    return tokenizer


def time_scale(names: list[str], left_s: float | None, scale: float) -> float:
    """`scale`, lowered so that the caps of the runs still to come, and their overheads, fit in `left_s`."""
    if left_s is None:
        return scale
    caps = sum(PLAN[n][1]["time_limit_s"] for n in names)
    return max(0.05, min(scale, (left_s - RUN_OVERHEAD_S * len(names)) / caps))


def run_one(name: str, args, tokenizer, scale: float) -> dict:
    from trainer.stages import PRETRAIN_DIR, stage_configs
    from trainer.train import train

    size, overrides, model_overrides, share, _ = PLAN[name]
    overrides = dict(overrides, **(SMOKE if args.smoke else {}))
    if overrides.get("time_limit_s"):
        overrides["time_limit_s"] *= scale
    config = recipe(size, **overrides)  # None values keep the recipe's own
    config.model_overrides.update(model_overrides, **(SMOKE_MODEL if args.smoke else {}))
    out = args.runs / name
    first, second = stage_configs(config, out / PRETRAIN_DIR, pretrain_share=share, pretrain_epochs=1.0)
    started = time.perf_counter()
    pretrain_data = args.pretrain_data
    if args.smoke:  # a few chunks of literature, so the smoke run does not pack 38 M characters
        pretrain_data = str(args.runs / "smoke_literature.jsonl")
    pretrained = train(first, pretrain_data, out / PRETRAIN_DIR, progress=False, tokenizer=tokenizer)
    result = train(second, args.data, out, progress=False)
    return {"size": size, "pretrain_steps": pretrained.steps, "pretrain_val_bpc": pretrained.final_eval.get("val_bpc"),
            "steps": result.steps, "selected_step": result.selected_step, "tokens_seen": result.tokens_seen,
            "wall_time_s": round(time.perf_counter() - started, 1),
            "train_tokens_per_s": round(result.tokens_seen / max(result.wall_time_s, 1e-9)),
            "time_limit_s": overrides.get("time_limit_s"), **result.final_eval}


def export(runs: Path, target: Path, rest: Path, summary: dict, sizes: list[str], weights_root: Path) -> list[Path]:
    """Bundled weights, cards and the summary (written after each run), packed into returns: `target` first,
    then `rest/1`, …"""
    files = {"summary.json": runs / "summary.json"}
    for size in sizes:
        for path in sorted((weights_root / size).iterdir()):
            files[f"weights/{size}/{path.name}"] = path
    for name in summary:
        for file in ("README.md", "metrics.jsonl", "loss.png", "stages.json", "train_config.json"):
            if (runs / name / file).is_file():
                files[f"runs/{name}/{file}"] = runs / name / file
    # Room in the first return for the call's own log (gpu_session.sh tees it there).
    return pack_for_return(files, target, rest, loose=(runs / "summary.json",), max_files=RETURN_MAX_FILES - 1,
                           max_bytes=RETURN_MAX_BYTES - 2**20)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "gpu")
    p.add_argument("--data", default=DEFAULT_CORPUS)
    p.add_argument("--pretrain-data", default=DEFAULT_PRETRAIN_CORPUS)
    p.add_argument("--time-scale", type=float, default=1.0, help="multiply every run's wall-clock cap")
    p.add_argument("--budget-s", type=float, help="the whole script's wall time (the GPU call's limit, less the "
                                                  "export): runs still to come get shorter caps to fit")
    p.add_argument("--weights-root", type=Path, default=None, help="bundle here (default: the package's weights)")
    p.add_argument("--only", nargs="+", choices=sorted(PLAN), help="run these plan entries only")
    p.add_argument("--smoke", action="store_true", help="4 tiny steps per run, to check the script itself")
    p.add_argument("--no-bundle", action="store_true", help="leave rujokes_model/weights alone")
    p.add_argument("--export", type=Path, help="pack weights, cards and summary here, in parts (one return's worth)")
    p.add_argument("--export-rest", type=Path, help="the parts past one return (default: <runs>/export-rest)")
    args = p.parse_args()
    started = time.monotonic()
    args.runs.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        # Both halves of the hash split: the split of these chunks is the same as in the whole corpus.
        literature = prepare_corpus(args.pretrain_data)
        chunks = [json.dumps({"text": t}, ensure_ascii=False) for t in literature.train[:60] + literature.val[:10]]
        (args.runs / "smoke_literature.jsonl").write_text("\n".join(chunks) + "\n", encoding="utf-8")
    tokenizer = shared_tokenizer(args.runs, args.data, args.pretrain_data, recipe("nano").vocab_size, args.smoke)
    summary: dict[str, dict] = {}
    names = list(args.only or PLAN)
    for index, name in enumerate(names):
        left_s = None if args.budget_s is None else args.budget_s - (time.monotonic() - started)
        scale = time_scale(names[index:], left_s, args.time_scale)
        print(f"== {name} (caps × {scale:.2f})", flush=True)
        try:
            summary[name] = run_one(name, args, tokenizer, scale)
        except Exception:  # one failed run must not cost the others their GPU time
            traceback.print_exc()
            summary[name] = {"error": traceback.format_exc(limit=3)}
        print(json.dumps({name: summary[name]}), flush=True)
        (args.runs / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    weights_root = args.weights_root or WEIGHTS_ROOT
    bundled = []
    if not args.no_bundle:
        for name, figures in summary.items():
            if "val_bpc" in figures:
                subprocess.run([sys.executable, str(ROOT / "scripts" / "bundle_weights.py"), "--run",
                                str(args.runs / name), "--size", figures["size"], "--dtype", PLAN[name][4],
                                "--weights-root", str(weights_root)], check=True)
                bundled.append(figures["size"])
    if args.export:
        folders = export(args.runs, args.export, args.export_rest or args.runs / "export-rest", summary, bundled,
                         weights_root)
        print(f"packed for {len(folders)} return(s): {args.export}", flush=True)
        for folder in folders[1:]:  # what the next calls of the GPU machine, while it is still warm, fetch
            print(f"  then fetch: cp {folder.resolve()}/* \"$OUT\"/", flush=True)
    return 0 if all("error" not in s for s in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
