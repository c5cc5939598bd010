"""Configuration and model structure: preset geometry, validation, and what (not) goes into a checkpoint."""
import pytest
import torch

from rujokes_model import SIZES, ModelConfig, TransformerForCausalLM
from tests.model_helpers import tiny_model

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def on_meta(config: ModelConfig) -> TransformerForCausalLM:
    """Build the full-size model without allocating or initialising any weights."""
    with torch.device("meta"):
        return TransformerForCausalLM(config)


@pytest.mark.parametrize(("size", "layers", "heads", "d_model", "position", "attention"), [
    ("nano", 3, 4, 96, "alibi", "gqa"),
    ("mini", 6, 6, 384, "rope", "mhla"),
    ("small", 12, 12, 768, "rope", "mhla"),
])
def test_preset_geometry(size, layers, heads, d_model, position, attention):
    config = ModelConfig.preset(size)

    assert (config.n_layer, config.n_head, config.d_model) == (layers, heads, d_model)
    assert (config.position, config.attention) == (position, attention)


@pytest.mark.parametrize("size", SIZES)
def test_preset_ffn_width_is_a_multiple_of_32_near_eight_thirds_of_d_model(size):
    config = ModelConfig.preset(size)

    assert config.d_ff % 32 == 0
    assert 8 * config.d_model / 3 <= config.d_ff < 8 * config.d_model / 3 + 32


def test_nano_preset_uses_fewer_kv_heads_than_query_heads():
    config = ModelConfig.preset("nano")

    assert 1 <= config.n_kv_head < config.n_head
    assert config.n_head % config.n_kv_head == 0


def test_preset_overrides_replace_fields():
    config = ModelConfig.preset("mini", vocab_size=300, max_seq_len=64, n_layer=1)

    assert (config.vocab_size, config.max_seq_len, config.n_layer, config.d_model) == (300, 64, 1, 384)


def test_switching_a_preset_to_gqa_picks_a_dividing_kv_head_count():
    config = ModelConfig.preset("mini", attention="gqa")

    assert config.n_kv_head < config.n_head
    assert config.n_head % config.n_kv_head == 0


def test_unknown_preset_raises():
    with pytest.raises(ValueError, match="unknown size"):
        ModelConfig.preset("huge")


def test_kv_heads_not_dividing_query_heads_raises():
    with pytest.raises(ValueError, match="n_kv_head"):
        ModelConfig(n_head=6, n_kv_head=4, d_model=96, attention="gqa")


def test_unknown_position_scheme_raises():
    with pytest.raises(ValueError, match="position"):
        ModelConfig(position="sinusoidal")


def test_unknown_attention_kind_raises():
    with pytest.raises(ValueError, match="attention"):
        ModelConfig(attention="linear")


def test_d_model_not_divisible_by_heads_raises():
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(d_model=100, n_head=3, n_kv_head=1)


def test_config_round_trips_through_a_dict():
    config = ModelConfig.preset("mini", vocab_size=300)

    assert ModelConfig.from_dict(config.to_dict()) == config


def test_config_dict_with_an_unknown_key_raises():
    data = ModelConfig().to_dict() | {"n_experts": 8}

    with pytest.raises(ValueError, match="n_experts"):
        ModelConfig.from_dict(data)


@pytest.mark.parametrize("size", SIZES)
def test_position_tables_are_not_in_the_state_dict(size):
    model = on_meta(ModelConfig.preset(size))
    buffers = {name for name, _ in model.named_buffers()}

    assert buffers  # the tables exist as buffers ...
    assert buffers.isdisjoint(model.state_dict())  # ... but never reach a checkpoint
    assert not any("rope" in name or "alibi" in name for name in model.state_dict())


@pytest.mark.parametrize("size", SIZES)
def test_no_parameter_is_a_bias(size):
    model = on_meta(ModelConfig.preset(size))

    assert not [name for name, _ in model.named_parameters() if name.endswith("bias")]
    assert not [name for name in model.state_dict() if "bias" in name]


@pytest.mark.parametrize("size", SIZES)
def test_preset_models_use_the_configured_attention(size):
    config = ModelConfig.preset(size)
    model = on_meta(config)

    expected = "MultiHeadLatentAttention" if config.attention == "mhla" else "GroupedQueryAttention"
    assert {type(block.attn).__name__ for block in model.blocks} == {expected}
    assert len(model.blocks) == config.n_layer


def test_tied_embeddings_share_storage():
    model = tiny_model(tie_embeddings=True)

    assert model.lm_head.weight is model.embed.weight
    assert model.lm_head.weight.data_ptr() == model.embed.weight.data_ptr()


def test_tied_embeddings_are_counted_once():
    tied, untied = tiny_model(tie_embeddings=True), tiny_model(tie_embeddings=False)

    assert untied.num_parameters() - tied.num_parameters() == tied.embed.weight.numel()


def test_untied_head_has_its_own_storage():
    model = tiny_model(tie_embeddings=False)

    assert model.lm_head.weight.data_ptr() != model.embed.weight.data_ptr()

