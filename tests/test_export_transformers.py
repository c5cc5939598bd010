"""`rujokes-export --to transformers`: the exported directory loads with plain AutoModelForCausalLM and
computes our logits (fp32 tolerance) and our greedy tokens, for every exportable variant."""
from __future__ import annotations

import json
import time

import pytest
import torch

pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from rujokes_model import ByteLevelBPETokenizer, TransformerForCausalLM, pretrained_path  # noqa: E402
from rujokes_model.export import ExportError, export_transformers, target_architecture  # noqa: E402
from rujokes_model.export.cli import main as export_main  # noqa: E402
from tests.model_helpers import left_pad, make_tiny_model_dir, random_ids  # noqa: E402

ATOL = 1e-4  # fp32: summation order differs between the implementations, nothing else

VARIANTS = {  # the exportable kinds: every attention with RoPE, MHLA with and without a low-rank query
    "rope+mhla": dict(position="rope", attention="mhla"),
    "rope+mhla+q_lora": dict(position="rope", attention="mhla", q_lora_rank=32),
    "rope+gqa": dict(position="rope", attention="gqa", n_kv_head=2),
    "rope+mha": dict(position="rope", attention="mha", n_kv_head=4),
    "rope+gqa untied, theta 500": dict(position="rope", attention="gqa", n_kv_head=2, tie_embeddings=False,
                                       rope_theta=500.0),
}
EXPECTED_CLASS = {"mhla": "DeepseekV2ForCausalLM", "gqa": "LlamaForCausalLM", "mha": "LlamaForCausalLM"}


@pytest.fixture(scope="module", params=list(VARIANTS), ids=list(VARIANTS))
def exported(request, tmp_path_factory):
    source = make_tiny_model_dir(tmp_path_factory.mktemp("ours"), max_seq_len=64, **VARIANTS[request.param])
    out = export_transformers(source, tmp_path_factory.mktemp("hf") / "export")
    ours = TransformerForCausalLM.from_pretrained(source)
    theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    return request.param, source, out, ours, theirs


def test_the_export_is_the_expected_plain_transformers_class(exported):
    name, _, out, ours, theirs = exported
    assert type(theirs).__name__ == EXPECTED_CLASS[ours.config.attention]
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [EXPECTED_CLASS[ours.config.attention]]
    assert config["model_type"] == {"mhla": "deepseek_v2"}.get(ours.config.attention, "llama")
    assert not any(p.suffix == ".py" for p in out.iterdir())  # no custom code
    own_head = ours.config.tie_embeddings and ours.config.attention == "mhla"  # see the next test
    assert theirs.num_parameters() == ours.num_parameters() + own_head * ours.config.vocab_size * ours.config.d_model


def test_a_deepseek_export_writes_its_head_out_and_a_llama_export_ties_it(exported):
    """vLLM's DeepseekV2ForCausalLM never ties its head: an export relying on tie_word_embeddings served
    zeros there (every greedy token wrong). Llama loaders all tie, so that export stays small."""
    from safetensors import safe_open

    _, _, out, ours, theirs = exported
    config = json.loads((out / "config.json").read_text())
    with safe_open(out / "model.safetensors", "pt") as weights:
        names = set(weights.keys())
        head = weights.get_tensor("lm_head.weight") if "lm_head.weight" in names else None
    if ours.config.attention == "mhla" or not ours.config.tie_embeddings:
        assert config["tie_word_embeddings"] is False and head is not None
        expected = ours.embed.weight if ours.config.tie_embeddings else ours.lm_head.weight
        assert torch.equal(head, expected.detach())
    else:
        assert config["tie_word_embeddings"] is True and head is None


def test_logits_equal_ours_on_random_prompts(exported):
    _, _, _, ours, theirs = exported
    for seed, length in ((0, 1), (1, 17), (2, 64)):
        ids = random_ids(length, ours.config.vocab_size, seed=seed, batch=3)
        with torch.no_grad():
            torch.testing.assert_close(theirs(ids).logits, ours(ids), atol=ATOL, rtol=0)


def test_logits_of_left_padded_batches_equal_ours(exported):
    _, _, _, ours, theirs = exported
    ids, mask = left_pad([random_ids(n, ours.config.vocab_size, seed=n)[0] for n in (5, 12, 9)])
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        expected = ours(ids, attention_mask=mask, position_ids=positions)
        got = theirs(ids, attention_mask=mask, position_ids=positions).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=ATOL, rtol=0)


def test_greedy_generation_gives_our_tokens(exported):
    _, source, _, ours, theirs = exported
    tokenizer = ByteLevelBPETokenizer.from_pretrained(source)
    ids, mask = left_pad([torch.tensor(tokenizer.encode(t)) for t in ("Штирлиц пришел домой", "Вовочка", "Жена")])
    expected = ours.generate(ids, 24, attention_mask=mask, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
    # <eos> and <pad> from the export's generation_config.json; rows that end are padded alike
    got = theirs.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=24, top_k=None, temperature=None)
    assert torch.equal(got, expected)


def test_generation_config_carries_the_bots_sampling(exported):
    _, _, out, _, theirs = exported
    config = json.loads((out / "generation_config.json").read_text())
    assert {k: config[k] for k in ("do_sample", "top_k", "temperature", "max_new_tokens")} == \
        {"do_sample": True, "top_k": 10, "temperature": 1.0, "max_new_tokens": 120}
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 0)


def test_our_loader_refuses_the_export_with_a_clear_error(exported):
    _, _, out, _, _ = exported
    with pytest.raises(ValueError, match="transformers model .*AutoModelForCausalLM"):
        TransformerForCausalLM.from_pretrained(out)


# -- the tokenizer -----------------------------------------------------------------------------------------

SAMPLES = ["Штирлиц пришел домой — а там 🙂🎉!", "Вовочка: «Марь Иванна, 2+2=5?» <eos> и всё", "  пробелы\n\nи ёлка"]


@pytest.fixture(scope="module")
def mini_tokenizers(tmp_path_factory):
    ours = ByteLevelBPETokenizer.from_pretrained(pretrained_path("mini"))
    from rujokes_model.export.tokenizer_export import save_transformers_tokenizer
    out = save_transformers_tokenizer(ours, tmp_path_factory.mktemp("tok"), model_max_length=256)
    return ours, AutoTokenizer.from_pretrained(out), out


@pytest.mark.parametrize("text", SAMPLES)
def test_exported_tokenizer_gives_our_ids_bos_included(mini_tokenizers, text):
    ours, theirs, _ = mini_tokenizers
    assert theirs(text)["input_ids"] == ours.encode(text)  # <bos> from the post-processor, "<eos>" as the token
    assert theirs(text)["input_ids"] + [theirs.eos_token_id] == ours.encode(text, add_eos=True)
    ids = ours.encode(text, add_eos=True)
    assert theirs.decode(ids, skip_special_tokens=True) == ours.decode(ids)


def test_exported_tokenizer_files_and_special_tokens(mini_tokenizers):
    ours, theirs, out = mini_tokenizers
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= {p.name for p in out.iterdir()}
    assert (theirs.bos_token_id, theirs.eos_token_id, theirs.pad_token_id) == \
        (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id)
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert theirs.padding_side == "left"
    batch = theirs(["Вовочка", "Штирлиц пришел домой"], padding=True, return_tensors="pt")
    assert set(batch) == {"input_ids", "attention_mask"}  # nothing generate() would refuse
    assert batch["input_ids"][0, 0].item() == ours.pad_token_id  # left padding


# -- what cannot be exported --------------------------------------------------------------------------------

@pytest.mark.parametrize("attention", ["gqa", "mhla"])
def test_alibi_models_fail_with_a_clear_error_and_write_nothing(tmp_path, attention):
    source = make_tiny_model_dir(tmp_path / "nano", position="alibi", attention=attention)
    with pytest.raises(ExportError, match="cannot export an ALiBi model"):
        export_transformers(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_cli_reports_an_unexportable_model_and_exits_2(capsys):
    assert export_main(["--to", "transformers", str(pretrained_path("nano")), "/nonexistent/out"]) == 2
    assert "cannot export an ALiBi model" in capsys.readouterr().err


@pytest.mark.parametrize("to", ["transformers", "gguf"])
def test_the_cli_reports_a_model_that_is_not_there_in_one_line_and_exits_2(tmp_path, to, capsys):
    assert export_main(["--to", to, str(tmp_path / "no-model"), str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"rujokes-export: {tmp_path / 'no-model'} is neither a directory nor a Hub repo id\n"


def test_bundled_presets_map_to_their_architectures():
    from rujokes_model import ModelConfig
    assert target_architecture(ModelConfig.preset("mini")) == "deepseek_v2"
    assert target_architecture(ModelConfig.preset("small")) == "deepseek_v2"
    assert target_architecture(ModelConfig.preset("mini", attention="gqa")) == "llama"
    with pytest.raises(ExportError):
        target_architecture(ModelConfig.preset("nano"))


# -- end to end on the bundled mini -------------------------------------------------------------------------

def test_cli_exports_the_bundled_mini_and_transformers_reproduces_its_logits(tmp_path, capsys):
    started = time.perf_counter()
    out = tmp_path / "mini-hf"
    assert export_main(["--to", "transformers", str(pretrained_path("mini")), str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["DeepseekV2ForCausalLM"]
    tokenizer = AutoTokenizer.from_pretrained(out)
    theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ours = TransformerForCausalLM.from_pretrained(pretrained_path("mini"))
    inputs = tokenizer(["Штирлиц пришел домой", "Приходит мужик к врачу и говорит"], padding=True, return_tensors="pt")
    mask = inputs["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        got = theirs(**inputs, position_ids=positions).logits
        expected = ours(inputs["input_ids"], attention_mask=mask, position_ids=positions)
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()], atol=ATOL, rtol=0)
    assert time.perf_counter() - started < 20
