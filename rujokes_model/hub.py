"""Files and the Hugging Face Hub: config.json + model.safetensors (+ tokenizer.json) per directory.

A source is a local directory or a Hub repo id; each model size lives on its own revision
(branch) of one repo: `nano`, `mini`, `small`. Loading is strict: missing or extra keys fail.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import HfApi, hf_hub_download
from safetensors.torch import load_file, save_file

from .config import SIZES, ModelConfig
from .int8_storage import pack_int8, unpack_int8
from .pretrained import pretrained_path

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
NATIVE_MODEL_TYPE = "rujokes"  # a config.json that names this model_type is ours (its `architectures` are ignored)


def resolve_file(repo_or_dir: str | Path, filename: str, *, revision: str | None = None, **hub_kwargs: Any) -> Path:
    """Path of `filename` in a local directory, in the bundled weights of a size named alone ("mini", as
    `load_for_serving` takes it), or downloaded from the Hub repo at `revision`."""
    if str(repo_or_dir) in SIZES and revision is None and not os.path.exists(repo_or_dir):
        repo_or_dir = pretrained_path(str(repo_or_dir))  # our own sizes are no Hub repo
    if os.path.isdir(repo_or_dir):
        path = Path(repo_or_dir) / filename
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        return path
    if Path(repo_or_dir).suffix or str(repo_or_dir).startswith((".", "/", "~")):
        raise FileNotFoundError(f"{repo_or_dir} is neither a directory nor a Hub repo id")
    return Path(hf_hub_download(repo_id=str(repo_or_dir), filename=filename, revision=revision, **hub_kwargs))


# Projections that checkpoints written before the fusion stored separately: fused name → its parts, in row order.
LEGACY_FUSIONS = {"ffn.gate_up.weight": ("ffn.gate.weight", "ffn.up.weight"),
                  "attn.wqkv.weight": ("attn.wq.weight", "attn.wk.weight", "attn.wv.weight")}


def upgrade_legacy_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Concatenate separately stored gate/up and q/k/v projections into their fused parameters.

    Exact (a concatenation of rows), and only when every part is present: anything else is left for
    the strict key check to report.
    """
    state = dict(state)
    for fused, parts in LEGACY_FUSIONS.items():
        for key in [k for k in state if k.endswith("." + parts[0])]:
            prefix = key[: -len(parts[0])]
            if all(prefix + part in state for part in parts) and prefix + fused not in state:
                state[prefix + fused] = torch.cat([state.pop(prefix + part) for part in parts])
    return state


def load_config(repo_or_dir: str | Path, *, revision: str | None = None, **hub_kwargs: Any) -> ModelConfig:
    """The ModelConfig in config.json; a clear error for a transformers export (rujokes_model/export/), whose
    config.json names a transformers `model_type` and `architectures` instead of our fields."""
    config_path = resolve_file(repo_or_dir, CONFIG_FILE, revision=revision, **hub_kwargs)
    data = json.loads(config_path.read_text(encoding="utf-8"))
    if data.get("model_type") == NATIVE_MODEL_TYPE:  # Hub metadata on our own format: not config fields
        data = {k: v for k, v in data.items() if k not in ("model_type", "architectures")}
    if "model_type" in data or "architectures" in data:
        raise ValueError(f"{repo_or_dir} holds a transformers model (model_type={data.get('model_type')!r}, "
                         f"architectures={data.get('architectures')}), not rujokes weights: load it with "
                         "transformers' AutoModelForCausalLM.from_pretrained")
    return ModelConfig.from_dict(data)


def load_model(cls, repo_or_dir: str | Path, *, revision: str | None = None, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32, **hub_kwargs: Any):
    config = load_config(repo_or_dir, revision=revision, **hub_kwargs)
    model = cls(config)
    # int8 checkpoints dequantize here, so they load for a GPU or any path without the CPU kernels.
    state = upgrade_legacy_keys(unpack_int8(load_file(resolve_file(repo_or_dir, WEIGHTS_FILE, revision=revision,
                                                                   **hub_kwargs))))
    if config.tie_embeddings:
        state.setdefault("lm_head.weight", state.get("embed.weight"))
    expected = set(model.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ValueError(f"checkpoint {repo_or_dir} does not match the config: "
                         f"missing keys {sorted(missing)}, unexpected keys {sorted(unexpected)}")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.to(device=device, dtype=dtype).eval()


def save_model(model, save_directory: str | Path, *, dtype: torch.dtype | str | None = None) -> Path:
    """Write config.json and model.safetensors; tied lm_head is stored once (as embed.weight).
    `dtype="int8"` stores matrices as int8 rows with per-row scales (`int8_storage`)."""
    path = Path(save_directory)
    path.mkdir(parents=True, exist_ok=True)
    (path / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n", encoding="utf-8")
    int8 = dtype == "int8"
    state = {k: v.detach().to("cpu", None if int8 else dtype or v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight")
    metadata = {"format": "pt"}
    if int8:
        state, int8_metadata = pack_int8(state)
        metadata.update(int8_metadata)
    save_file(state, str(path / WEIGHTS_FILE), metadata=metadata)
    return path


# Where push_to_hub(export_transformers=True) puts the transformers export on the same revision: a subfolder,
# because both formats name their files config.json and model.safetensors.
TRANSFORMERS_SUBFOLDER = "transformers"


def stage_upload(model, folder: str | Path, *, tokenizer=None, extra_files: dict[str, Path] | None = None,
                 export_transformers: bool = False) -> Path:
    """Write what push_to_hub uploads into `folder`: our files at the top, and with `export_transformers`
    the transformers export (rujokes_model/export/) under `transformers/`, with its own card."""
    folder = Path(folder)
    save_model(model, folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    for name, source in (extra_files or {}).items():
        Path(folder, name).write_bytes(Path(source).read_bytes())
    if export_transformers:
        if tokenizer is None:
            raise ValueError("export_transformers=True needs the tokenizer: the export carries its own")
        from .export.transformers_export import export_transformers as export
        export(folder, folder / TRANSFORMERS_SUBFOLDER)
    return folder


def push_to_hub(model, repo_id: str, *, revision: str, tokenizer=None, extra_files: dict[str, Path] | None = None,
                private: bool | None = None, token: str | None = None, api: HfApi | None = None,
                commit_message: str | None = None, export_transformers: bool = False) -> str:
    """Upload model (+ tokenizer, model card, …) to `repo_id` on branch `revision`, creating both if needed.

    export_transformers: also upload the transformers export in the `transformers/` subfolder of the same
    commit (load it with `AutoModelForCausalLM.from_pretrained(repo_id, revision=..., subfolder="transformers")`).
    """
    api = api or HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.create_branch(repo_id, branch=revision, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        stage_upload(model, tmp, tokenizer=tokenizer, extra_files=extra_files, export_transformers=export_transformers)
        info = api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision,
                                 commit_message=commit_message or f"Upload {revision} weights")
    return str(getattr(info, "commit_url", info))
