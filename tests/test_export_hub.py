"""push_to_hub(export_transformers=True): our files and the transformers export in one commit of one revision.
The Hub is not reachable here, so the tests check the folder that would be uploaded."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM  # noqa: E402

from rujokes_model import ByteLevelBPETokenizer, TransformerForCausalLM  # noqa: E402
from rujokes_model.hub import TRANSFORMERS_SUBFOLDER, stage_upload  # noqa: E402
from tests.model_helpers import make_tiny_model_dir  # noqa: E402


class RecordingHubApi:
    """An HfApi stand-in: records the calls and every file (subfolders included) of the uploaded folder."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.files: dict[str, bytes] = {}

    def create_repo(self, *args, **kwargs):
        self.calls.append("create_repo")

    def create_branch(self, *args, **kwargs):
        self.calls.append("create_branch")

    def upload_folder(self, *, folder_path, revision, **kwargs):
        self.calls.append(f"upload_folder@{revision}")
        root = Path(folder_path)
        self.files = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
        return type("CommitInfo", (), {"commit_url": "https://hf.co/fake/commit/1"})()


@pytest.fixture
def rope_model(tmp_path):
    source = make_tiny_model_dir(tmp_path / "ours", position="rope", attention="mhla", max_seq_len=64)
    return TransformerForCausalLM.from_pretrained(source), ByteLevelBPETokenizer.from_pretrained(source)


def test_push_uploads_native_and_transformers_files_in_one_commit(rope_model, tmp_path):
    model, tokenizer = rope_model
    card = tmp_path / "README.md"
    card.write_text("---\nlicense: apache-2.0\n---\n# rujokes mini\n\n## Results\n\n| a | b |\n", encoding="utf-8")
    api = RecordingHubApi()
    model.push_to_hub("someone/rujokes", revision="mini", tokenizer=tokenizer, api=api,
                      extra_files={"README.md": card}, export_transformers=True)
    assert api.calls == ["create_repo", "create_branch", "upload_folder@mini"]
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(api.files)
    sub = TRANSFORMERS_SUBFOLDER
    assert {f"{sub}/config.json", f"{sub}/model.safetensors", f"{sub}/generation_config.json", f"{sub}/tokenizer.json",
            f"{sub}/tokenizer_config.json", f"{sub}/README.md"} <= set(api.files)
    assert "model_type" not in json.loads(api.files["config.json"])           # ours, for TransformerForCausalLM
    assert json.loads(api.files[f"{sub}/config.json"])["model_type"] == "deepseek_v2"
    assert "## Results" in api.files[f"{sub}/README.md"].decode()             # the export's card keeps the figures


def test_push_without_the_flag_uploads_only_our_files(rope_model):
    model, tokenizer = rope_model
    api = RecordingHubApi()
    model.push_to_hub("someone/rujokes", revision="mini", tokenizer=tokenizer, api=api)
    assert set(api.files) == {"config.json", "model.safetensors", "tokenizer.json"}


def test_the_staged_folder_loads_both_ways(rope_model, tmp_path):
    model, tokenizer = rope_model
    folder = stage_upload(model, tmp_path / "staged", tokenizer=tokenizer, export_transformers=True)
    ours = TransformerForCausalLM.from_pretrained(folder)
    theirs = AutoModelForCausalLM.from_pretrained(folder, subfolder=TRANSFORMERS_SUBFOLDER, dtype=torch.float32)
    ids = torch.randint(3, model.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours(ids), atol=1e-4, rtol=0)


def test_export_needs_the_tokenizer(rope_model, tmp_path):
    model, _ = rope_model
    with pytest.raises(ValueError, match="needs the tokenizer"):
        stage_upload(model, tmp_path / "staged", export_transformers=True)


def test_rujokes_model_imports_without_transformers_or_gguf():
    # Blocking both imports: the library, its Hub code and the export's architecture check must not need them.
    code = ("import sys; sys.modules['transformers'] = None; sys.modules['gguf'] = None\n"
            "import rujokes_model, rujokes_model.hub, rujokes_model.export\n"
            "from rujokes_model import ModelConfig\n"
            "from rujokes_model.export import target_architecture, ExportError\n"
            "assert target_architecture(ModelConfig.preset('mini')) == 'deepseek_v2'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_our_loader_accepts_hub_metadata_keys_on_our_own_config(rope_model, tmp_path):
    model, tokenizer = rope_model
    folder = stage_upload(model, tmp_path / "ours", tokenizer=tokenizer)
    config = json.loads((folder / "config.json").read_text())
    config |= {"model_type": "rujokes", "architectures": ["TransformerForCausalLM"]}
    (folder / "config.json").write_text(json.dumps(config))
    assert TransformerForCausalLM.from_pretrained(folder).config == model.config
