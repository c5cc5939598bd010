"""Files and the Hub: strict save/load round trips, bf16 checkpoints, push_to_hub's calls, bundled weights."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import rujokes_model.pretrained as pretrained
from rujokes_model import ByteLevelBPETokenizer, TransformerForCausalLM, pretrained_path
from rujokes_model.config import SIZES
from tests.model_helpers import clone, random_ids, tiny_model, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def logits(model, ids):
    with torch.no_grad():
        return model(ids)


@pytest.mark.parametrize(("position", "attention", "tied"),
                         [("alibi", "gqa", True), ("rope", "mhla", True), ("rope", "mha", False)])
def test_saved_model_loads_with_identical_logits(tmp_path, position, attention, tied):
    model = tiny_model(position, attention, seed=1, tie_embeddings=tied)
    ids = random_ids(10, model.config.vocab_size, seed=2)

    model.save_pretrained(tmp_path)
    loaded = TransformerForCausalLM.from_pretrained(tmp_path)

    assert loaded.config == model.config
    assert torch.equal(logits(loaded, ids), logits(model, ids))


def test_tied_model_is_saved_once_and_stays_tied_after_loading(tmp_path):
    model = tiny_model("alibi", "gqa", tie_embeddings=True)

    model.save_pretrained(tmp_path)
    loaded = TransformerForCausalLM.from_pretrained(tmp_path)

    assert "lm_head.weight" not in load_file(tmp_path / "model.safetensors")
    assert loaded.lm_head.weight.data_ptr() == loaded.embed.weight.data_ptr()


def test_model_and_tokenizer_in_one_directory_round_trip(tmp_path):
    tokenizer = tiny_tokenizer()
    model = tiny_model("rope", "mhla", vocab_size=tokenizer.vocab_size, seed=3)
    ids = torch.tensor([tokenizer.encode("Штирлиц шёл по лесу 🦔")])

    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded_model = TransformerForCausalLM.from_pretrained(tmp_path)
    loaded_tokenizer = ByteLevelBPETokenizer.from_pretrained(tmp_path)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert loaded_tokenizer.encode("Штирлиц шёл по лесу 🦔") == ids[0].tolist()
    assert torch.equal(logits(loaded_model, ids), logits(model, ids))


def test_bf16_checkpoint_loads_as_the_bf16_rounded_model(tmp_path):
    model = tiny_model("rope", "gqa", seed=4)
    ids = random_ids(8, model.config.vocab_size, seed=5)
    rounded = clone(model)
    with torch.no_grad():
        for parameter in rounded.parameters():  # round the weights only; RoPE tables are rebuilt in fp32 on load
            parameter.copy_(parameter.bfloat16().float())

    model.save_pretrained(tmp_path, dtype=torch.bfloat16)
    loaded = TransformerForCausalLM.from_pretrained(tmp_path)

    assert all(t.dtype == torch.bfloat16 for t in load_file(tmp_path / "model.safetensors").values())
    assert loaded.embed.weight.dtype == torch.float32
    for name, tensor in rounded.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert torch.equal(logits(loaded, ids), logits(rounded, ids))
    torch.testing.assert_close(logits(loaded, ids), logits(model, ids), atol=5e-2, rtol=5e-2)


def test_checkpoint_with_a_missing_key_raises(tmp_path):
    tiny_model("rope", "gqa").save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["blocks.0.attn.wqkv.weight"]
    save_file(weights, tmp_path / "model.safetensors")

    with pytest.raises(ValueError, match="blocks.0.attn.wqkv.weight"):
        TransformerForCausalLM.from_pretrained(tmp_path)


def test_checkpoint_with_an_extra_key_raises(tmp_path):
    tiny_model("rope", "gqa").save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights["blocks.0.attn.wqkv.bias"] = torch.zeros(64)
    save_file(weights, tmp_path / "model.safetensors")

    with pytest.raises(ValueError, match="blocks.0.attn.wqkv.bias"):
        TransformerForCausalLM.from_pretrained(tmp_path)


def test_checkpoint_whose_config_disagrees_with_its_weights_raises(tmp_path):
    tiny_model("rope", "gqa").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["attention"] = "mhla"
    (tmp_path / "config.json").write_text(json.dumps(config))

    with pytest.raises(ValueError, match="does not match"):
        TransformerForCausalLM.from_pretrained(tmp_path)


def test_loading_from_a_path_that_does_not_exist_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        TransformerForCausalLM.from_pretrained(tmp_path / "no-such-model")


def test_loading_from_a_directory_without_weights_raises(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()

    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        TransformerForCausalLM.from_pretrained(tmp_path)


class RecordingHubApi:
    """An HfApi stand-in that records its calls and what the uploaded folder held at upload time."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []
        self.uploaded_files: dict[str, bytes] = {}

    def create_repo(self, *args, **kwargs):
        self.calls.append(("create_repo", args, kwargs))

    def create_branch(self, *args, **kwargs):
        self.calls.append(("create_branch", args, kwargs))

    def upload_folder(self, *args, **kwargs):
        self.calls.append(("upload_folder", args, kwargs))
        folder = Path(kwargs["folder_path"])
        self.uploaded_files = {p.name: p.read_bytes() for p in folder.iterdir()}
        return type("CommitInfo", (), {"commit_url": "https://hf.co/fake/commit/1"})()


def test_push_to_hub_creates_repo_and_branch_then_uploads_model_and_tokenizer(tmp_path):
    tokenizer = tiny_tokenizer()
    model = tiny_model("alibi", "gqa", vocab_size=tokenizer.vocab_size)
    api = RecordingHubApi()

    url = model.push_to_hub("someone/rujokes", revision="nano", tokenizer=tokenizer, api=api)

    assert [name for name, _, _ in api.calls] == ["create_repo", "create_branch", "upload_folder"]
    (_, repo_args, repo_kwargs), (_, branch_args, branch_kwargs), (_, _, upload_kwargs) = api.calls
    assert "someone/rujokes" in repo_args + (repo_kwargs.get("repo_id"),)
    assert "someone/rujokes" in branch_args + (branch_kwargs.get("repo_id"),)
    assert branch_kwargs["branch"] == "nano"
    assert upload_kwargs["repo_id"] == "someone/rujokes"
    assert upload_kwargs["revision"] == "nano"
    assert set(api.uploaded_files) == {"config.json", "model.safetensors", "tokenizer.json"}
    assert url == "https://hf.co/fake/commit/1"


def test_pushed_folder_loads_back_into_the_same_model(tmp_path):
    model = tiny_model("rope", "mhla", seed=6)
    api = RecordingHubApi()

    model.push_to_hub("someone/rujokes", revision="mini", api=api)
    for name, content in api.uploaded_files.items():
        (tmp_path / name).write_bytes(content)
    loaded = TransformerForCausalLM.from_pretrained(tmp_path)

    ids = random_ids(6, model.config.vocab_size)
    assert torch.equal(logits(loaded, ids), logits(model, ids))


def test_pretrained_path_of_the_bundled_nano_is_a_loadable_dir():
    """nano ships with the package (the bot's default size must work after a plain install); a size that
    is not bundled raises with the training command (next test)."""
    path = pretrained_path("nano")
    assert "nano" in pretrained.bundled_sizes()
    model = TransformerForCausalLM.from_pretrained(path)
    tokenizer = ByteLevelBPETokenizer.from_pretrained(path)
    assert model.config.vocab_size == tokenizer.vocab_size
    assert tokenizer.decode(tokenizer.encode("Штирлиц пришел домой")) == "Штирлиц пришел домой"


def test_pretrained_path_of_a_size_not_bundled_raises_with_training_hint(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "WEIGHTS_ROOT", tmp_path)

    with pytest.raises(FileNotFoundError, match="rujokes-train"):
        pretrained_path("mini")


def test_pretrained_path_finds_a_bundled_size(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "WEIGHTS_ROOT", tmp_path)
    tiny_model().save_pretrained(tmp_path / "nano")

    assert pretrained_path("nano") == tmp_path / "nano"
    assert pretrained.bundled_sizes() == ["nano"]


def test_pretrained_path_of_an_unknown_size_raises():
    with pytest.raises(ValueError, match="unknown size"):
        pretrained_path("huge")


def split_into_legacy_keys(weights: dict, model) -> dict:
    """The checkpoint as written before the q/k/v and gate/up projections were fused."""
    legacy = {}
    for name, tensor in weights.items():
        if name.endswith("attn.wqkv.weight"):
            parts = tensor.split(model.blocks[0].attn.split)
            legacy.update({name.replace("wqkv", part): t.clone() for part, t in zip(("wq", "wk", "wv"), parts)})
        elif name.endswith("ffn.gate_up.weight"):
            gate, up = tensor.chunk(2)
            legacy.update({name.replace("gate_up", "gate"): gate.clone(), name.replace("gate_up", "up"): up.clone()})
        else:
            legacy[name] = tensor
    return legacy


@pytest.mark.parametrize("attention", ["gqa", "mhla"])
def test_checkpoint_with_unfused_legacy_projections_loads_exactly(tmp_path, attention):
    model = tiny_model("rope", attention)
    model.save_pretrained(tmp_path)
    legacy = split_into_legacy_keys(load_file(tmp_path / "model.safetensors"), model)
    assert "blocks.0.ffn.gate.weight" in legacy and "blocks.0.ffn.gate_up.weight" not in legacy
    save_file(legacy, tmp_path / "model.safetensors")

    loaded = TransformerForCausalLM.from_pretrained(tmp_path)

    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_legacy_checkpoint_missing_one_part_still_fails_the_strict_check(tmp_path):
    model = tiny_model("rope", "gqa")
    model.save_pretrained(tmp_path)
    legacy = split_into_legacy_keys(load_file(tmp_path / "model.safetensors"), model)
    del legacy["blocks.0.attn.wv.weight"]
    save_file(legacy, tmp_path / "model.safetensors")

    with pytest.raises(ValueError, match="blocks.0.attn.wqkv.weight"):
        TransformerForCausalLM.from_pretrained(tmp_path)



def test_a_size_named_alone_loads_its_bundled_weights_not_a_hub_repo(tmp_path, monkeypatch):
    """`load_for_serving("mini")` took the name; `from_pretrained("mini")` asked the Hub for a repo "mini"."""
    monkeypatch.chdir(tmp_path)  # no directory called "nano" here
    size = pretrained.bundled_sizes()[0]
    model = TransformerForCausalLM.from_pretrained(size)
    bundled = TransformerForCausalLM.from_pretrained(pretrained_path(size))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), bundled.state_dict().values()))
    tokenizer = ByteLevelBPETokenizer.from_pretrained(size)
    assert tokenizer.encode("Штирлиц") == ByteLevelBPETokenizer.from_pretrained(pretrained_path(size)).encode("Штирлиц")
    for missing in set(SIZES) - set(pretrained.bundled_sizes()):  # small, until it ships: said as such, not a Hub error
        with pytest.raises(FileNotFoundError, match="no bundled weights"):
            TransformerForCausalLM.from_pretrained(missing)
