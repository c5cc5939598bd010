"""`rujokes-export --to gguf`: read the file back with gguf.GGUFReader — architecture, hyperparameters,
tensor names and the shapes llama.cpp's loader asks for, exact weights, and the tokenizer; and, where
llama-cpp-python is installed, greedy tokens equal to ours."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from rujokes_model import ByteLevelBPETokenizer, TransformerForCausalLM, pretrained_path  # noqa: E402
from rujokes_model.export import ExportError, export_gguf  # noqa: E402
from rujokes_model.export.cli import main as export_main  # noqa: E402
from tests.model_helpers import make_tiny_model_dir  # noqa: E402

LLAMA_TENSORS = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]
DEEPSEEK2_TENSORS = ["attn_norm", "attn_q", "attn_kv_a_mqa", "attn_kv_a_norm", "attn_k_b", "attn_v_b", "attn_output",
                     "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]


def read(path):
    reader = gguf.GGUFReader(str(path))
    fields = {name: field.contents() for name, field in reader.fields.items()}
    tensors = {t.name: t for t in reader.tensors}
    return fields, tensors


def weights(tensors, name) -> torch.Tensor:
    return torch.from_numpy(np.array(tensors[name].data, dtype=np.float32))


@pytest.fixture(scope="module")
def gqa_file(tmp_path_factory):
    source = make_tiny_model_dir(tmp_path_factory.mktemp("gqa"), position="rope", attention="gqa", max_seq_len=64)
    return source, export_gguf(source, tmp_path_factory.mktemp("out"))


@pytest.fixture(scope="module")
def mini_file(tmp_path_factory):
    return pretrained_path("mini"), export_gguf(pretrained_path("mini"), tmp_path_factory.mktemp("mini") / "mini.gguf")


def test_gqa_model_is_a_llama_file_with_llama_cpp_names_and_shapes(gqa_file):
    source, path = gqa_file
    config = TransformerForCausalLM.from_pretrained(source).config
    fields, tensors = read(path)
    assert path.name == "rujokes-llama-f32.gguf"
    assert fields["general.architecture"] == "llama"
    assert {k: fields[f"llama.{k}"] for k in ("context_length", "embedding_length", "block_count",
                                             "feed_forward_length", "attention.head_count", "attention.head_count_kv",
                                             "rope.dimension_count")} == \
        {"context_length": 64, "embedding_length": config.d_model, "block_count": config.n_layer,
         "feed_forward_length": config.d_ff, "attention.head_count": config.n_head,
         "attention.head_count_kv": config.n_kv_head, "rope.dimension_count": config.head_dim}
    assert fields["llama.rope.freq_base"] == pytest.approx(config.rope_theta)
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(config.norm_eps)
    expected = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{name}.weight" for i in range(config.n_layer) for name in LLAMA_TENSORS}
    assert set(tensors) == expected  # tied: no output.weight, llama.cpp reuses token_embd
    # ggml lists dims fastest first: a Linear (out, in) is {in, out}
    d, kv = config.d_model, config.n_kv_head * config.head_dim
    assert list(tensors["blk.0.attn_q.weight"].shape) == [d, d]
    assert list(tensors["blk.0.attn_k.weight"].shape) == [d, kv]
    assert list(tensors["blk.0.ffn_down.weight"].shape) == [config.d_ff, d]
    assert list(tensors["token_embd.weight"].shape) == [d, config.vocab_size]


def test_llama_q_and_k_keep_our_adjacent_pair_order(gqa_file):
    # llama.cpp's llama arch rotates adjacent pairs (its "normal" RoPE), as we do: rows go in unpermuted.
    source, path = gqa_file
    state = TransformerForCausalLM.from_pretrained(source).state_dict()
    config = TransformerForCausalLM.from_pretrained(source).config
    _, tensors = read(path)
    q, k, v = state["blocks.1.attn.wqkv.weight"].split([config.d_model, *[config.n_kv_head * config.head_dim] * 2])
    assert torch.equal(weights(tensors, "blk.1.attn_q.weight"), q)
    assert torch.equal(weights(tensors, "blk.1.attn_k.weight"), k)
    assert torch.equal(weights(tensors, "blk.1.attn_v.weight"), v)
    gate, up = state["blocks.1.ffn.gate_up.weight"].chunk(2)
    assert torch.equal(weights(tensors, "blk.1.ffn_gate.weight"), gate)
    assert torch.equal(weights(tensors, "blk.1.ffn_up.weight"), up)


def test_mini_is_a_dense_deepseek2_file_in_llama_cpps_mla_form(mini_file):
    source, path = mini_file
    model = TransformerForCausalLM.from_pretrained(source)
    config, state = model.config, model.state_dict()
    fields, tensors = read(path)
    assert fields["general.architecture"] == "deepseek2"
    a = "deepseek2."
    assert fields[a + "leading_dense_block_count"] == config.n_layer == 6  # every layer dense
    assert fields[a + "expert_count"] == 0 and fields[a + "attention.q_lora_rank"] == 0
    assert fields[a + "attention.kv_lora_rank"] == config.kv_lora_rank
    assert fields[a + "attention.head_count_kv"] == 1
    assert fields[a + "attention.key_length"] == config.kv_lora_rank + config.qk_rope_head_dim
    assert fields[a + "attention.value_length"] == config.kv_lora_rank
    assert fields[a + "attention.key_length_mla"] == config.qk_nope_head_dim + config.qk_rope_head_dim
    assert fields[a + "attention.value_length_mla"] == config.v_head_dim
    assert fields[a + "rope.dimension_count"] == config.qk_rope_head_dim
    expected = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{name}.weight" for i in range(config.n_layer) for name in DEEPSEEK2_TENSORS}
    assert set(tensors) == expected
    H, nope, v, rank = config.n_head, config.qk_nope_head_dim, config.v_head_dim, config.kv_lora_rank
    # the shapes llama.cpp's deepseek2 loader creates (src/models/deepseek2.cpp)
    assert list(tensors["blk.0.attn_k_b.weight"].shape) == [nope, rank, H]
    assert list(tensors["blk.0.attn_v_b.weight"].shape) == [rank, v, H]
    assert list(tensors["blk.0.attn_kv_a_mqa.weight"].shape) == [config.d_model, rank + config.qk_rope_head_dim]
    assert list(tensors["blk.0.attn_q.weight"].shape) == [config.d_model, H * (nope + config.qk_rope_head_dim)]
    # W_UK transposed and W_UV per head put back together give our wkv_b exactly
    k_b, v_b = weights(tensors, "blk.3.attn_k_b.weight"), weights(tensors, "blk.3.attn_v_b.weight")
    rebuilt = torch.cat([k_b.transpose(1, 2), v_b], dim=1).reshape(H * (nope + v), rank)
    assert torch.equal(rebuilt, state["blocks.3.attn.wkv_b.weight"])
    assert torch.equal(weights(tensors, "blk.3.attn_kv_a_mqa.weight"), state["blocks.3.attn.wkv_a.weight"])


def test_the_tokenizer_travels_with_its_merges_and_special_ids(mini_file):
    source, path = mini_file
    tokenizer = ByteLevelBPETokenizer.from_pretrained(source)
    data = json.loads(tokenizer.backend.to_str())
    fields, _ = read(path)
    tokens = fields["tokenizer.ggml.tokens"]
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert len(tokens) == tokenizer.vocab_size
    assert all(tokens[i] == t for t, i in data["model"]["vocab"].items())
    assert tokens[:3] == ["<pad>", "<bos>", "<eos>"]
    assert fields["tokenizer.ggml.token_type"][:4] == [3, 3, 3, 1]  # control, control, control, normal
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    assert fields["tokenizer.ggml.merges"] == merges
    assert (fields["tokenizer.ggml.bos_token_id"], fields["tokenizer.ggml.eos_token_id"],
            fields["tokenizer.ggml.padding_token_id"]) == (1, 2, 0)
    assert fields["tokenizer.ggml.add_bos_token"] is True and fields["tokenizer.ggml.add_eos_token"] is False


def test_f16_halves_the_matrices_and_keeps_norms_f32(gqa_file, tmp_path):
    source, _ = gqa_file
    path = export_gguf(source, tmp_path / "m.gguf", outtype="f16")
    _, tensors = read(path)
    assert tensors["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


def test_untied_models_write_the_output_head(tmp_path):
    source = make_tiny_model_dir(tmp_path / "m", position="rope", attention="gqa", tie_embeddings=False)
    _, tensors = read(export_gguf(source, tmp_path / "m.gguf"))
    assert "output.weight" in tensors


def test_alibi_cannot_be_exported_to_gguf(tmp_path, capsys):
    with pytest.raises(ExportError, match="ALiBi"):
        export_gguf(pretrained_path("nano"), tmp_path / "nano.gguf")
    assert export_main(["--to", "gguf", str(pretrained_path("nano")), str(tmp_path / "x.gguf")]) == 2
    assert "cannot export an ALiBi model" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


# -- llama.cpp itself, where llama-cpp-python is installed ----------------------------------------------------

@pytest.mark.parametrize("kind", ["gqa", "mini"])
def test_llama_cpp_greedy_tokens_equal_ours(kind, gqa_file, mini_file):
    llama_cpp = pytest.importorskip("llama_cpp")
    source, path = gqa_file if kind == "gqa" else mini_file
    model = TransformerForCausalLM.from_pretrained(source)
    tokenizer = ByteLevelBPETokenizer.from_pretrained(source)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=model.config.max_seq_len, n_threads=2, verbose=False)
    prompt = "Штирлиц пришел домой"
    ids = llm.tokenize(prompt.encode("utf-8"), add_bos=True)
    assert ids == tokenizer.encode(prompt)
    ours = model.generate(torch.tensor([ids]), 24, do_sample=False, eos_token_id=tokenizer.eos_token_id)[0, len(ids):]
    theirs = []
    for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0):
        theirs.append(token)
        if token == tokenizer.eos_token_id or len(theirs) == 24:
            break
    assert theirs == [t for t in ours.tolist() if t != tokenizer.pad_token_id]
