"""Generation speed on CPU: our KV-cached `generate` against 🤗 transformers' LlamaForCausalLM of the same shape.

Run by hand (not a test); needs `pip install transformers` (the `bench` extra):

    python benchmarks/generate_speed.py --sizes nano mini --batches 1 8 --repeats 3 --new-tokens 200

Both models get random weights, fp32, the same prompt and exactly --new-tokens tokens (no early eos).
Each measurement is the median of --repeats timed runs after one warm-up; runs of ours and of HF are
interleaved so that load from other processes hits both alike. tok/s counts generated tokens over all
rows (batch × new tokens), prefill included. The Llama baseline mirrors our dims (vocab, hidden, ffn,
layers, heads, kv heads); MHLA has no Llama counterpart, so it is compared with full MHA (kv = heads).
Denormal floats are flushed to zero for both models, as the worker does (--keep-denormals to compare without).
On a GPU (`--device cuda --dtype bf16`) the default modes add the serving engine's loop replayed from CUDA
graphs ("graphed", "compiled+graphed"), with the whole batch sampled on the device.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rujokes_model import ModelConfig, TransformerForCausalLM
from rujokes_model.compiled_step import compiled_step
from rujokes_model.continuous import ContinuousBatch, RowSettings
from rujokes_model.cpu_kernels import cpu_kernels_supported
from rujokes_model.cuda_graph_step import GraphedDecodeStep

VOCAB_SIZE = 1024
PROMPT_LEN = 16


@dataclass
class Variant:
    label: str                 # what the table row calls it
    config: ModelConfig        # our model
    hf_kv_heads: int           # KV heads of the matching Llama


def variants(size: str, new_tokens: int, preset_only: bool = False) -> list[Variant]:
    """The preset as shipped, plus the other attention kind for the sizes that default to MHLA."""
    context = max(256, PROMPT_LEN + new_tokens)
    context = max(context, ModelConfig.preset(size).max_seq_len)
    default = ModelConfig.preset(size, vocab_size=VOCAB_SIZE, max_seq_len=context)
    kv_heads = default.n_head if default.attention == "mhla" else default.n_kv_head
    found = [Variant(f"{size} {default.position}+{default.attention}", default, kv_heads)]
    if default.attention == "mhla" and not preset_only:
        gqa = ModelConfig.preset(size, vocab_size=VOCAB_SIZE, max_seq_len=context, attention="gqa")
        found.append(Variant(f"{size} {gqa.position}+gqa(kv={gqa.n_kv_head})", gqa, gqa.n_kv_head))
    return found


def hf_llama(config: ModelConfig, kv_heads: int, context: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_config = LlamaConfig(
        vocab_size=config.vocab_size, hidden_size=config.d_model, intermediate_size=config.d_ff,
        num_hidden_layers=config.n_layer, num_attention_heads=config.n_head, num_key_value_heads=kv_heads,
        max_position_embeddings=context, rms_norm_eps=config.norm_eps, tie_word_embeddings=config.tie_embeddings,
        bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return LlamaForCausalLM(hf_config).eval()


def seconds(run: Callable[[], torch.Tensor]) -> float:
    start = time.perf_counter()
    out = run()
    if out.is_cuda:
        torch.cuda.synchronize()  # kernels run asynchronously: time their end, not their launch
    return time.perf_counter() - start


MODES = ("eager", "compiled", "compiled+dynamo", "compiled+blas", "compiled+bf16w", "compiled+int8w",
         "compiled+dynamo+int8w", "graphed", "compiled+graphed")
# Modes that decode as the serving engine does: a continuous batch (sampled on the device on a GPU) whose step
# is replayed from CUDA graphs (rujokes_model/cuda_graph_step.py; on a CPU the same step without capture).
GRAPHED = ("graphed", "compiled+graphed")


def cpu_weights(mode: str) -> str | None:
    """"compiled+int8w" -> "int8": the low-bit CPU weights a mode uses, if any."""
    return mode.rpartition("+")[2].removesuffix("w") if mode.endswith("w") else None


def decode_graphed(model: TransformerForCausalLM, prompt: torch.Tensor, new_tokens: int, sample: bool,
                   step: GraphedDecodeStep) -> torch.Tensor:
    """`new_tokens` per row through a continuous batch decoding with `step` (no host sync per step on a GPU)."""
    batch = ContinuousBatch(model, columns=prompt.shape[1] + new_tokens, step=step)
    settings = [RowSettings(top_k=10, temperature=1.0, seed=row) if sample else RowSettings(temperature=0.0)
                for row in range(prompt.shape[0])]
    batch.join(prompt.tolist(), settings)
    drawn = []
    for _ in range(new_tokens):
        drawn.append(batch.sample())
        batch.feed()
    return torch.cat([prompt, torch.stack(drawn, 1)], 1)


def our_model(config: ModelConfig, mode: str, device: str, dtype: torch.dtype) -> TransformerForCausalLM:
    """Our model in one of MODES; every mode gets the same random weights (seed 0)."""
    torch.manual_seed(0)
    model = TransformerForCausalLM(config).eval().to(device=device, dtype=dtype)
    weights = cpu_weights(mode)
    if weights:
        from rujokes_model.lowbit_weights import use_lowbit_weights
        use_lowbit_weights(model, weights)
    elif device == "cpu" and mode == "compiled+blas" and cpu_kernels_supported():
        from rujokes_model.lowbit_weights import use_cpu_kernels
        use_cpu_kernels(model)  # fp32 products on torch's BLAS, MHLA attention on the kernel (the path before)
    elif device == "cpu" and mode != "eager" and cpu_kernels_supported():
        from rujokes_model.lowbit_weights import use_fp32_kernels
        use_fp32_kernels(model)  # as the worker serves fp32 models: products and MHLA attention on the kernels
    if "dynamo" in mode:  # torch.compile's graphs instead of the library built ahead of time (the path before)
        compiled_step(model).ahead_of_time = False
    return model


def bench_variant(variant: Variant, batch: int, new_tokens: int, repeats: int, sample: bool,
                  device: str = "cpu", dtype: torch.dtype = torch.float32,
                  modes: tuple[str, ...] = MODES) -> tuple[dict[str, float], float]:
    """({mode: our tok/s}, HF tok/s) for one variant at one batch size."""
    ours = {mode: our_model(variant.config, mode, device, dtype) for mode in modes}
    torch.manual_seed(0)
    theirs = hf_llama(variant.config, variant.hf_kv_heads, variant.config.max_seq_len).to(device=device, dtype=dtype)
    prompt = torch.randint(3, VOCAB_SIZE, (batch, PROMPT_LEN), generator=torch.Generator().manual_seed(1)).to(device)
    mask = torch.ones_like(prompt)
    sampling = dict(do_sample=True, top_k=10) if sample else dict(do_sample=False)
    steps = {mode: GraphedDecodeStep(ours[mode], max_rows=batch,
                                     inner=compiled_step(ours[mode]) if mode.startswith("compiled") else None)
             for mode in modes if mode in GRAPHED}

    def run_ours(mode: str) -> torch.Tensor:
        if mode in GRAPHED:
            out = decode_graphed(ours[mode], prompt, new_tokens, sample, steps[mode])
        else:
            out = ours[mode].generate(prompt, new_tokens, eos_token_id=None, use_cache=True,
                                      compile=mode.startswith("compiled"), **sampling)
        assert out.shape == (batch, PROMPT_LEN + new_tokens)
        return out

    def run_hf() -> torch.Tensor:
        with torch.inference_mode():
            out = theirs.generate(prompt, attention_mask=mask, min_new_tokens=new_tokens, max_new_tokens=new_tokens,
                                  use_cache=True, **sampling)
        assert out.shape == (batch, PROMPT_LEN + new_tokens)
        return out

    runs = {mode: (lambda mode=mode: run_ours(mode)) for mode in modes} | {"hf": run_hf}
    for run in runs.values():  # warm-up: allocator, kernels, lazy imports, compiles
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):  # interleaved so background load hits every run alike
        for name, run in runs.items():
            times[name].append(seconds(run))
    tokens = batch * new_tokens
    rates = {name: tokens / statistics.median(t) for name, t in times.items()}
    return {mode: rates[mode] for mode in modes}, rates["hf"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["nano", "mini"], choices=["nano", "mini", "small"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--preset-only", action="store_true", help="skip the GQA variant of the MHLA sizes")
    parser.add_argument("--sample", action="store_true", help="top-k 10 sampling instead of greedy")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--modes", nargs="+", choices=MODES,
                        help="our variants: eager steps, the compiled step (fp32 weights on our CPU kernels, as "
                             "served: on a CPU built ahead of time), the same compiled by torch.compile "
                             "(compiled+dynamo), with fp32 products on torch's BLAS (compiled+blas), with our bf16 "
                             "or int8 CPU weight kernels (compiled+dynamo+int8w: int8 on torch.compile's graphs), "
                             "the serving engine's loop replayed from CUDA graphs "
                             "(default: the kernels' modes on a CPU, the graphed ones on a GPU)")
    parser.add_argument("--keep-denormals", action="store_true",
                        help="leave denormal floats on (the worker flushes them; applies to both models alike)")
    args = parser.parse_args()
    if not args.keep_denormals:
        torch.set_flush_denormal(True)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    if args.threads:
        torch.set_num_threads(args.threads)

    import transformers
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}, "
          f"{'top-k 10 sampling' if args.sample else 'greedy'}, prompt {PROMPT_LEN}, new tokens {args.new_tokens}, "
          f"median of {args.repeats}, {args.device} {args.dtype}, "
          f"denormals {'kept' if args.keep_denormals else 'flushed'}")
    cuda = args.device.startswith("cuda")
    chosen = args.modes or [mode for mode in MODES if mode in ("eager", "compiled") or (mode in GRAPHED) == cuda]
    modes = tuple(mode for mode in chosen if not (cpu_weights(mode) and cuda))
    header = f"{'variant':<28} {'params':>7} {'batch':>5} {'HF tok/s':>9} " + " ".join(
        f"{mode + ' tok/s (×HF)':>28}" for mode in modes)
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        for variant in variants(size, args.new_tokens, args.preset_only):
            with torch.device("meta"):
                params = TransformerForCausalLM(variant.config).num_parameters()
            for batch in args.batches:
                ours, theirs = bench_variant(variant, batch, args.new_tokens, args.repeats, args.sample,
                                             args.device, dtype, modes)
                print(f"{variant.label:<28} {params / 1e6:>6.1f}M {batch:>5} {theirs:>9.1f} " + " ".join(
                    f"{f'{ours[mode]:.1f} ({ours[mode] / theirs:.2f}×)':>28}" for mode in modes), flush=True)


if __name__ == "__main__":
    main()
