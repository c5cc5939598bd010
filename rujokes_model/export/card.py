"""The model card of an export: the source card's metadata and text, plus how to run the exported files."""
from __future__ import annotations

import shutil
from pathlib import Path

from ..config import ModelConfig

CARD_FILE = "README.md"


def _source_card(model_dir: str | Path, revision: str | None):
    """The source's ModelCard, or None when it has none (a bare checkpoint directory)."""
    from huggingface_hub import ModelCard

    from ..hub import resolve_file
    try:
        return ModelCard.load(resolve_file(model_dir, CARD_FILE, revision=revision))
    except (FileNotFoundError, OSError, ValueError):
        return None


def transformers_usage(path: str = ".") -> list[str]:
    """Install line and a snippet that runs as is in the export directory."""
    return [
        "```bash",
        "pip install torch==2.13.0 transformers",
        "```", "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f"path = \"{path}\"  # this directory (or the Hub repo id)",
        "tokenizer = AutoTokenizer.from_pretrained(path)",
        "model = AutoModelForCausalLM.from_pretrained(path)",
        "inputs = tokenizer(\"Штирлиц пришел домой\", return_tensors=\"pt\")  # adds <bos>, as in training",
        "out = model.generate(**inputs)  # the bot's sampling: generation_config.json (top-k 10, 120 new tokens)",
        "print(tokenizer.decode(out[0], skip_special_tokens=True))",
        "```",
    ]


def write_export_card(model_dir: str | Path, out_dir: str | Path, config: ModelConfig, *,
                      revision: str | None = None) -> Path:
    from huggingface_hub import ModelCard, ModelCardData

    from .architecture import target_architecture
    source = _source_card(model_dir, revision)
    data = source.data.to_dict() if source is not None else {}
    data.update(library_name="transformers", pipeline_tag="text-generation")
    data.setdefault("language", "ru")
    data.setdefault("license", "apache-2.0")
    data["tags"] = list(dict.fromkeys([*(data.get("tags") or []), "rujokes", "text-generation"]))
    card_data = ModelCardData(**data)
    kind = {"llama": "LlamaForCausalLM", "deepseek_v2": "DeepseekV2ForCausalLM"}[target_architecture(config)]
    name = data.get("model_name") or "rujokes"
    lines = [
        f"# {name} — transformers export", "",
        f"The rujokes weights as a plain `{kind}`: no custom code, logits equal to the original "
        f"(`rujokes-export --to transformers`). {config.n_layer} layers, d={config.d_model}, "
        f"{config.position} + {config.attention}, context {config.max_seq_len} tokens.", "",
        *transformers_usage(), "",
        "Serving with vLLM: `vllm serve . --max-model-len " + str(config.max_seq_len) + "`.", "",
    ]
    results = source.text.partition("\n## Results")[2] if source is not None else ""
    if results:  # the source card's figures, data, configs and samples; its native-usage snippet stays behind
        lines += ["## Results (of the original)" + results.rstrip(), ""]
        png = Path(model_dir) / "loss.png"
        if png.is_file():
            shutil.copyfile(png, Path(out_dir) / "loss.png")
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n" + "\n".join(lines))
    path = Path(out_dir) / CARD_FILE
    card.save(path)
    return path
