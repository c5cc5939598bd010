"""Train nano, mini and small on one GPU, then bundle the best nano and mini into the package.

    python scripts/train_gpu.py [--runs runs/gpu] [--data PATH] [--time-scale 1.0] [--only mini ...]

A few minutes on one H100/H200 (the corpus is ~2.5 M tokens an epoch). Each run uses its size's default
recipe with more epochs than a CPU allows, a wall-clock cap (the lr schedule compresses to fit it) and
ships its best-validation weights. mini is tried with and without dropout; the lower validation
bits/char is bundled. small (~170 MB in bf16) is too large to bundle: push its run directory to the Hub.
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

from trainer.data import DEFAULT_CORPUS  # noqa: E402
from trainer.recipes import recipe  # noqa: E402

# run name → (size, recipe overrides, model overrides, bundle dtype or None)
PLAN = {
    "nano": ("nano", dict(epochs=10, eval_every=100, time_limit_s=40), {}, "fp32"),
    "mini": ("mini", dict(epochs=8, eval_every=100, time_limit_s=60), {}, "bf16"),
    "mini-dropout": ("mini", dict(epochs=8, eval_every=100, time_limit_s=60), {"dropout": 0.1}, "bf16"),
    "small-dropout": ("small", dict(epochs=6, eval_every=50, time_limit_s=120), {"dropout": 0.1}, None),
}
# A few steps of every run at toy sizes: checks the plan end to end on a CPU before spending GPU time.
SMOKE = dict(steps=2, time_limit_s=None, batch_size=4, seq_len=32, eval_every=1000, eval_batches=1,
             card_sample_tokens=4)


def run_one(name: str, data: str, runs: Path, time_scale: float, smoke: bool) -> dict:
    from trainer.train import train

    size, overrides, model_overrides, _ = PLAN[name]
    overrides = dict(overrides, **(SMOKE if smoke else {}))
    if overrides.get("time_limit_s"):
        overrides["time_limit_s"] *= time_scale
    config = recipe(size, **overrides)  # None values keep the recipe's own
    config.model_overrides.update(model_overrides)
    started = time.perf_counter()
    result = train(config, data, runs / name, progress=False)
    return {"size": size, "steps": result.steps, "selected_step": result.selected_step,
            "tokens_seen": result.tokens_seen, "wall_time_s": round(time.perf_counter() - started, 1),
            "train_tokens_per_s": round(result.tokens_seen / max(result.wall_time_s, 1e-9)), **result.final_eval}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "gpu")
    p.add_argument("--data", default=DEFAULT_CORPUS)
    p.add_argument("--time-scale", type=float, default=1.0, help="multiply every run's wall-clock cap")
    p.add_argument("--only", nargs="+", choices=sorted(PLAN), help="run these plan entries only")
    p.add_argument("--smoke", action="store_true", help="2 tiny steps per run, to check the script itself")
    p.add_argument("--no-bundle", action="store_true", help="leave rujokes_model/weights alone")
    args = p.parse_args()
    args.runs.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict] = {}
    for name in args.only or PLAN:
        print(f"== {name}", flush=True)
        try:
            summary[name] = run_one(name, args.data, args.runs, args.time_scale, args.smoke)
        except Exception:  # one failed run must not cost the others their GPU time
            traceback.print_exc()
            summary[name] = {"error": traceback.format_exc(limit=3)}
        print(json.dumps({name: summary[name]}), flush=True)
        (args.runs / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if not args.no_bundle:
        for size in ("nano", "mini"):
            done = {n: s for n, s in summary.items() if s.get("size") == size and "val_bpc" in s}
            if done:
                best = min(done, key=lambda n: done[n]["val_bpc"])
                subprocess.run([sys.executable, str(ROOT / "scripts" / "bundle_weights.py"), "--run",
                                str(args.runs / best), "--size", size, "--dtype", PLAN[best][3]], check=True)
    return 0 if all("error" not in s for s in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
