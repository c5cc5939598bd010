"""What a training run leaves for people: the loss-curve PNG and the model card README.md."""
from __future__ import annotations

import json
from pathlib import Path

import torch

SAMPLE_PROMPTS = ["Штирлиц пришел домой", "Вовочка", "Приходит мужик к врачу", "Встречаются два программиста",
                  "Армянское радио спросили"]


def read_metrics(out_dir: Path) -> list[dict]:
    path = Path(out_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_losses(out_dir: Path, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    metrics = read_metrics(out_dir)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot([m["tokens_seen"] / 1e6 for m in metrics], [m["train_loss"] for m in metrics],
            label="train", alpha=0.7, linewidth=1)
    val = [m for m in metrics if "val_loss" in m]
    ax.plot([m["tokens_seen"] / 1e6 for m in val], [m["val_loss"] for m in val], "o-", label="validation")
    ax.set_xlabel("tokens seen, millions")
    ax.set_ylabel("loss, nats/token")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    path = Path(out_dir) / "loss.png"
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def sample_jokes(
    model, tokenizer, prompts: list[str] = SAMPLE_PROMPTS, seed: int = 0, max_new_tokens: int = 120
) -> list[tuple[str, str]]:
    """A sample per prompt as users get it: the bot's sampling, a sample cut by its limit ended after a sentence."""
    from rujokes_model.serving import ServingModel

    generator = torch.Generator(device=model.device).manual_seed(seed)
    served = ServingModel(model, tokenizer)
    return [(prompt, served.complete(prompt, max_new_tokens, generator=generator)[0]) for prompt in prompts]


def card_metadata(*, size: str, data_source: str, final_eval: dict, datasets: list[str] | None = None):
    """The card's YAML header: license, language, library, pipeline, datasets and the validation scores as
    model-index eval results (what the Hub shows next to the model)."""
    from huggingface_hub import EvalResult, ModelCardData

    dataset = (datasets or [None])[0] or (data_source.removeprefix("hf://") if data_source.startswith("hf://")
                                          else Path(data_source).stem)
    metrics = [("val_bpc", "bits_per_character", "validation bits per character"),
               ("val_loss", "loss", "validation loss, nats/token")]
    results = [EvalResult(task_type="text-generation", task_name="Russian jokes", dataset_type=dataset,
                          dataset_name=dataset.rsplit("/", 1)[-1], dataset_split="validation",
                          metric_type=kind, metric_name=name, metric_value=round(float(final_eval[key]), 4))
               for key, kind, name in metrics if key in final_eval]
    return ModelCardData(language="ru", license="apache-2.0", library_name="rujokes", pipeline_tag="text-generation",
                         tags=["text-generation", "jokes"], datasets=datasets or None,
                         model_name=f"rujokes {size}", eval_results=results or None)


def usage_lines(size: str) -> list[str]:
    """Install line and a snippet that runs as is in the directory holding the card (or from the Hub repo)."""
    return [
        "```bash",
        "# from a checkout of the rujokes repository",
        "pip install torch==2.13.0 && pip install -e .",
        "```", "",
        "```python",
        "import torch",
        "from rujokes_model import TransformerForCausalLM, ByteLevelBPETokenizer",
        "",
        "path = \".\"  # the directory of this card; or the Hub repo id (same revision)",
        f"model = TransformerForCausalLM.from_pretrained(path, revision=\"{size}\")",
        f"tokenizer = ByteLevelBPETokenizer.from_pretrained(path, revision=\"{size}\")",
        "ids = torch.tensor([tokenizer.encode(\"Штирлиц пришел домой\")])",
        "out = model.generate(ids, max_new_tokens=120, eos_token_id=tokenizer.eos_token_id, do_sample=True, top_k=10)",
        "print(tokenizer.decode(out[0].tolist()))",
        "```",
    ]


def write_model_card(out_dir: Path, *, size: str, model, tokenizer, train_config: dict, data_source: str,
                     n_train: int, n_val: int, tokens_seen: int, wall_time_s: float, hardware: str,
                     final_eval: dict, steps: int, sample_tokens: int = 120, selected_step: int | None = None,
                     datasets: list[str] | None = None, training_stages: list[dict] | None = None,
                     memorisation: dict | None = None) -> Path:
    """README.md as a huggingface_hub ModelCard. datasets: Hub dataset ids for the metadata (default: the
    hf:// source, if any); training_stages: dicts of name, corpus, steps, tokens, shown as a table;
    memorisation: `MemorisationReport.to_dict()` of the run's samples."""
    from huggingface_hub import ModelCard

    if datasets is None and data_source.startswith("hf://"):
        datasets = [data_source.removeprefix("hf://")]
    config = model.config.to_dict()
    samples = sample_jokes(model, tokenizer, max_new_tokens=sample_tokens)
    lines = [
        f"# rujokes {size}", "",
        f"A {model.num_parameters() / 1e6:.2f} M-parameter decoder-only Transformer that writes Russian jokes "
        f"(анекдоты), trained by `rujokes-train --size {size}`.", "",
        *usage_lines(size), "",
        "## Results", "",
        "| metric | value |", "|---|---|",
        f"| validation loss, nats/token | {final_eval.get('val_loss', float('nan')):.4f} |",
        f"| validation bits per character | {final_eval.get('val_bpc', float('nan')):.4f} |",
        f"| characters per token | {final_eval.get('chars_per_token', float('nan')):.3f} |",
        f"| parameters | {model.num_parameters():,} |",
        f"| tokens seen | {tokens_seen:,} |",
        f"| optimizer steps | {steps:,} |",
        *([f"| weights from step | {selected_step:,} (lowest validation bits/char; later steps overfitted) |"]
          if selected_step and selected_step != steps else []),
        f"| wall time | {wall_time_s / 60:.1f} min |",
        f"| hardware | {hardware} |", "",
        "Bits per character: summed token NLL (joke tokens and `<eos>`) in bits over the jokes' characters.", "",
        "![loss curves](loss.png)", "",
        "## Data", "",
        f"`{data_source}`: {n_train:,} training and {n_val:,} validation jokes (deterministic split by a hash of "
        "the text; see `trainer/data.py`).", "",
        *stage_lines(training_stages),
        *memorisation_lines(memorisation),
        "## Model config", "", "```json", json.dumps(config, indent=2), "```", "",
        "## Training config", "", "```json", json.dumps(train_config, indent=2), "```", "",
        f"## Samples (top-k 10, seed 0, ≤ {sample_tokens} new tokens; one cut by its limit ends after its last "
        "sentence, as the bot's jokes do)", "",
    ]
    for prompt, text in samples:
        lines += [f"**{prompt}** →", "", "> " + text.replace("\n", "\n> "), ""]
    data = card_metadata(size=size, data_source=data_source, final_eval=final_eval, datasets=datasets)
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n" + "\n".join(lines))
    path = Path(out_dir) / "README.md"
    card.save(path)
    return path


def stage_lines(stages: list[dict] | None) -> list[str]:
    """A "Training stages" table: what each stage (pretraining, then the jokes) saw, oldest first."""
    if not stages:
        return []
    lines = ["## Training stages", "", "| stage | corpus | documents | optimizer steps | tokens seen | val bits/char |",
             "|---|---|---|---|---|---|"]
    for stage in stages:
        bpc = stage.get("val_bpc")
        cells = [f"{stage[k]:,}" if isinstance(stage.get(k), int) else "" for k in ("documents", "steps", "tokens")]
        lines.append(f"| {stage.get('name', '?')} | `{stage.get('corpus', '?')}` | {' | '.join(cells)} | "
                     f"{'' if bpc is None else f'{bpc:.4f}'} |")
    return [*lines, "", "Each stage's bits/char is on its own corpus's validation split.", ""]


def memorisation_lines(report: dict | None) -> list[str]:
    """How often samples copy the training set verbatim (trainer/memorisation.py)."""
    if not report:
        return []
    longest = f"; the longest shared run is {report['longest_run_words']} words" if report["copying"] else ""
    return ["## Memorisation", "",
            f"{report['copying']} of {report['samples']} samples ({100 * report['copy_rate']:.1f}%; top-k 10, "
            f"temperature 1) share a run of ≥ {report['min_words']} consecutive words with a training joke{longest}.",
            ""]
