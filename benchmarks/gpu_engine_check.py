"""The serving engine on a GPU: bundled models in bf16 through `bot.worker`, as a CUDA worker loads them.

Run by hand on a machine with a GPU (falls back to the CPU, slowly):

    python benchmarks/gpu_engine_check.py [--sizes nano mini] [--requests 16] [--max-new-tokens 120]

Per size: generated tokens/s for all requests in one batch and one at a time (same prompts, seeded),
the ratio, and how many seeded jokes came out the same alone and in the batch (bf16 on a GPU may
round differently at other batch shapes, so this is reported, not asserted). Prints one sample.
"""
from __future__ import annotations

import argparse
import time

import torch

from bot.worker.engine import ModelEngine
from bot.worker.engine_api import Job
from bot.worker.loading import load_source, resolve_device
from rujokes_model import bundled_sizes

PROMPTS = ["Штирлиц пришел домой", "Вовочка", "Приходит мужик к врачу", "Армянское радио спросили",
           "Встречаются два программиста", "Колобок", "Поручик Ржевский", "Заходит в бар"]


def jobs(n: int, max_new_tokens: int) -> list[Job]:
    return [Job(f"r{i}", PROMPTS[i % len(PROMPTS)], top_k=10, temperature=1.0, top_p=None,
                max_new_tokens=max_new_tokens, seed=i) for i in range(n)]


def timed(engine: ModelEngine, size: str, batch: list[Job]):
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    outputs = engine.generate(size, batch)
    return outputs, time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=bundled_sizes())
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=120)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__} on {name}; {args.requests} requests, ≤ {args.max_new_tokens} new tokens, "
          "top-k 10")
    for size in args.sizes:
        engine = ModelEngine({size: load_source(size, "bundled", device)}, device)
        work = jobs(args.requests, args.max_new_tokens)
        engine.generate(size, work[:2])  # warm-up: kernels, allocator
        batched, batch_s = timed(engine, size, work)
        alone = [timed(engine, size, [job]) for job in work]
        alone_s = sum(seconds for _, seconds in alone)
        tokens = sum(o.new_tokens for o in batched)
        alone_tokens = sum(outputs[0].new_tokens for outputs, _ in alone)
        same = sum(b.text == outputs[0].text for b, (outputs, _) in zip(batched, alone))
        print(f"{size}: batch {tokens / batch_s:,.0f} tok/s ({batch_s:.2f} s, {batched[0].forward_passes} passes); "
              f"one at a time {alone_tokens / alone_s:,.0f} tok/s ({alone_s:.2f} s); "
              f"ratio {tokens / batch_s / (alone_tokens / alone_s):.1f}×; same alone and batched: {same}/{len(work)}")
        print(f"  sample: {batched[0].text[:200]!r}")


if __name__ == "__main__":
    main()
