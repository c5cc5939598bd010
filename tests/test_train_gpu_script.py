"""scripts/train_gpu.py end to end on a CPU (its --smoke plan), then scripts/install_gpu_weights.py on what it packed.

The GPU run itself happens rarely and on a 15-minute allowance: this is the rehearsal that must pass first.
It reads compressed corpora (as the GPU machine gets them), trains every size in two stages, bundles them
in their shipped formats, packs the export into returns that fit the machine's limits, and installs them.
"""
from __future__ import annotations

import importlib.util
import json
import lzma
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from rujokes_model import ByteLevelBPETokenizer, TransformerForCausalLM
from tests.model_helpers import write_jokes
from tests.test_trainer_stages import write_general_corpus
from trainer.parts import RETURN_MAX_BYTES, RETURN_MAX_FILE_BYTES, RETURN_MAX_FILES

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke_export(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu_script")
    jokes = write_jokes(folder / "jokes.jsonl")
    literature = write_general_corpus(folder / "literature.jsonl")
    packed = folder / "literature.jsonl.xz"
    packed.write_bytes(lzma.compress(literature.read_bytes()))
    command = [sys.executable, str(ROOT / "scripts" / "train_gpu.py"), "--smoke", "--runs", str(folder / "runs"),
               "--data", str(jokes), "--pretrain-data", str(packed), "--weights-root", str(folder / "bundled"),
               "--export", str(folder / "out"), "--budget-s", "500"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=folder)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return folder, done.stdout


def test_every_size_trains_in_two_stages_and_is_bundled_in_its_shipped_format(smoke_export):
    folder, _ = smoke_export
    summary = json.loads((folder / "out" / "summary.json").read_text())
    assert set(summary) == {"nano", "mini", "small"}
    for figures in summary.values():
        assert figures["pretrain_steps"] >= 1 and figures["steps"] >= 1 and figures["val_bpc"] > 0
    for size, kind in {"nano": "F32", "mini": "I8", "small": "I8"}.items():
        with safe_open(folder / "bundled" / size / "model.safetensors", "pt") as weights:
            kinds = {weights.get_slice(name).get_dtype() for name in weights.keys()}
        assert kind in kinds


def test_the_export_fits_one_return_of_the_gpu_machine(smoke_export):
    folder, _ = smoke_export
    files = [p for p in (folder / "out").rglob("*") if p.is_file()]
    assert len(files) <= RETURN_MAX_FILES
    assert all(p.stat().st_size <= RETURN_MAX_FILE_BYTES for p in files)
    assert sum(p.stat().st_size for p in files) <= RETURN_MAX_BYTES


def test_what_came_back_installs_and_small_generates_from_it(smoke_export, tmp_path):
    folder, _ = smoke_export
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "install_gpu_weights.py"), str(folder / "out"),
                           "--work", str(tmp_path / "work"), "--weights-root", str(tmp_path / "weights")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    for size in ("nano", "mini", "small"):
        assert f"{size}: installed" in done.stdout
    small = tmp_path / "weights" / "small"
    assert "Training stages" in (small / "README.md").read_text()
    model, tokenizer = TransformerForCausalLM.from_pretrained(small), ByteLevelBPETokenizer.from_pretrained(small)
    prompt = torch.tensor([tokenizer.encode("Штирлиц")])
    out = model.generate(prompt, max_new_tokens=5, do_sample=False)
    assert out.shape == (1, prompt.shape[1] + 5)


def install(folder: Path, weights: Path, work: Path, *extra: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "install_gpu_weights.py"), str(folder / "out"),
                           "--work", str(work), "--weights-root", str(weights), "--sizes", "nano",
                           "--data", str(folder / "jokes.jsonl"), *extra], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_a_newcomer_replaces_a_bundled_model_only_where_it_scores_better(smoke_export, tmp_path):
    folder, _ = smoke_export
    newcomer = folder / "bundled" / "nano"
    weights = tmp_path / "weights"
    shutil.copytree(newcomer, weights / "nano")  # the same weights bundled already: a tie is not a win
    assert "nano: kept the bundled weights" in install(folder, weights, tmp_path / "w1")
    worse = TransformerForCausalLM.from_pretrained(newcomer)
    with torch.no_grad():
        for parameter in worse.parameters():
            parameter.add_(torch.randn_like(parameter) * 3)
    worse.save_pretrained(weights / "nano")
    assert "nano: installed" in install(folder, weights, tmp_path / "w2")
    assert (weights / "nano" / "model.safetensors").read_bytes() == (newcomer / "model.safetensors").read_bytes()
    worse.save_pretrained(weights / "nano")
    # --force installs whatever came back, unscored.
    assert "nano: installed" in install(folder, weights, tmp_path / "w3", "--force", "--data", "/nonexistent")


def test_caps_shrink_to_fit_the_budget_and_never_grow():
    script = load_script("train_gpu")
    names = list(script.PLAN)
    caps = sum(script.PLAN[n][1]["time_limit_s"] for n in names)
    assert script.time_scale(names, None, 1.0) == 1.0
    assert script.time_scale(names, 10_000.0, 1.0) == 1.0  # plenty of time: the plan's own caps
    tight = caps / 2 + script.RUN_OVERHEAD_S * len(names)
    assert script.time_scale(names, tight, 1.0) == pytest.approx(0.5)
    assert script.time_scale(names[1:], 0.0, 1.0) > 0  # overrun already: the last runs still get a few steps
