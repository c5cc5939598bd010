"""Training throughput (tokens/s) per size and attention variant; run by hand, prints a table.

    python benchmarks/train_speed.py [--sizes nano mini] [--seq-len 128] [--batch 32] [--vocab 1024]

Full optimizer steps (forward, backward, AdamW) on random packed rows with document masks, as the
trainer runs them; the first step is a warm-up and is not timed.
"""
from __future__ import annotations

import argparse
import time

import torch

from rujokes_model import ModelConfig, TransformerForCausalLM
from trainer.schedule import build_optimizer


def tokens_per_second(config: ModelConfig, batch: int, seq_len: int, steps: int) -> float:
    torch.manual_seed(0)
    model = TransformerForCausalLM(config)
    optimizer = build_optimizer(model, 1e-3, 0.1)
    tokens = torch.randint(0, config.vocab_size, (batch, seq_len + 1))
    # ~100-token documents, like the joke corpus
    documents = torch.cumsum((torch.rand(batch, seq_len) < 0.01).long(), dim=1)
    elapsed = 0.0
    for step in range(steps + 1):
        started = time.perf_counter()
        loss = model.loss(tokens[:, :-1], tokens[:, 1:], document_ids=documents)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:
            elapsed += time.perf_counter() - started
    return batch * seq_len * steps / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["nano", "mini"])
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    print(f"T={args.seq_len}, B={args.batch}, V={args.vocab}, {torch.get_num_threads()} threads\n")
    print("| size | position | attention | parameters | tokens/s |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        for position, attention in (("alibi", "gqa"), ("rope", "gqa"), ("rope", "mhla")):
            config = ModelConfig.preset(size, vocab_size=args.vocab, position=position, attention=attention)
            speed = tokens_per_second(config, args.batch, args.seq_len, args.steps)
            params = sum(p.numel() for p in TransformerForCausalLM(config).parameters())
            print(f"| {size} | {position} | {attention} | {params:,} | {speed:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
