"""int8 checkpoints: a quarter of the bytes, the worker's own rounding, dequantized on load for any device."""
from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from rujokes_model import TransformerForCausalLM
from rujokes_model.int8_storage import FORMAT, FORMAT_KEY, SCALE_SUFFIX, pack_int8, unpack_int8
from rujokes_model.lowbit_weights import quantize_int8
from tests.model_helpers import random_ids, tiny_model


@pytest.mark.parametrize("attention", ["gqa", "mhla"])
def test_an_int8_checkpoint_loads_as_the_per_row_rounding_of_the_model(tmp_path, attention):
    model = tiny_model(attention=attention, d_model=64, n_head=4, n_kv_head=2, d_ff=128)
    model.save_pretrained(tmp_path / "fp32")
    model.save_pretrained(tmp_path / "int8", dtype="int8")
    loaded = TransformerForCausalLM.from_pretrained(tmp_path / "int8")
    for name, value in model.state_dict().items():
        got = loaded.state_dict()[name]
        assert got.dtype == torch.float32
        if value.dim() == 2:
            q, scale = quantize_int8(value)
            torch.testing.assert_close(got, q.float() * scale[:, None], rtol=0, atol=0, msg=name)
        else:
            assert torch.equal(got, value), name
    ids = random_ids(12, model.config.vocab_size)
    # The rounding costs little: the logits stay close to the fp32 model's.
    with torch.no_grad():
        reference, rounded = model(ids), loaded(ids)
    assert (rounded - reference).abs().max() < 0.05 * reference.abs().max()
    fp32_bytes = (tmp_path / "fp32" / "model.safetensors").stat().st_size
    assert (tmp_path / "int8" / "model.safetensors").stat().st_size < 0.35 * fp32_bytes


def test_an_int8_checkpoint_says_so_and_keeps_norm_gains_in_fp32(tmp_path):
    tiny_model().save_pretrained(tmp_path, dtype="int8")
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as fh:
        assert fh.metadata()[FORMAT_KEY] == FORMAT
        dtypes = {key: fh.get_tensor(key).dtype for key in fh.keys()}
    assert dtypes["embed.weight"] == torch.int8 and dtypes["embed.weight" + SCALE_SUFFIX] == torch.float32
    assert all(dtype == torch.float32 for key, dtype in dtypes.items() if "norm" in key)


def test_requantizing_a_loaded_int8_checkpoint_gives_back_the_stored_rows(tmp_path):
    """The CPU worker rounds the loaded fp32 weights to int8 again: it must land on the same integers."""
    model = tiny_model(attention="mhla")
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    packed, _ = pack_int8(state)
    for name, value in unpack_int8(packed).items():
        if value.dim() == 2:
            q, _ = quantize_int8(value)
            assert torch.equal(q, packed[name]), name


def test_damaged_int8_states_are_refused():
    packed, _ = pack_int8({"w": torch.randn(4, 3)})
    with pytest.raises(ValueError, match="do not match"):
        unpack_int8({**packed, "w" + SCALE_SUFFIX: torch.ones(5)})
    with pytest.raises(ValueError, match="without their weights"):
        unpack_int8({"v" + SCALE_SUFFIX: torch.ones(4)})
