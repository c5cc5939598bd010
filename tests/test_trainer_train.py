"""Training: tokenizer, packing, batch order, lr schedule, the loop, resume, CPU budget and the output dir.

Every run here is a 1-layer, 32-wide model on ~160 synthetic jokes with 32-token rows: seconds on a CPU.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rujokes_model import ByteLevelBPETokenizer, ModelConfig, TransformerForCausalLM
from tests.model_helpers import write_jokes
from trainer.data import prepare_corpus
from trainer.packing import pack_documents
from trainer.recipes import RECIPES, TrainConfig, recipe
from trainer.report import SAMPLE_PROMPTS, read_metrics
from trainer.schedule import build_optimizer, lr_factor
from trainer.train import CHECKPOINT_DIR, build_tokenizer, rows_for_step, train

pytestmark = pytest.mark.usefixtures("single_torch_thread_for_module")

TINY_MODEL = {"n_layer": 1, "d_model": 32, "n_head": 2, "n_kv_head": 1, "d_ff": 64}
BOS, EOS = 1, 2
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"




def tiny_config(**fields) -> TrainConfig:
    defaults = dict(size="nano", vocab_size=300, seq_len=32, batch_size=4, lr=3e-3, steps=30, warmup_steps=3,
                    eval_every=1000, checkpoint_every=1000, val_fraction=0.1, model_overrides=dict(TINY_MODEL),
                    card_memorisation_samples=0)
    return TrainConfig(**{**defaults, **fields})


def synthetic_documents(lengths: list[int], seed: int = 0) -> list[list[int]]:
    """`<bos> … <eos>` documents of the given total lengths; inner tokens avoid the special ids 0..2."""
    generator = torch.Generator().manual_seed(seed)
    return [[BOS] + torch.randint(3, 100, (n - 2,), generator=generator).tolist() + [EOS] for n in lengths]




@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory) -> Path:
    return write_jokes(tmp_path_factory.mktemp("corpus") / "jokes.jsonl")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus_path):
    """One finished 30-step run, shared by the tests that inspect what a run leaves behind."""
    config = tiny_config()
    result = train(config, str(corpus_path), tmp_path_factory.mktemp("run"), progress=False, cpu=True)
    return config, result


# ---------------------------------------------------------------- tokenizer

def test_tokenizer_trained_on_the_corpus_has_the_requested_vocab_size(corpus_path, tmp_path):
    tokenizer = build_tokenizer(prepare_corpus(str(corpus_path)), vocab_size=300, out_dir=tmp_path, resume=False)
    assert tokenizer.vocab_size == 300


def test_tokenizer_has_distinct_pad_bos_eos_special_tokens(corpus_path, tmp_path):
    tokenizer = build_tokenizer(prepare_corpus(str(corpus_path)), vocab_size=300, out_dir=tmp_path, resume=False)
    specials = {name: tokenizer.backend.token_to_id(name) for name in ("<pad>", "<bos>", "<eos>")}
    assert specials == {"<pad>": tokenizer.pad_token_id, "<bos>": tokenizer.bos_token_id,
                        "<eos>": tokenizer.eos_token_id}
    assert len(set(specials.values())) == 3
    ids = tokenizer.encode("Вовочка", add_bos=True, add_eos=True)
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id


@pytest.mark.parametrize("text", [
    "Штирлиц шёл по лесу.",
    "— Ты кто?\n— Я ёж. 🦔",
    "Щука №5 — «ЪЫЬ» and Latin, 100%",  # characters the tiny corpus never had: byte fallback
])
def test_tokenizer_round_trips_russian_text(corpus_path, tmp_path, text):
    tokenizer = build_tokenizer(prepare_corpus(str(corpus_path)), vocab_size=300, out_dir=tmp_path, resume=False)
    assert tokenizer.decode(tokenizer.encode(text, add_bos=True, add_eos=True)) == text


def test_resumed_run_reuses_the_saved_tokenizer_instead_of_retraining(corpus_path, tmp_path):
    saved = ByteLevelBPETokenizer.train_from_iterator(["совсем другой корпус"] * 10, vocab_size=270)
    saved.save_pretrained(tmp_path)
    tokenizer = build_tokenizer(prepare_corpus(str(corpus_path)), vocab_size=300, out_dir=tmp_path, resume=True)
    assert tokenizer.backend.get_vocab() == saved.backend.get_vocab()


# ---------------------------------------------------------------- packing

def test_packed_rows_cut_the_token_stream_into_rows_of_seq_len_plus_one():
    documents = synthetic_documents([5, 9, 40, 3, 12, 7, 20])
    rows = pack_documents(documents, seq_len=8)
    stream = torch.tensor([t for doc in documents for t in doc])
    assert rows.tokens.shape == (len(stream) // 9, 9)
    assert torch.equal(rows.tokens.flatten(), stream[: rows.tokens.numel()])


def test_document_ids_restart_in_every_row_and_step_at_each_bos():
    rows = pack_documents(synthetic_documents([5, 9, 40, 3, 12, 7, 20]), seq_len=8)
    assert (rows.document_ids[:, 0] == 0).all()
    steps = rows.document_ids[:, 1:] - rows.document_ids[:, :-1]
    assert torch.equal(steps, (rows.tokens[:, 1:] == BOS).long())


def test_positions_restart_at_every_document_and_every_row():
    rows = pack_documents(synthetic_documents([5, 9, 40, 3, 12, 7, 20]), seq_len=8)
    new_document = rows.document_ids[:, 1:] != rows.document_ids[:, :-1]
    expected_next = torch.where(new_document, torch.zeros_like(new_document, dtype=torch.long),
                                rows.positions[:, :-1] + 1)
    assert (rows.positions[:, 0] == 0).all()
    assert torch.equal(rows.positions[:, 1:], expected_next)


def test_batch_ignores_targets_that_start_a_new_document():
    rows = pack_documents(synthetic_documents([5, 9, 40, 3, 12, 7, 20]), seq_len=8)
    batch = rows.batch(torch.arange(len(rows)))
    crosses = rows.tokens[:, 1:] == BOS  # every document, and only a document, starts with <bos>
    assert crosses.any()
    assert (batch["targets"][crosses] == -100).all()
    assert torch.equal(batch["targets"][~crosses], rows.tokens[:, 1:][~crosses])
    assert torch.equal(batch["input_ids"], rows.tokens[:, :-1])


def test_packing_a_corpus_shorter_than_one_row_is_an_error():
    with pytest.raises(ValueError, match="shorter than one row"):
        pack_documents(synthetic_documents([4, 4]), seq_len=8)


# ---------------------------------------------------------------- batch order

def test_rows_for_step_depend_only_on_seed_and_step():
    assert torch.equal(rows_for_step(7, 100, 4, seed=1), rows_for_step(7, 100, 4, seed=1))
    assert not torch.equal(rows_for_step(7, 100, 4, seed=1), rows_for_step(7, 100, 4, seed=2))


def test_every_epoch_visits_every_row_exactly_once_in_a_fresh_order():
    n_rows, batch_size = 20, 4  # 5 steps per epoch
    epochs = [torch.cat([rows_for_step(step, n_rows, batch_size, seed=3) for step in range(first, first + 5)])
              for first in (0, 5)]
    for visited in epochs:
        assert torch.equal(visited.sort().values, torch.arange(n_rows))
    assert not torch.equal(epochs[0], epochs[1])


def test_an_epoch_with_a_ragged_tail_never_repeats_a_row():
    visited = torch.cat([rows_for_step(step, 22, 4, seed=3) for step in range(5)])
    assert len(visited) == 20 and len(set(visited.tolist())) == 20


# ---------------------------------------------------------------- lr schedule

def test_warmup_rises_to_the_peak_at_its_end():
    factors = [lr_factor(p, warmup_fraction=0.1, min_ratio=0.1) for p in (0.0, 0.025, 0.05, 0.075, 0.0999)]
    assert all(a < b for a, b in zip(factors, factors[1:]))
    assert factors[-1] < 1.0
    assert lr_factor(0.1, warmup_fraction=0.1, min_ratio=0.1) == pytest.approx(1.0)


def test_cosine_decays_monotonically_to_min_ratio():
    factors = [lr_factor(p / 20, warmup_fraction=0.1, min_ratio=0.2) for p in range(2, 21)]
    assert all(a > b for a, b in zip(factors, factors[1:]))
    assert factors[-1] == pytest.approx(0.2)


def test_warmup_is_capped_at_a_tenth_of_the_run():
    assert lr_factor(0.1, warmup_fraction=0.5, min_ratio=0.1) == pytest.approx(1.0)


def test_logged_lr_peaks_right_after_warmup_steps(trained):
    config, result = trained
    lrs = [record["lr"] for record in read_metrics(result.out_dir)]
    assert max(lrs) == pytest.approx(config.lr)
    assert lrs.index(max(lrs)) == config.warmup_steps
    assert config.lr * config.min_lr_ratio < lrs[-1] < lrs[config.warmup_steps]


def test_weight_decay_applies_to_matrices_but_not_to_norm_gains():
    model = TransformerForCausalLM(ModelConfig(vocab_size=50, **TINY_MODEL))
    decay, no_decay = build_optimizer(model, lr=1e-3, weight_decay=0.1).param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() == 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() == 1 for p in no_decay["params"])


def test_recipe_returns_model_overrides_of_its_own():
    before = dict(RECIPES["nano"].model_overrides)
    config = recipe("nano", steps=3)
    config.model_overrides["n_layer"] = 1
    assert RECIPES["nano"].model_overrides == before
    assert recipe("nano").model_overrides == before


# ---------------------------------------------------------------- the loop

def test_a_few_cpu_steps_reduce_the_training_loss(trained):
    _, result = trained
    losses = [record["train_loss"] for record in read_metrics(result.out_dir)]
    assert losses[-1] < losses[0] - 0.5


def test_metrics_log_every_step_and_end_with_the_final_validation(trained):
    config, result = trained
    records = read_metrics(result.out_dir)
    assert [r["step"] for r in records] == list(range(1, config.steps + 1))
    assert records[-1]["val_bpc"] == pytest.approx(result.final_eval["val_bpc"])
    assert records[-1]["tokens_seen"] == config.steps * config.batch_size * config.seq_len


def test_output_dir_loads_back_and_generates(trained):
    _, result = trained
    model = TransformerForCausalLM.from_pretrained(result.out_dir)
    tokenizer = ByteLevelBPETokenizer.from_pretrained(result.out_dir)
    prompt = torch.tensor([tokenizer.encode("Штирлиц")])
    out = model.generate(prompt, 8, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         top_k=10, generator=torch.Generator().manual_seed(0))
    assert out.shape[1] > prompt.shape[1]
    assert tokenizer.decode(out[0].tolist()).startswith("Штирлиц")
    trained_state = result.model.state_dict()
    assert all(torch.equal(value, trained_state[name]) for name, value in model.state_dict().items())


def test_model_card_reports_bits_per_char_parameters_and_samples(trained):
    _, result = trained
    card = (result.out_dir / "README.md").read_text(encoding="utf-8")
    assert "bits per character" in card
    assert f"{result.final_eval['val_bpc']:.4f}" in card
    assert f"| parameters | {result.model.num_parameters():,} |" in card
    samples = card.split("## Samples", 1)[1]
    assert all(f"**{prompt}**" in samples for prompt in SAMPLE_PROMPTS)


def test_loss_curve_is_a_png(trained):
    _, result = trained
    assert (result.out_dir / "loss.png").read_bytes()[:8] == PNG_SIGNATURE


def test_train_config_json_records_the_run_config(trained):
    config, result = trained
    assert json.loads((result.out_dir / "train_config.json").read_text()) == config.to_dict()


def test_cpu_budget_run_stops_by_itself_after_a_final_evaluation(corpus_path, tmp_path):
    config = tiny_config(steps=None, cpu_budget_s=1.5)
    result = train(config, str(corpus_path), tmp_path, progress=False, cpu=True)
    records = read_metrics(tmp_path)
    assert result.steps > 0
    assert len(records) == result.steps
    assert records[-1]["val_bpc"] == pytest.approx(result.final_eval["val_bpc"])


# ---------------------------------------------------------------- resume

STEPS, CHECKPOINT_AT = 12, 5


@pytest.fixture(scope="module")
def uninterrupted_and_resumed(tmp_path_factory, corpus_path):
    """The same run twice: once straight through, once paused at the checkpoint step and resumed."""
    config = tiny_config(steps=STEPS, checkpoint_every=CHECKPOINT_AT)
    straight, resumed = tmp_path_factory.mktemp("straight"), tmp_path_factory.mktemp("resumed")
    train(config, str(corpus_path), straight, progress=False, cpu=True)
    paused = train(config, str(corpus_path), resumed, progress=False, cpu=True, stop_after=CHECKPOINT_AT)
    paused_state = json.loads((resumed / CHECKPOINT_DIR / "trainer_state.json").read_text())
    paused_files = {p.name for p in resumed.iterdir()}
    train(config, str(corpus_path), resumed, resume=True, progress=False, cpu=True)
    return straight, resumed, paused, paused_state, paused_files


def test_a_checkpoint_of_the_tied_output_layer_warns_nobody(tmp_path, corpus_path, caplog):
    with caplog.at_level(logging.WARNING):
        train(tiny_config(steps=2, checkpoint_every=1), str(corpus_path), tmp_path, progress=False, cpu=True,
              stop_after=1)
    assert (tmp_path / CHECKPOINT_DIR / "trainer_state.json").is_file()
    assert not [r for r in caplog.records if "shared tensor" in r.getMessage()]


def test_stop_after_pauses_with_a_checkpoint_and_no_final_weights(uninterrupted_and_resumed):
    _, _, paused, paused_state, paused_files = uninterrupted_and_resumed
    assert paused.steps == CHECKPOINT_AT
    assert paused_state["step"] == CHECKPOINT_AT
    assert "model.safetensors" not in paused_files and "README.md" not in paused_files


def test_resumed_run_logs_the_same_losses_as_an_uninterrupted_one(uninterrupted_and_resumed):
    straight, resumed = uninterrupted_and_resumed[:2]
    straight_records, resumed_records = read_metrics(straight), read_metrics(resumed)
    assert [r["step"] for r in resumed_records] == list(range(1, STEPS + 1))
    next_step = CHECKPOINT_AT  # index of step CHECKPOINT_AT + 1
    assert resumed_records[next_step]["train_loss"] == pytest.approx(straight_records[next_step]["train_loss"],
                                                                     abs=1e-6)
    assert [r["train_loss"] for r in resumed_records] == pytest.approx(
        [r["train_loss"] for r in straight_records], abs=1e-6)


def test_resumed_run_ends_with_the_same_weights(uninterrupted_and_resumed):
    straight, resumed = uninterrupted_and_resumed[:2]
    straight_weights = load_file(straight / "model.safetensors")
    resumed_weights = load_file(resumed / "model.safetensors")
    assert straight_weights.keys() == resumed_weights.keys()
    for name, value in straight_weights.items():
        torch.testing.assert_close(resumed_weights[name], value, atol=1e-6, rtol=0, msg=name)


def test_time_limit_stops_a_long_run_with_its_schedule_decayed(corpus_path, tmp_path):
    # One evaluation, at the end: a fast machine got past tiny_config's eval_every in 2 s, and the run then kept that
    # earlier, better evaluation's weights (keep_best), which is not what this test is about.
    config = tiny_config(steps=100_000, time_limit_s=2.0, eval_every=1_000_000)
    result = train(config, str(corpus_path), tmp_path, progress=False, cpu=True)
    records = read_metrics(tmp_path)
    assert 0 < result.steps < 100_000
    assert records[-1]["wall_time_s"] >= 2.0
    assert records[-1]["val_bpc"] == pytest.approx(result.final_eval["val_bpc"])
    # The cosine followed the clock, so the last steps ran near the floor, not at the peak lr.
    assert records[-1]["lr"] < 0.3 * config.lr


# ---------------------------------------------------------------- best weights

SCRIPTED_BPC = [5.0, 3.0, 4.0, 4.5]  # evaluations at steps 5, 10, 15, 20: the best is the second


@pytest.fixture()
def overfitting_run(monkeypatch, corpus_path, tmp_path):
    """A run whose validation is scripted to get worse after step 10; remembers the weights at each evaluation."""
    import trainer.train as train_module

    real_validate, seen = train_module._validate, []

    def scripted_validate(model, *args, **kwargs):
        result = dict(real_validate(model, *args, **kwargs), val_bpc=SCRIPTED_BPC[len(seen)])
        seen.append({name: value.clone() for name, value in model.state_dict().items()})
        return result

    monkeypatch.setattr(train_module, "_validate", scripted_validate)

    def run(**fields):
        config = tiny_config(steps=20, eval_every=5, **fields)
        return train(config, str(corpus_path), tmp_path, progress=False, cpu=True), seen
    return run


def test_a_run_that_overfits_ships_its_best_evaluated_weights(overfitting_run, tmp_path):
    result, seen = overfitting_run()
    assert result.selected_step == 10 and result.final_eval["val_bpc"] == 3.0
    saved = TransformerForCausalLM.from_pretrained(tmp_path).state_dict()
    assert all(torch.equal(value, seen[1][name]) for name, value in saved.items())
    assert not all(torch.equal(value, seen[-1][name]) for name, value in saved.items())
    card = (tmp_path / "README.md").read_text(encoding="utf-8")
    assert "| weights from step | 10 " in card and "| validation bits per character | 3.0000 |" in card


def test_last_weights_keeps_the_final_step_even_when_worse(overfitting_run, tmp_path):
    result, seen = overfitting_run(keep_best=False)
    assert result.selected_step == 20 and result.final_eval["val_bpc"] == 4.5
    saved = TransformerForCausalLM.from_pretrained(tmp_path).state_dict()
    assert all(torch.equal(value, seen[-1][name]) for name, value in saved.items())
    assert "weights from step" not in (tmp_path / "README.md").read_text(encoding="utf-8")


def test_best_weights_survive_a_checkpoint_round_trip(tmp_path):
    from trainer.best import BestWeights

    model = TransformerForCausalLM(ModelConfig(vocab_size=50, **TINY_MODEL))
    best = BestWeights()
    assert best.offer(5, {"val_bpc": 3.0}, model)
    assert not best.offer(10, {"val_bpc": 3.5}, model)
    assert best.beats({"val_bpc": 3.1}) and not best.beats({"val_bpc": 2.9})
    best.save(tmp_path)
    loaded = BestWeights.load(tmp_path)
    assert loaded.step == 5 and loaded.metrics == {"val_bpc": 3.0}
    assert all(torch.equal(loaded.state[name], value) for name, value in model.state_dict().items())
    assert BestWeights.load(tmp_path / "missing").state is None

