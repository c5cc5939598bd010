"""`rujokes-train` / `rujokes-eval` entry points: JSON summary, eval, the offline hf:// path and --push-to-hub."""
from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from rujokes_model import ByteLevelBPETokenizer, TransformerForCausalLM, pretrained_path
from rujokes_model.cpu_kernels import cpu_kernels_supported
from tests.model_helpers import russian_sentences, write_jokes
from trainer.cli import eval_main, train_main
from trainer.data import load_corpus, split_train_val
from trainer.evaluate import evaluate_texts

pytestmark = pytest.mark.usefixtures("single_torch_thread_for_module")

STEPS = 8
TINY_MODEL_ARGS = ["--model-override", "n_layer=1", "--model-override", "d_model=32", "--model-override", "n_head=2",
                   "--model-override", "n_kv_head=1", "--model-override", "d_ff=64"]


def tiny_train_args(data: str, out: Path, *extra: str) -> list[str]:
    return ["--size", "nano", "--data", data, "--out", str(out), "--steps", str(STEPS), "--batch-size", "4",
            "--seq-len", "32", "--vocab-size", "300", "--lr", "3e-3", "--cpu", "--no-progress",
            *TINY_MODEL_ARGS, *extra]




def run_printing(main, argv: list[str]) -> tuple[int, str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(argv)
    return code, stdout.getvalue()


class RecordingHub:
    """Stands in for huggingface_hub.HfApi: records every call and what the uploaded folder held."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.uploaded: dict[str, bytes] = {}

    def api_class(self):
        hub = self

        class FakeHfApi:
            def __init__(self, token=None) -> None:
                hub.calls.append(("init", {"token": token}))

            def create_repo(self, repo_id, **kwargs):
                hub.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

            def create_branch(self, repo_id, **kwargs):
                hub.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

            def upload_folder(self, **kwargs):
                hub.calls.append(("upload_folder", kwargs))
                # The folder is a temporary directory: read it now, it is gone after the call.
                folder = Path(kwargs["folder_path"])
                hub.uploaded = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
                return SimpleNamespace(commit_url="https://huggingface.co/me/rujokes/commit/abc")

        return FakeHfApi

    def call(self, name: str) -> dict:
        matching = [kwargs for called, kwargs in self.calls if called == name]
        assert len(matching) == 1, f"{name} called {len(matching)} times"
        return matching[0]




@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory) -> Path:
    return write_jokes(tmp_path_factory.mktemp("corpus") / "jokes.jsonl")


@pytest.fixture(scope="module")
def pushed_run(tmp_path_factory, corpus_path):
    """One `rujokes-train ... --push-to-hub me/rujokes` run against a recording fake of the Hub API."""
    out = tmp_path_factory.mktemp("cli") / "nano"
    hub = RecordingHub()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("rujokes_model.hub.HfApi", hub.api_class())
        code, stdout = run_printing(train_main, tiny_train_args(str(corpus_path), out, "--push-to-hub", "me/rujokes"))
    return SimpleNamespace(out=out, code=code, stdout=stdout, hub=hub)


def test_train_prints_a_json_summary_of_the_run(pushed_run):
    summary = json.loads(pushed_run.stdout.splitlines()[0])
    assert pushed_run.code == 0
    assert summary["out"] == str(pushed_run.out)
    assert summary["steps"] == STEPS
    assert summary["tokens_seen"] == STEPS * 4 * 32
    assert summary["val_bpc"] > 0


def test_model_overrides_reach_the_saved_model_config(pushed_run):
    config = json.loads((pushed_run.out / "config.json").read_text())
    assert {key: config[key] for key in ("n_layer", "d_model", "n_head", "n_kv_head", "d_ff")} == \
        {"n_layer": 1, "d_model": 32, "n_head": 2, "n_kv_head": 1, "d_ff": 64}


def test_malformed_model_override_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--size", "nano", "--out", str(tmp_path), "--model-override", "n_layer"])
    assert exit_info.value.code == 2
    assert "KEY=VALUE" in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--steps", "0"], ["--epochs", "0"], ["--lr", "-1e-3"], ["--batch-size", "0"],
                                    ["--vocab-size", "100"], ["--dropout", "1"], ["--pretrain-share", "1.5"],
                                    ["--ema-decay", "1"], ["--seq-len", "один"]])
def test_a_setting_out_of_range_is_a_usage_error_that_names_it(tmp_path, option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--size", "nano", "--out", str(tmp_path), *option])
    assert exit_info.value.code == 2
    assert f"argument {option[0]}" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing started


def test_a_missing_or_broken_corpus_or_model_is_one_line_not_a_traceback(tmp_path, capsys):
    assert train_main(["--size", "nano", "--data", str(tmp_path / "nowhere.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == f"rujokes-train: corpus not found: {tmp_path / 'nowhere.jsonl'}\n"
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "Штирлиц"}\n{not json\n', encoding="utf-8")
    assert train_main(["--size", "nano", "--data", str(broken), "--out", str(tmp_path / "o")]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"rujokes-train: {broken}") and "bad JSON" in error and error.count("\n") == 1
    assert eval_main(["--model", str(tmp_path / "no-model")]) == 2
    assert capsys.readouterr().err.startswith("rujokes-eval: ")


def _jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in texts), encoding="utf-8")
    return path


def test_a_corpus_training_cannot_use_is_one_line_before_anything_is_built(tmp_path, capsys):
    """Before: a traceback from deep inside packing ("repeat_interleave_cpu not implemented for 'Float'" for an
    empty file, "corpus of 67 tokens is shorter than one row" for three jokes)."""
    jokes = [f"Штирлиц пришел домой и нашел записку номер {i}. Жена ушла к Мюллеру." for i in range(80)]
    cases = [
        (_jsonl(tmp_path / "empty.jsonl", ["", "  "]), [], "no texts in it"),
        (_jsonl(tmp_path / "three.jsonl", jokes[:3]), [], "training needs both"),
        (_jsonl(tmp_path / "short.jsonl", jokes), ["--seq-len", "4000"], "shorter than one row of 4001"),
    ]
    for corpus, extra, said in cases:
        out = tmp_path / f"out-{corpus.stem}"
        assert train_main(["--size", "nano", "--data", str(corpus), "--out", str(out), "--steps", "1", *extra]) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"rujokes-train: {corpus}: ") and said in error and error.count("\n") == 1, error
        assert not (out / "model.safetensors").exists()
    assert eval_main(["--model", str(pretrained_path("nano")), "--data", str(tmp_path / "empty.jsonl")]) == 2
    assert capsys.readouterr().err == f"rujokes-eval: {tmp_path / 'empty.jsonl'}: no texts in its val split\n"


def test_eval_prints_the_val_bpc_that_evaluate_texts_computes(pushed_run, corpus_path, capsys):
    assert eval_main(["--model", str(pushed_run.out), "--data", str(corpus_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    _, val_texts = split_train_val(load_corpus(corpus_path), 0.05)
    # Scored with the context the run trained with (recorded in train_config.json), as training did.
    seq_len = json.loads((pushed_run.out / "train_config.json").read_text())["seq_len"]
    expected = evaluate_texts(TransformerForCausalLM.from_pretrained(pushed_run.out),
                              ByteLevelBPETokenizer.from_pretrained(pushed_run.out), val_texts, seq_len=seq_len)
    assert printed["jokes"] == len(val_texts)
    assert printed["val_bpc"] == pytest.approx(expected.bits_per_char, abs=1e-9)


@pytest.mark.skipif(not cpu_kernels_supported(), reason="the kernels are AVX2 (x86-64) code")
def test_eval_scores_the_model_as_a_cpu_worker_with_int8_weights_would_run_it(pushed_run, corpus_path, capsys):
    assert eval_main(["--model", str(pushed_run.out), "--data", str(corpus_path)]) == 0
    full = json.loads(capsys.readouterr().out)
    assert eval_main(["--model", str(pushed_run.out), "--data", str(corpus_path), "--cpu-weights", "int8"]) == 0
    rounded = json.loads(capsys.readouterr().out)
    assert (full["cpu_weights"], rounded["cpu_weights"]) == ("fp32", "int8")
    assert rounded["val_tokens"] == full["val_tokens"]
    # The same model up to rounding: close, but really computed with other weights.
    assert rounded["val_bpc"] != full["val_bpc"]
    assert rounded["val_bpc"] == pytest.approx(full["val_bpc"], rel=0.02)


def test_push_uploads_to_a_branch_named_after_the_size(pushed_run):
    assert pushed_run.hub.call("create_branch") == {"repo_id": "me/rujokes", "branch": "nano", "exist_ok": True}
    upload = pushed_run.hub.call("upload_folder")
    assert upload["repo_id"] == "me/rujokes" and upload["revision"] == "nano"
    assert "pushed to me/rujokes@nano" in pushed_run.stdout


def test_push_uploads_weights_tokenizer_model_card_and_curves(pushed_run):
    uploaded = pushed_run.hub.uploaded
    expected = {"config.json", "model.safetensors", "tokenizer.json", "README.md", "loss.png", "metrics.jsonl"}
    assert expected <= set(uploaded)
    assert uploaded["README.md"] == (pushed_run.out / "README.md").read_bytes()


def test_an_alibi_push_says_it_has_no_transformers_export(pushed_run):
    assert "not exported for transformers: cannot export an ALiBi model" in pushed_run.stdout
    assert not any(name.startswith("transformers/") for name in pushed_run.hub.uploaded)


def test_a_rope_push_carries_the_transformers_export(tmp_path, corpus_path):
    hub = RecordingHub()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("rujokes_model.hub.HfApi", hub.api_class())
        code, stdout = run_printing(train_main, tiny_train_args(str(corpus_path), tmp_path / "rope", "--position",
                                                                "rope", "--attention", "gqa", "--push-to-hub",
                                                                "me/rujokes"))
    assert code == 0 and "with the transformers export" in stdout
    config = json.loads(hub.uploaded["transformers/config.json"])
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert {"transformers/model.safetensors", "transformers/tokenizer.json", "model.safetensors"} <= set(hub.uploaded)


def test_hf_source_with_a_local_hub_dir_trains_offline(tmp_path):
    hub_dir = tmp_path / "russian_jokes"
    hub_dir.mkdir()
    with (hub_dir / "dataset.csv").open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["text"])
        writer.writerows([text] for text in russian_sentences(160, seed=1))
    out = tmp_path / "out"
    code, stdout = run_printing(train_main, tiny_train_args("hf://IgorVolochay/russian_jokes", out,
                                                            "--hub-dir", str(hub_dir)))
    assert code == 0 and json.loads(stdout)["steps"] == STEPS
    model = TransformerForCausalLM.from_pretrained(out)
    tokenizer = ByteLevelBPETokenizer.from_pretrained(out)
    assert model.config.vocab_size == tokenizer.vocab_size == 300
    assert "hf://IgorVolochay/russian_jokes" in (out / "README.md").read_text(encoding="utf-8")


def test_dropout_time_limit_and_last_weights_flags_reach_the_run(tmp_path, corpus_path):
    out = tmp_path / "flags"
    code, stdout = run_printing(train_main, tiny_train_args(str(corpus_path), out, "--dropout", "0.1",
                                                            "--time-limit", "600", "--last-weights"))
    assert code == 0
    assert json.loads((out / "config.json").read_text())["dropout"] == 0.1
    recorded = json.loads((out / "train_config.json").read_text())
    assert (recorded["time_limit_s"], recorded["keep_best"]) == (600.0, False)
    assert json.loads(stdout.splitlines()[0])["selected_step"] == STEPS

