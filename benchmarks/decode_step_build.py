"""The CPU's compiled decode step, built ahead of time (aot_step.py) against torch.compile's graphs: time to
build, memory, and time per step, for a bundled model as the worker serves it (run by hand; prints figures).

    python benchmarks/decode_step_build.py --size mini --threads 1   # cold: a fresh cache directory
    python benchmarks/decode_step_build.py --size mini --threads 1 --cache DIR   # warm: DIR filled by a run before

Both steps get the model as `load_for_serving` prepares it (int8 weights for mini and small, nano's fp32 on
the kernels), and both graph kinds (a lone row and batches). `--cache` is used for TORCHINDUCTOR_CACHE_DIR:
inductor's caches for torch.compile and our libraries. Per-step times are medians of --rounds rounds of
--steps calls, the two steps interleaved, at batch 1 and at --batch. RSS is the process's resident memory
before the first build, after the libraries and after torch.compile's graphs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="mini", choices=["nano", "mini", "small"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--columns", type=int, default=256)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cache", default=None, help="TORCHINDUCTOR_CACHE_DIR (default: a new empty directory)")
    args = parser.parse_args()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = args.cache or tempfile.mkdtemp(prefix="decode-step-")

    import torch

    from rujokes_model.compiled_step import CompiledDecodeStep
    from rujokes_model.config import cpu_weights_for
    from rujokes_model.pretrained import pretrained_path
    from rujokes_model.serving import load_on_device, speed_up

    if args.threads:
        torch.set_num_threads(args.threads)
    model, _ = load_on_device(str(pretrained_path(args.size)), revision=None, device=torch.device("cpu"))
    speed_up(model, cpu_weights=cpu_weights_for(model.config), compile=False, name=args.size)
    model.prepare_for_decoding()
    print(f"{args.size}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"cache {os.environ['TORCHINDUCTOR_CACHE_DIR']}")

    steps, rss = {}, {"loaded": rss_mb()}
    for name, ahead in (("ahead-of-time", True), ("torch.compile", False)):
        step = CompiledDecodeStep(model, ahead_of_time=ahead)
        started = time.perf_counter()
        step.warm_up()
        print(f"{name:>14}: both graphs ready in {time.perf_counter() - started:.1f} s; kinds {step.kinds}")
        assert set(step.kinds.values()) == {name}, step.kinds
        steps[name], rss[name] = step, rss_mb()
    print("RSS: " + ", ".join(f"{k} {v:.0f} MB" for k, v in rss.items()))

    for rows in (1, args.batch):
        with torch.inference_mode():
            plan = model.decode_plan(torch.ones(rows, 1, dtype=torch.long), args.columns)
            caches = {name: model.new_cache(rows, args.columns) for name in steps}
            tokens = torch.arange(3, 3 + rows)
            columns = [torch.tensor(c) for c in range(args.columns)]
            first = [step(tokens, caches[name], plan, columns[1]) for name, step in steps.items()]
            difference = float((first[0] - first[1]).abs().max())
            times: dict[str, list[float]] = {name: [] for name in steps}
            for _ in range(args.rounds):
                for name, step in steps.items():
                    started = time.perf_counter()
                    for i in range(args.steps):
                        step(tokens, caches[name], plan, columns[1 + i % (args.columns - 1)])
                    times[name].append((time.perf_counter() - started) / args.steps * 1e6)
        medians = {name: statistics.median(t) for name, t in times.items()}
        ratio = medians["torch.compile"] / medians["ahead-of-time"]
        print(f"batch {rows}: " + ", ".join(f"{name} {m:.0f} µs/step" for name, m in medians.items())
              + f"; ahead of time {ratio:.2f}× faster; logits differ by at most {difference:.2g}")


if __name__ == "__main__":
    main()
