"""Model cards as huggingface_hub ModelCards: the YAML parses back with ModelCard.load (license, language,
library, pipeline, datasets, eval results), the usage snippet runs, training stages render as a table."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
from huggingface_hub import ModelCard

from rujokes_model import ByteLevelBPETokenizer, TransformerForCausalLM
from tests.model_helpers import make_tiny_model_dir
from trainer.report import write_model_card

FINAL_EVAL = {"val_loss": 3.3803, "val_bpc": 1.9644, "chars_per_token": 2.483}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("run"), position="rope", attention="mhla", max_seq_len=160)


def card_for(model_dir, **kwargs):
    model = TransformerForCausalLM.from_pretrained(model_dir)
    tokenizer = ByteLevelBPETokenizer.from_pretrained(model_dir)
    args = dict(size="mini", model=model, tokenizer=tokenizer, train_config={"lr": 1e-3},
                data_source="../shared/data/russian_jokes.jsonl", n_train=100, n_val=10, tokens_seen=12345,
                wall_time_s=60.0, hardware="CPU", final_eval=FINAL_EVAL, steps=10, sample_tokens=6) | kwargs
    return write_model_card(model_dir, **args)


def test_card_yaml_parses_back_with_its_eval_results(model_dir):
    card = ModelCard.load(card_for(model_dir, datasets=["IgorVolochay/russian_jokes"]))
    data = card.data
    assert (data.license, data.language, data.library_name, data.pipeline_tag) == \
        ("apache-2.0", "ru", "rujokes", "text-generation")
    assert data.datasets == ["IgorVolochay/russian_jokes"]
    results = {r.metric_type: r for r in data.eval_results}
    assert results["bits_per_character"].metric_value == pytest.approx(1.9644)
    assert results["loss"].metric_value == pytest.approx(3.3803)
    assert {r.dataset_type for r in data.eval_results} == {"IgorVolochay/russian_jokes"}
    assert {r.dataset_split for r in data.eval_results} == {"validation"}
    # the content the card always had
    assert "| validation bits per character | 1.9644 |" in card.text and "## Samples" in card.text


def test_an_hf_source_names_its_dataset_and_a_local_one_none(model_dir):
    assert ModelCard.load(card_for(model_dir, data_source="hf://IgorVolochay/russian_jokes")).data.datasets == \
        ["IgorVolochay/russian_jokes"]
    local = ModelCard.load(card_for(model_dir))
    assert local.data.datasets is None
    assert local.data.eval_results[0].dataset_type == "russian_jokes"


def test_training_stages_render_as_a_table(model_dir):
    stages = [{"name": "pretrain", "corpus": "hf://someone/ru_texts", "steps": 5000, "tokens": 40_960_000},
              {"name": "jokes", "corpus": "../shared/data/russian_jokes.jsonl", "steps": 1400, "tokens": 13_254_656}]
    text = card_for(model_dir, training_stages=stages).read_text(encoding="utf-8")
    assert "## Training stages" in text
    assert "| pretrain | `hf://someone/ru_texts` |  | 5,000 | 40,960,000 |  |" in text
    assert "| jokes | `../shared/data/russian_jokes.jsonl` |  | 1,400 | 13,254,656 |  |" in text
    assert "## Training stages" not in card_for(model_dir).read_text(encoding="utf-8")


def test_the_cards_install_line_and_usage_snippet_run_in_the_model_directory(model_dir):
    text = card_for(model_dir).read_text(encoding="utf-8")
    assert "pip install torch==2.13.0" in text
    snippet = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    done = subprocess.run([sys.executable, "-c", snippet], cwd=model_dir, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_the_export_card_keeps_the_metadata_and_its_snippet_runs(model_dir, tmp_path):
    pytest.importorskip("transformers")
    from rujokes_model.export import export_transformers

    card_for(model_dir, datasets=["IgorVolochay/russian_jokes"])
    out = export_transformers(model_dir, tmp_path / "hf")
    card = ModelCard.load(out / "README.md")
    assert (card.data.library_name, card.data.pipeline_tag, card.data.license) == \
        ("transformers", "text-generation", "apache-2.0")
    assert card.data.datasets == ["IgorVolochay/russian_jokes"]
    assert {r.metric_type for r in card.data.eval_results} == {"bits_per_character", "loss"}
    assert "DeepseekV2ForCausalLM" in card.text and "| validation bits per character | 1.9644 |" in card.text
    snippet = re.search(r"```python\n(.*?)```", card.text, re.S).group(1)
    done = subprocess.run([sys.executable, "-c", snippet], cwd=out, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
