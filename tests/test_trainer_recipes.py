"""The size recipes: the original settings, and the `small` recipe runs end to end (GPU-sized, tried on CPU)."""
from __future__ import annotations

from rujokes_model import ModelConfig, TransformerForCausalLM
from tests.model_helpers import write_jokes
from trainer.recipes import ORIGINAL_RECIPES, RECIPES, recipe
from trainer.train import train


def test_original_recipes_reproduce_the_original_settings():
    assert (ORIGINAL_RECIPES["nano"].epochs, ORIGINAL_RECIPES["nano"].batch_size, ORIGINAL_RECIPES["nano"].lr) == (1.0, 32, 3e-4)
    assert (ORIGINAL_RECIPES["mini"].epochs, ORIGINAL_RECIPES["mini"].batch_size, ORIGINAL_RECIPES["mini"].lr) == (1.0, 32, 3e-4)
    assert (ORIGINAL_RECIPES["small"].epochs, ORIGINAL_RECIPES["small"].batch_size, ORIGINAL_RECIPES["small"].lr) == (6.0, 64, 5e-4)
    assert {r.vocab_size for r in ORIGINAL_RECIPES.values()} == {1024}


def test_original_flag_selects_the_original_table_and_overrides_still_apply():
    assert recipe("nano", original=True).lr == 3e-4
    assert recipe("nano", original=True, lr=1e-3).lr == 1e-3
    assert recipe("nano").model_overrides == RECIPES["nano"].model_overrides
    assert recipe("nano").model_overrides is not RECIPES["nano"].model_overrides


def test_small_recipe_trains_a_step_with_the_small_width_and_attention(tmp_path):
    corpus = write_jokes(tmp_path / "jokes.jsonl", count=120)
    # small's width, heads and MHLA dims; depth, batch and rows shrunk so the step fits a CPU test
    # (12 layers would make the checkpoint alone a gigabyte of writes).
    config = recipe("small", steps=1, batch_size=2, seq_len=32, vocab_size=300, eval_every=1, val_fraction=0.1,
                    card_sample_tokens=4, model_overrides={"n_layer": 1})
    result = train(config, str(corpus), tmp_path / "small", progress=False)
    loaded = TransformerForCausalLM.from_pretrained(tmp_path / "small")
    expected = ModelConfig.preset("small")
    assert (loaded.config.n_head, loaded.config.d_model, loaded.config.kv_lora_rank) == (12, 768, expected.kv_lora_rank)
    assert (loaded.config.position, loaded.config.attention) == (expected.position, expected.attention)
    assert result.steps == 1 and "val_bpc" in result.final_eval

