"""fp16-packed weights for CPU inference: the fp32 model's arithmetic with fp16-rounded weights."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model_helpers import random_ids, tiny_model
from rujokes_model import TransformerForCausalLM
from rujokes_model.fp16_weights import FP16Linear, fp16_weights_supported, use_fp16_weights

pytestmark = pytest.mark.skipif(not fp16_weights_supported(), reason="needs fbgemm on an x86 CPU with AVX2")


@pytest.mark.parametrize("shape", [(1, 64), (5, 64), (2, 3, 64)])
def test_a_packed_linear_computes_with_the_weight_rounded_to_fp16(shape):
    linear = nn.Linear(64, 48, bias=False)
    x = torch.randn(shape)
    packed = FP16Linear.from_linear(linear)
    expected = F.linear(x, linear.weight.detach().half().float())
    torch.testing.assert_close(packed(x), expected, rtol=1e-5, atol=1e-5)
    assert packed.weight is linear.weight  # the fp32 Parameter is kept, not replaced


def test_bf16_checkpoint_weights_pack_without_loss():
    """The weights we ship are bf16: fp16's 10-bit mantissa holds each of them exactly (above fp16's
    subnormal range), so packing changes no weight; only summation order differs from F.linear."""
    weight = (torch.randn(40, 64) * 0.05).bfloat16().float()
    weight[weight.abs() < 2 ** -14] = 0.0
    linear = nn.Linear(64, 40, bias=False)
    linear.weight.data.copy_(weight)
    assert torch.equal(weight.half().float(), weight)
    x = torch.randn(3, 64)
    torch.testing.assert_close(FP16Linear.from_linear(linear)(x), F.linear(x, weight), rtol=1e-6, atol=1e-6)


def test_use_fp16_weights_swaps_every_linear_and_keeps_checkpoint_and_ties(tmp_path):
    model = tiny_model("rope", "mhla", seed=2, tie_embeddings=True)
    keys = list(model.state_dict())
    n_linear = sum(type(m) is nn.Linear for m in model.modules())
    ids = random_ids(6, model.config.vocab_size, seed=1, batch=2)
    with torch.inference_mode():
        before = model(ids)

    assert use_fp16_weights(model) == n_linear
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert model.lm_head.weight is model.embed.weight
    assert list(model.state_dict()) == keys
    with torch.inference_mode():
        after = model(ids)
    torch.testing.assert_close(after, before, rtol=0, atol=2e-3 * before.abs().max().item())

    model.save_pretrained(tmp_path)  # strict reload of what a packed model saves: the fp32 weights
    reloaded = TransformerForCausalLM.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), model.state_dict().values()))


def test_fp16_weights_through_the_compiled_step_give_the_eager_fp16_tokens():
    model = tiny_model("alibi", "gqa", seed=4)
    use_fp16_weights(model)
    ids = random_ids(6, model.config.vocab_size, seed=6, batch=3)
    assert torch.equal(model.generate(ids, 12, do_sample=False, compile=True),
                       model.generate(ids, 12, do_sample=False))


def test_a_model_off_the_cpu_is_refused():
    model = tiny_model()
    model.to("meta")
    with pytest.raises(ValueError, match="CPU"):
        use_fp16_weights(model)
