"""Two-stage training: pretrain on a general corpus, fine-tune on the jokes (`--init-from`), and EMA weights."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rujokes_model import ByteLevelBPETokenizer, TransformerForCausalLM
from tests.model_helpers import russian_sentences, write_jokes
from trainer.cli import train_main
from trainer.ema import EMAWeights
from trainer.recipes import TrainConfig
from trainer.report import read_metrics
from trainer.stages import PRETRAIN_DIR, stage_configs, train_two_stage
from trainer.train import CHECKPOINT_DIR, STAGES_FILE, train

TINY_MODEL = {"n_layer": 1, "d_model": 32, "n_head": 2, "n_kv_head": 1, "d_ff": 64}


def tiny_config(**fields) -> TrainConfig:
    defaults = dict(size="nano", vocab_size=300, seq_len=32, batch_size=4, lr=3e-3, steps=24, warmup_steps=2,
                    eval_every=1000, checkpoint_every=1000, val_fraction=0.1, model_overrides=dict(TINY_MODEL),
                    card_memorisation_samples=0)
    return TrainConfig(**{**defaults, **fields})


def write_general_corpus(path: Path, count: int = 60) -> Path:
    """Book-like chunks: several sentences per document, unlike the one-line jokes."""
    sentences = russian_sentences(count * 6, seed=7)
    chunks = [" ".join(sentences[i:i + 6]) for i in range(0, len(sentences), 6)]
    path.write_text("".join(json.dumps({"text": c, "author": "Тест"}, ensure_ascii=False) + "\n" for c in chunks),
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> tuple[str, str]:
    folder = tmp_path_factory.mktemp("corpora")
    return str(write_general_corpus(folder / "literature.jsonl")), str(write_jokes(folder / "jokes.jsonl"))


@pytest.fixture(scope="module")
def two_stage_run(tmp_path_factory, corpora):
    general, jokes = corpora
    out = tmp_path_factory.mktemp("two_stage")
    result = train_two_stage(tiny_config(steps=40, card_memorisation_samples=10), general, jokes, out,
                             pretrain_share=0.5, progress=False, cpu=True)
    return out, result


def test_each_stage_lowers_its_own_training_loss(two_stage_run):
    out, _ = two_stage_run
    for stage_dir in (out / PRETRAIN_DIR, out):
        losses = [r["train_loss"] for r in read_metrics(stage_dir)]
        assert len(losses) == 20
        assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.3, stage_dir


def test_the_second_stage_starts_from_the_first_stages_weights(two_stage_run, corpora, tmp_path):
    out, _ = two_stage_run
    _, jokes = corpora
    # From scratch, the first jokes step sees a random model; from the pretrained weights a far lower loss.
    scratch = train(tiny_config(steps=1), jokes, tmp_path, progress=False, cpu=True)
    assert scratch.steps == 1
    first_from_scratch = read_metrics(tmp_path)[0]["train_loss"]
    first_after_pretraining = read_metrics(out)[0]["train_loss"]
    assert first_after_pretraining < first_from_scratch - 0.5


def test_both_stages_share_one_tokenizer_trained_on_both_corpora(two_stage_run):
    out, result = two_stage_run
    first = (out / PRETRAIN_DIR / "tokenizer.json").read_text(encoding="utf-8")
    assert (out / "tokenizer.json").read_text(encoding="utf-8") == first
    assert result.tokenizer.vocab_size == ByteLevelBPETokenizer.from_file(out / PRETRAIN_DIR / "tokenizer.json").vocab_size


def test_stages_file_and_card_name_both_corpora(two_stage_run):
    out, _ = two_stage_run
    stages = json.loads((out / STAGES_FILE).read_text(encoding="utf-8"))
    assert [s["name"] for s in stages] == ["pretrain", "jokes"]
    assert [s["corpus"] for s in stages] == ["literature.jsonl", "jokes.jsonl"]
    assert all(s["steps"] == 20 and s["tokens"] == 20 * 4 * 32 for s in stages)
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "## Training stages" in card
    assert "`literature.jsonl`" in card and "`jokes.jsonl`" in card


def test_card_reports_how_often_samples_copy_the_training_jokes(two_stage_run):
    out, _ = two_stage_run
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "## Memorisation" in card
    assert "of 10 samples" in card
    # The first stage's card checks no literature samples against literature.
    assert "## Memorisation" not in (out / PRETRAIN_DIR / "README.md").read_text(encoding="utf-8")


def test_budget_is_shared_between_the_stages(tmp_path):
    first, second = stage_configs(tiny_config(steps=None, cpu_budget_s=100.0, time_limit_s=50.0), tmp_path,
                                  pretrain_share=0.25, pretrain_epochs=1.0)
    assert (first.cpu_budget_s, second.cpu_budget_s) == (25.0, 75.0)
    assert (first.time_limit_s, second.time_limit_s) == (12.5, 37.5)
    assert second.init_from == str(tmp_path) and first.init_from is None
    by_epochs = stage_configs(tiny_config(steps=None, epochs=5.0), tmp_path, pretrain_share=0.5, pretrain_epochs=2.0)
    assert (by_epochs[0].epochs, by_epochs[1].epochs) == (2.0, 5.0)
    with pytest.raises(ValueError, match="pretrain_share"):
        stage_configs(tiny_config(), tmp_path, pretrain_share=1.0, pretrain_epochs=1.0)


def test_init_from_keeps_the_tokenizer_and_model_config(two_stage_run, corpora, tmp_path):
    out, _ = two_stage_run
    _, jokes = corpora
    # A different vocab size and preset in the config: the saved model's own win.
    config = tiny_config(steps=3, vocab_size=512, init_from=str(out), model_overrides={"dropout": 0.1})
    result = train(config, jokes, tmp_path, progress=False, cpu=True)
    saved = json.loads((out / "config.json").read_text())
    assert result.model.config.to_dict() == {**saved, "dropout": 0.1}
    assert (tmp_path / "tokenizer.json").read_text(encoding="utf-8") == (out / "tokenizer.json").read_text(
        encoding="utf-8")
    stages = json.loads((tmp_path / STAGES_FILE).read_text(encoding="utf-8"))
    assert [s["name"] for s in stages] == ["pretrain", "jokes", "nano"]


def test_init_from_a_model_whose_context_is_too_short_is_an_error(two_stage_run, corpora, tmp_path):
    out, _ = two_stage_run
    with pytest.raises(ValueError, match="max_seq_len"):
        train(tiny_config(steps=1, seq_len=4096, init_from=str(out)), corpora[1], tmp_path, progress=False, cpu=True)


def test_resume_inside_the_second_stage_matches_an_uninterrupted_run(corpora, tmp_path):
    general, jokes = corpora
    straight, paused = tmp_path / "straight", tmp_path / "paused"
    config = tiny_config(steps=16, checkpoint_every=4)
    train_two_stage(config, general, jokes, straight, progress=False, cpu=True)
    # Interrupt the second stage after its checkpoint at step 4: finish the first, pause the second.
    first, second = stage_configs(config, paused / PRETRAIN_DIR, pretrain_share=0.5, pretrain_epochs=1.0)
    train_two_stage(config, general, jokes, paused, progress=False, cpu=True)  # the whole first pass
    (paused / "model.safetensors").unlink()
    train(second, jokes, paused, progress=False, cpu=True, stop_after=4)
    pretrain_files = {p.name: p.stat().st_mtime_ns for p in (paused / PRETRAIN_DIR).iterdir()}
    result = train_two_stage(config, general, jokes, paused, resume=True, progress=False, cpu=True)
    # The finished first stage was not trained again, and the second continued from its checkpoint.
    assert {p.name: p.stat().st_mtime_ns for p in (paused / PRETRAIN_DIR).iterdir()} == pretrain_files
    assert json.loads((paused / CHECKPOINT_DIR / "trainer_state.json").read_text())["step"] == 8
    assert result.steps == 8
    for name, value in load_file(straight / "model.safetensors").items():
        torch.testing.assert_close(load_file(paused / "model.safetensors")[name], value, atol=1e-6, rtol=0)


def test_cli_runs_two_stages_and_then_a_third_with_init_from(corpora, tmp_path, capsys):
    general, jokes = corpora
    common = ["--size", "nano", "--steps", "6", "--batch-size", "4", "--seq-len", "32", "--vocab-size", "300",
              "--cpu", "--no-progress", *[a for k, v in TINY_MODEL.items() for a in ("--model-override", f"{k}={v}")]]
    assert train_main([*common, "--data", jokes, "--pretrain-data", general, "--out", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / PRETRAIN_DIR / "model.safetensors").is_file()
    assert train_main([*common, "--data", jokes, "--init-from", str(tmp_path / "a"), "--out",
                       str(tmp_path / "b")]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 6
    assert TransformerForCausalLM.from_pretrained(tmp_path / "b").config == \
        TransformerForCausalLM.from_pretrained(tmp_path / "a").config


# ---------------------------------------------------------------- EMA

def test_ema_is_a_warmed_up_moving_average_of_the_weights():
    model = torch.nn.Linear(3, 2, bias=False)
    ema = EMAWeights(model, decay=0.9)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, step=0)  # warm-up: decay min(0.9, 1/10)
    torch.testing.assert_close(ema.shadow["weight"], start + 0.9)
    ema.update(model, step=1000)  # full decay
    torch.testing.assert_close(ema.shadow["weight"], start + 0.9 + 0.1 * 0.1)


def test_applied_ema_is_undone_after_the_block():
    model = torch.nn.Linear(3, 2, bias=False)
    ema = EMAWeights(model, decay=0.5)
    own = model.weight.detach().clone()
    ema.shadow["weight"].fill_(7.0)
    with ema.applied(model):
        assert torch.all(model.weight == 7.0)
    assert torch.equal(model.weight, own)


def test_an_ema_run_ships_the_averaged_weights_and_resumes_with_them(corpora, tmp_path):
    _, jokes = corpora
    config = tiny_config(steps=10, ema_decay=0.8, checkpoint_every=5, keep_best=False)
    straight = train(config, jokes, tmp_path / "straight", progress=False, cpu=True)
    train(config, jokes, tmp_path / "paused", progress=False, cpu=True, stop_after=5)
    assert (tmp_path / "paused" / CHECKPOINT_DIR / "ema.safetensors").is_file()
    train(config, jokes, tmp_path / "paused", resume=True, progress=False, cpu=True)
    shipped = load_file(tmp_path / "straight" / "model.safetensors")
    assert shipped.keys() == load_file(tmp_path / "paused" / "model.safetensors").keys()
    for name, value in load_file(tmp_path / "paused" / "model.safetensors").items():
        torch.testing.assert_close(value, shipped[name], atol=1e-6, rtol=0)
    # The averaged weights differ from the raw last step's (kept in the checkpoint's model state).
    raw = load_file(tmp_path / "straight" / CHECKPOINT_DIR / "model.safetensors")
    assert any(not torch.allclose(raw[k], v) for k, v in shipped.items() if k in raw)
    assert straight.final_eval["val_bpc"] > 0
