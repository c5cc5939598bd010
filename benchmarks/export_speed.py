"""Generation speed of one model in three runtimes: ours vs its transformers export vs llama.cpp (its GGUF).

Run by hand (not a test); needs the `export` extra (transformers, gguf); llama.cpp only if llama-cpp-python
is installed:

    python benchmarks/export_speed.py --model rujokes_model/weights/mini --batches 1 8 --new-tokens 100 --repeats 3

The model is exported once (rujokes_model/export/) and every runtime runs the same weights in fp32, greedy,
exactly --new-tokens tokens from the same 16-token prompts (no early <eos>), so the greedy tokens must also
agree (printed). Ours runs as the worker serves mini/small (README, "The model"): the compiled decode step with
our int8 CPU weights (COMPILE_DECODE=true, CPU_INT8_SIZES), plus plain eager fp32 for reference.
Each figure is the median of --repeats timed runs after one warm-up, runtimes interleaved so that load from
other processes hits them alike; tok/s counts generated tokens over all rows, prefill included.
llama-cpp-python's high-level API decodes one sequence at a time, so llama.cpp has batch-1 figures only.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from rujokes_model import TransformerForCausalLM, pretrained_path
from rujokes_model.export import export_gguf, export_transformers

PROMPT_LEN = 16


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def ours(model_dir: Path, mode: str) -> TransformerForCausalLM:
    model = TransformerForCausalLM.from_pretrained(model_dir)
    if mode == "compiled+int8w":
        from rujokes_model.lowbit_weights import use_lowbit_weights
        use_lowbit_weights(model, "int8")
    return model


def llama_cpp_runner(gguf_path: Path, n_ctx: int, threads: int):
    try:
        import llama_cpp
    except ImportError:
        return None
    llm = llama_cpp.Llama(model_path=str(gguf_path), n_ctx=n_ctx, n_threads=threads, n_batch=n_ctx, verbose=False)

    def run(prompt: list[int], new_tokens: int) -> list[int]:
        llm.reset()
        out = []
        for token in llm.generate(prompt, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
            out.append(token)
            if len(out) == new_tokens:
                return out
        return out
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(pretrained_path("mini")), help="our model directory (RoPE)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch and llama.cpp threads (default: torch's)")
    args = parser.parse_args()
    torch.set_flush_denormal(True)  # as the worker does
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    import transformers
    from transformers import AutoModelForCausalLM

    model_dir = Path(args.model)
    work = Path(tempfile.mkdtemp(prefix="rujokes-export-speed-"))
    hf_dir = export_transformers(model_dir, work / "transformers")
    gguf_path = export_gguf(model_dir, work / "model.gguf")
    models = {mode: ours(model_dir, mode) for mode in ("eager", "compiled+int8w")}
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    # exactly n tokens, <eos> included, as ours with eos_token_id=None (min_new_tokens would instead
    # forbid <eos> and change the greedy tokens)
    hf.generation_config.eos_token_id = None
    context = models["eager"].config.max_seq_len
    llama = llama_cpp_runner(gguf_path, context, threads)
    print(f"model {model_dir} ({type(hf).__name__}), torch {torch.__version__}, "
          f"transformers {transformers.__version__}, "
          f"llama.cpp {'yes' if llama else 'not installed'}, threads {threads}, greedy, prompt {PROMPT_LEN}, "
          f"new tokens {args.new_tokens}, median of {args.repeats}")
    print(f"{'batch':>5} {'ours eager':>11} {'ours compiled+int8w':>20} {'transformers':>13} {'llama.cpp':>10}"
          "  tokens agree")
    vocab = models["eager"].config.vocab_size
    for batch in args.batches:
        prompt = torch.randint(3, vocab, (batch, PROMPT_LEN), generator=torch.Generator().manual_seed(batch))
        prompt[:, 0] = 1  # <bos>, as every joke starts
        n = args.new_tokens
        outputs: dict[str, object] = {}

        def run_ours(mode: str):
            outputs[mode] = models[mode].generate(prompt, n, do_sample=False, eos_token_id=None,
                                                  compile=mode.startswith("compiled"))[:, PROMPT_LEN:]

        def run_hf():
            with torch.inference_mode():
                outputs["hf"] = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                            max_new_tokens=n, top_k=None, temperature=None)[:, PROMPT_LEN:]

        runs = {"eager": lambda: run_ours("eager"), "compiled+int8w": lambda: run_ours("compiled+int8w"), "hf": run_hf}
        if llama and batch == 1:
            runs["llama.cpp"] = lambda: outputs.__setitem__("llama.cpp", torch.tensor([llama(prompt[0].tolist(), n)]))
        for run in runs.values():  # warm-up: compiles, allocator, lazy imports
            run()
        times = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                times[name].append(timed(run))
        rate = {name: batch * n / statistics.median(t) for name, t in times.items()}
        # eager fp32 is the reference: transformers and llama.cpp run the same fp32 weights (int8 may differ)
        agree = {name: bool(torch.equal(outputs[name], outputs["eager"])) for name in outputs if name != "eager"}
        cell = lambda name: f"{rate[name]:.1f}" if name in rate else "n/a"  # noqa: E731
        print(f"{batch:>5} {cell('eager'):>11} {cell('compiled+int8w'):>20} {cell('hf'):>13} {cell('llama.cpp'):>10}  "
              + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in agree.items()), flush=True)


if __name__ == "__main__":
    main()
