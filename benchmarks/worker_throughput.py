"""Throughput and latency of real workers behind real Redis (run by hand; prints figures).

    python benchmarks/worker_throughput.py [--model DIR] [--requests 16] [--max-new-tokens 120] [--compile]
                                           [--cpu-weights fp32|bf16|int8] [--threads 1]

Scenarios in one run, same prompts (no seeds, like the bot's requests, unless --seeded): one worker fed one
request at a time
(WORKER_BATCH_SIZE=1, requests sent sequentially), one worker with batching and 16 concurrent
requests, and two batching workers sharing that burst. With --sustained N, also N concurrent requests
(several full batches) through one and through two workers of the full batch size: the load under
which a second worker should double throughput. Needs `redis-server` on PATH.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis.asyncio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.queue.client import RequestQueue  # noqa: E402
from bot.queue.config import QueueConfig  # noqa: E402
from bot.queue.protocol import Delivery, JokeRequest, SamplingParams  # noqa: E402
from bot.queue.results import ResultReader  # noqa: E402
from tests.conftest import RedisServer  # noqa: E402
from tests.worker_process import start_worker, worker_env  # noqa: E402

PROMPTS = ["Штирлиц пришел домой", "Вовочка", "Приходит мужик к врачу", "Армянское радио спросили",
           "Жена говорит мужу", "Встречаются два программиста", "Звонит тёща", "Идёт медведь по лесу"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run_scenario(url: str, model_dir: Path, n_workers: int, batch_size: int, n_requests: int,
                       max_new_tokens: int, concurrent: bool, log_dir: Path, seeded: bool,
                       compile_decode: bool = False, cpu_weights: str = "fp32", threads: int = 1) -> dict:
    def seed_for(i: int) -> int | None:
        return i if seeded else None  # the bot sends no seed; --seeded pins each request's draws
    prefix = f"bench-{uuid.uuid4().hex[:6]}:"
    client = redis.asyncio.from_url(url, decode_responses=True)
    config = QueueConfig(prefix=prefix, max_queue=1000)
    queue, reader = RequestQueue(client, config), ResultReader(client, config)
    await queue.ensure_groups()
    await reader.ensure_group()
    # One intra-op thread per worker by default: a fair split of 2 cores, and the fastest setting for nano.
    env = worker_env(url, prefix, model_dir, WORKER_BATCH_SIZE=str(batch_size), TORCH_THREADS=str(threads),
                     COMPILE_DECODE=str(compile_decode).lower(),
                     # The model is served in the nano slot, whatever its size.
                     CPU_INT8_SIZES="nano" if cpu_weights == "int8" else "",
                     CPU_BF16_SIZES="nano" if cpu_weights == "bf16" else "")
    workers = [start_worker({**env, "WORKER_ID": f"w{i}"}, log_dir / f"w{i}.log") for i in range(n_workers)]
    try:
        while len(await queue.live_workers()) < n_workers:
            await asyncio.sleep(0.1)
        batch = [JokeRequest(prompt=PROMPTS[i % len(PROMPTS)], delivery=Delivery(chat_id=i, message_id=i),
                             sampling=SamplingParams(max_new_tokens=max_new_tokens, seed=seed_for(i)),
                             deadline=time.time() + 600)
                 for i in range(n_requests)]
        latencies, tokens = [], 0
        started = time.perf_counter()

        if concurrent:
            submitted = {}
            for request in batch:
                await queue.submit(request)
                submitted[request.request_id] = time.time()
            pending = set(submitted)
            while pending:
                for item in await reader.read(count=100, block_ms=100):
                    rid = item.result.request_id
                    if item.result.status != "partial" and rid in pending:
                        pending.discard(rid)
                        latencies.append(time.time() - submitted[rid])
                        tokens += item.result.tokens
                    await reader.ack(item)
        else:
            for request in batch:
                sent = time.time()
                await queue.submit(request)
                while True:
                    items = await reader.read(count=10, block_ms=100)
                    done = [i for i in items
                            if i.result.request_id == request.request_id and i.result.status != "partial"]
                    for item in items:
                        await reader.ack(item)
                    if done:
                        latencies.append(time.time() - sent)
                        tokens += done[0].result.tokens
                        break
        wall = time.perf_counter() - started
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=30)
        await client.aclose()
    return {"wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall,
            "p50_s": statistics.median(latencies), "p95_s": percentile(latencies, 0.95)}


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model directory (default: the bundled nano)")
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=120)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seeded", action="store_true", help="give every request a seed (one generator per row)")
    p.add_argument("--compile", action="store_true", help="workers compile their decode step (COMPILE_DECODE=true)")
    p.add_argument("--cpu-weights", choices=["fp32", "bf16", "int8"], default="fp32",
                   help="the workers' Linear weights (CPU_INT8_SIZES / CPU_BF16_SIZES)")
    p.add_argument("--threads", type=int, default=1,
                   help="intra-op threads of a lone worker (TORCH_THREADS); two workers keep one each")
    p.add_argument("--sustained", type=int, default=0, metavar="N",
                   help="also run N concurrent requests through 1 and 2 workers of the full batch size")
    args = p.parse_args()
    if args.model:
        model_dir = Path(args.model).resolve()  # workers run from / (no stray .env)
    else:
        from rujokes_model import pretrained_path
        model_dir = pretrained_path("nano")
    with tempfile.TemporaryDirectory(prefix="rj-bench-") as tmp:
        server = RedisServer(Path(tmp) / "redis", appendonly=False).start()
        try:
            scenarios = {
                "1 worker, one request at a time": (1, 1, False, args.requests),
                f"1 worker, batch ≤ {args.batch_size}, {args.requests} concurrent":
                    (1, args.batch_size, True, args.requests),
                # Half the batch each: a worker takes up to its batch size at once, so with the full size
                # the first worker would take the whole burst and leave the second idle.
                f"2 workers, batch ≤ {args.batch_size // 2} each, {args.requests} concurrent":
                    (2, args.batch_size // 2, True, args.requests),
            }
            if args.sustained:
                for n_workers in (1, 2):
                    scenarios[f"{n_workers} worker{'s' if n_workers > 1 else ''}, batch ≤ {args.batch_size}"
                              f"{' each' if n_workers > 1 else ''}, {args.sustained} concurrent (sustained)"] = (
                        n_workers, args.batch_size, True, args.sustained)
            rows = {}
            for name, (n_workers, batch_size, concurrent, n_requests) in scenarios.items():
                rows[name] = await run_scenario(server.url, model_dir, n_workers, batch_size, n_requests,
                                                args.max_new_tokens, concurrent, Path(tmp), args.seeded,
                                                args.compile, args.cpu_weights,
                                                threads=args.threads if n_workers == 1 else 1)
                print(name, rows[name], flush=True)
        finally:
            server.cleanup()
    base = next(iter(rows.values()))["tokens_per_s"]
    print(f"\n{args.requests} prompts, ≤ {args.max_new_tokens} new tokens, model {model_dir.name}"
          f"{', compiled decode step' if args.compile else ''}, {args.cpu_weights} weights, "
          f"{args.threads} thread{'s' if args.threads > 1 else ''} in a lone worker\n")
    print("| scenario | generated tokens/s | × sequential | p50 latency, s | p95 latency, s |")
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['tokens_per_s']:.0f} | {row['tokens_per_s'] / base:.2f} | "
              f"{row['p50_s']:.2f} | {row['p95_s']:.2f} |")
    if args.sustained:
        one, two = (row["tokens_per_s"] for name, row in rows.items() if "sustained" in name)
        print(f"\nsustained load: 2 workers / 1 worker = {two / one:.2f}×")


if __name__ == "__main__":
    asyncio.run(main())
