"""The CPU's compiled decode step, built ahead of time (aot_step.py) against torch.compile's graphs: time to
build, memory, and time per step, for a bundled model as the worker serves it (run by hand; prints figures).

    python benchmarks/decode_step_build.py --size mini --threads 1   # cold: a fresh cache directory
    python benchmarks/decode_step_build.py --size mini --threads 1 --cache DIR   # warm: DIR filled by a run before

Both steps get the model as `load_for_serving` prepares it (int8 weights for mini and small, nano's fp32 on
the kernels), and both graph kinds (a lone row and batches). `--cache` is used for TORCHINDUCTOR_CACHE_DIR:
inductor's caches for torch.compile and our libraries. Per-step times are medians of --rounds rounds of
--steps calls, the two steps interleaved, at batch 1 and at --batch. RSS is the process's resident memory
before the first build, after the libraries and after torch.compile's graphs.

Last, the library alone through our op (served) and through torch's Python binding (aot_step's call
before kernels/aot_runner.cpp, which holds the GIL for a whole step), and what a worker's event loop sees
while a batch decodes: an asyncio loop on the main thread sleeps a millisecond at a time while another
thread runs --steps steps at --batch, and the gaps between its turns are reported for both calls and for
torch.compile's step.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def loop_gaps(decode) -> tuple[float, float, float, int]:
    """`decode` (which runs steps and returns how many) in a thread, while an asyncio loop on this thread sleeps
    1 ms at a time: ms per step, the median and the longest gap in ms between the loop's turns (from the
    thread's start to its end; a free loop's is ≈ 1.1 ms), and how many turns it had."""
    turns, result = [], []

    def run() -> None:
        started = time.perf_counter()
        steps = decode()
        result.append((started, steps, time.perf_counter()))

    stepping = threading.Thread(target=run)

    async def tick() -> None:
        stepping.start()
        while stepping.is_alive():
            await asyncio.sleep(0.001)
            turns.append(time.perf_counter())

    asyncio.run(tick())
    stepping.join()
    (started, steps, ended), = result
    marks = [started, *[t for t in turns if started < t < ended], ended]
    gaps = sorted((b - a) * 1e3 for a, b in zip(marks, marks[1:]))
    return (ended - started) / steps * 1e3, statistics.median(gaps), gaps[-1], len(marks) - 2


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

    from rujokes_model.aot_step import AotStepLibrary, _export, flat_inputs

    def through_binding(library: AotStepLibrary, lone: bool):
        """The same library run by torch's Python binding, as aot_step did before kernels/aot_runner.cpp."""
        loaded = torch._inductor.aoti_load_package(str(library.path))
        _, exported, _ = _export(model, lone=lone)
        tensors = {**dict(exported.named_parameters(remove_duplicate=False)),
                   **dict(exported.named_buffers(remove_duplicate=False))}
        constants = {name: tensors[name].detach() for name in loaded.get_constant_fqns()}
        loaded.load_constants(constants, check_full_update=True, user_managed=True)
        return lambda inputs, keep=constants: loaded.loader.run(inputs)[0]

    for rows in (1, args.batch):  # the two calls alone, interleaved
        library = AotStepLibrary(model, lone=rows == 1)  # from the cache filled above
        calls = {"our op": library, "torch's binding": through_binding(library, rows == 1)}
        with torch.inference_mode():
            plan = model.decode_plan(torch.ones(rows, 1, dtype=torch.long), args.columns)
            tokens = torch.arange(3, 3 + rows)
            times = {name: [] for name in calls}
            for _ in range(args.rounds):
                for name, call in calls.items():
                    cache = model.new_cache(rows, args.columns)
                    started = time.perf_counter()
                    for i in range(args.steps):
                        call(flat_inputs(tokens, cache, plan, torch.tensor(1 + i % (args.columns - 1))))
                    times[name].append((time.perf_counter() - started) / args.steps * 1e6)
        print(f"batch {rows}, the library alone: " + ", ".join(f"{name} {statistics.median(t):.0f} µs/step"
                                                               for name, t in times.items()))

    binding = calls["torch's binding"]  # the batch graph's, from the last round above
    rows = args.batch
    with torch.inference_mode():
        plan = model.decode_plan(torch.ones(rows, 1, dtype=torch.long), args.columns)
        tokens = torch.arange(3, 3 + rows)
        columns = [torch.tensor(c) for c in range(args.columns)]
        callers = {"library, our op (served)": lambda cache, at: library(flat_inputs(tokens, cache, plan, at)),
                   "library, torch's binding": lambda cache, at: binding(flat_inputs(tokens, cache, plan, at)),
                   "torch.compile": lambda cache, at: steps["torch.compile"](tokens, cache, plan, at)}
        for round_ in range(2):  # the first round warms each up (torch.compile's graphs recompile on a new thread)
            for name, call in callers.items():
                cache = model.new_cache(rows, args.columns)

                def decode(call=call, cache=cache) -> int:
                    with torch.inference_mode():
                        for i in range(args.steps):
                            call(cache, columns[1 + i % (args.columns - 1)])
                    return args.steps

                ms, median, longest, turns = loop_gaps(decode)
                if round_:
                    print(f"batch {rows}, {name:>25}: {ms:.2f} ms/step; the event loop's turns {turns}, "
                          f"{median:.2f} ms apart (median), at most {longest:.2f} ms")

if __name__ == "__main__":
    main()
