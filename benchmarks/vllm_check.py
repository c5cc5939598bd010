"""Does vLLM serve our transformers export with our tokens? Greedy tokens, ours vs vLLM's, on the CPU (run by hand).

vLLM pins its own torch and transformers, so it lives in a venv of its own; this script runs in both:

    rujokes-export --to transformers rujokes_model/weights/mini /tmp/mini-hf
    .venv/bin/python benchmarks/vllm_check.py ours /tmp/mini-hf --out /tmp/ours.json     # our model, our venv
    /path/to/vllm-venv/bin/python benchmarks/vllm_check.py vllm /tmp/mini-hf --expect /tmp/ours.json

`ours` greedily continues a few Russian prompts with the rujokes model the export came from (--model,
default the bundled mini) and writes the prompts' token ids and the new tokens; `vllm` loads the export
with `vllm.LLM` (CPU, eager, bf16; attention on decompressed keys, see `vllm`), encodes the same prompts with the
exported tokenizer, generates greedily and compares: the prompt ids must be ours, and the greedy tokens agree
until bf16's rounding first flips an argmax (how far, per prompt, is printed). Exits 1 on a mismatch of the
prompt ids or of the first new token.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

PROMPTS = ["Штирлиц пришел домой", "Вовочка спрашивает учительницу", "Приходит мужик к врачу",
           "Встречаются два программиста 😀"]


def ours(export: Path, model_dir: Path, new_tokens: int, out: Path) -> None:
    import torch

    from rujokes_model import ByteLevelBPETokenizer, TransformerForCausalLM

    model = TransformerForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = ByteLevelBPETokenizer.from_pretrained(model_dir)
    rows = []
    for prompt in PROMPTS:
        ids = tokenizer.encode(prompt)
        with torch.inference_mode():
            out_ids = model.generate(torch.tensor([ids]), new_tokens, do_sample=False, eos_token_id=None)
        rows.append({"prompt": prompt, "prompt_ids": ids, "new_ids": out_ids[0, len(ids):].tolist()})
    out.write_text(json.dumps({"export": str(export), "rows": rows}, ensure_ascii=False, indent=1))
    print(f"{len(rows)} prompts, {new_tokens} greedy tokens each, written to {out}")


def vllm(export: Path, expect: Path, new_tokens: int, dtype: str, memory: float) -> int:
    # vLLM's CPU MLA kernels take only DeepSeek's own latent width (512 + 64); ours is 128 + 32, so attention
    # runs on decompressed keys and values instead (the same function, more memory per token).
    os.environ.setdefault("VLLM_MLA_DISABLE", "1")
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    rows = json.loads(expect.read_text())["rows"]
    tokenizer = AutoTokenizer.from_pretrained(export)
    started = time.perf_counter()
    # "-rotary_embedding": vLLM's CPU rotary kernel is wrong for (tokens, heads, dim) inputs with more than one
    # head, which DeepSeek-V2's non-MLA attention passes (its own forward_native is right): without this every
    # greedy token differed from the first one.
    llm = LLM(model=str(export), dtype=dtype, max_model_len=257, enforce_eager=True, gpu_memory_utilization=memory,
              compilation_config={"custom_ops": ["-rotary_embedding"]})
    print(f"vLLM loaded {export} in {time.perf_counter() - started:.1f} s")
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    prompts = [TokensPrompt(prompt_token_ids=row["prompt_ids"]) for row in rows]
    started = time.perf_counter()
    outputs = llm.generate(prompts, params)
    seconds = time.perf_counter() - started
    failures = 0
    for row, output in zip(rows, outputs):
        theirs = list(output.outputs[0].token_ids)
        same_prompt = tokenizer(row["prompt"])["input_ids"] == row["prompt_ids"]
        agree = next((i for i, (a, b) in enumerate(zip(theirs, row["new_ids"])) if a != b), len(theirs))
        ok = same_prompt and theirs == row["new_ids"]
        failures += not same_prompt or agree == 0
        ids = "same ids" if same_prompt else "DIFFERENT ids"
        print(f"{'ok ' if ok else 'BAD'} {row['prompt']!r}: tokenizer {ids}, {agree}/{len(row['new_ids'])} greedy "
              "tokens agree")
    print(f"{len(rows)} prompts × {new_tokens} tokens in {seconds:.2f} s; {failures} mismatched")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("side", choices=["ours", "vllm"])
    parser.add_argument("export", type=Path, help="the directory rujokes-export --to transformers wrote")
    parser.add_argument("--model", type=Path, help="ours: the rujokes model directory (default: the bundled mini)")
    parser.add_argument("--out", type=Path, default=Path("ours.json"))
    parser.add_argument("--expect", type=Path, default=Path("ours.json"))
    parser.add_argument("--new-tokens", type=int, default=40)
    parser.add_argument("--dtype", default="bfloat16",
                        help="vllm: the weights' dtype; vLLM's CPU MLA kernels take bf16 (or 8-bit), not fp32")
    parser.add_argument("--memory", type=float, default=0.25,
                        help="vllm: the share of the machine's memory it reserves (its gpu_memory_utilization, which "
                             "on the CPU means RAM; its default 0.92 fails beside anything else running)")
    args = parser.parse_args()
    if args.side == "ours":
        from rujokes_model import pretrained_path

        ours(args.export, args.model or pretrained_path("mini"), args.new_tokens, args.out)
        return 0
    return vllm(args.export, args.expect, args.new_tokens, args.dtype, args.memory)


if __name__ == "__main__":
    sys.exit(main())
