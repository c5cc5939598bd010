"""CPU weight kernels: our C++ int8, bf16 and fp32 products against plain fp32 arithmetic, and in the model."""
import subprocess

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rujokes_model import TransformerForCausalLM
from rujokes_model.compiled_step import compiled_step
from rujokes_model.cpu_kernels import KernelBuildError, build, cpu_kernels_supported, kernel_threads, load_cpu_kernels
from rujokes_model.lowbit_weights import (
    AbsorbedHeads,
    KernelLinear,
    quantize_int8,
    use_fp32_kernels,
    use_lowbit_weights,
)
from tests.model_helpers import random_ids, tiny_model, torch_threads

pytestmark = pytest.mark.skipif(not cpu_kernels_supported(), reason="the kernels are AVX2 (x86-64) code")


@pytest.fixture(scope="module", autouse=True)
def kernels():
    load_cpu_kernels()


def int8_op(x, q, scale):
    return torch.ops.rujokes_cpu.int8_linear(x, q, scale)


def test_int8_quantization_is_per_row_symmetric_and_within_half_a_step():
    weight = torch.randn(37, 70) * torch.logspace(-3, 0, 37)[:, None]  # rows of very different ranges
    q, scale = quantize_int8(weight)
    assert q.dtype == torch.int8 and q.abs().max() == 127 and scale.shape == (37,)
    assert ((q.float() * scale[:, None] - weight).abs() <= scale[:, None] / 2 + 1e-9).all()
    assert (q.abs().amax(dim=1) == 127).all()  # each row uses its whole range


@pytest.mark.parametrize("in_features", [384, 1024, 100, 31])  # multiples of 32 and the scalar tail
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 9])
def test_int8_kernel_matches_fp32_math_on_the_dequantized_weight(rows, in_features):
    """Only the activations are rounded (to 14 bits of their row's largest value): a relative error
    of ~1e-4, far below the int8 weights' own."""
    torch.manual_seed(rows * 1000 + in_features)
    q, scale = quantize_int8(torch.randn(53, in_features) * 0.05)
    x = torch.randn(rows, in_features)
    expected = F.linear(x, q.float() * scale[:, None])
    bound = (x.abs().amax(dim=1, keepdim=True) / 2 ** 14) * (q.float().abs() * scale[:, None]).sum(dim=1)
    assert ((int8_op(x, q, scale) - expected).abs() <= bound + 1e-6).all()
    torch.testing.assert_close(int8_op(x, q, scale), expected, rtol=2e-3, atol=2e-3 * expected.abs().max().item())


@pytest.mark.parametrize("in_features", [64, 100])
def test_the_per_head_int8_kernel_is_one_int8_linear_per_head(in_features):
    """int8_head_linear (MHLA's absorbed matrices) computes each head exactly as int8_linear would: same
    rounding, so the same bits, and each row stays independent of the other rows of its head."""
    torch.manual_seed(in_features)
    heads = [quantize_int8(torch.randn(24, in_features) * 0.05) for _ in range(3)]
    q, scale = torch.stack([h[0] for h in heads]), torch.stack([h[1] for h in heads])
    x = torch.randn(3, 5, in_features)
    out = torch.ops.rujokes_cpu.int8_head_linear(x, q, scale)
    assert out.shape == (3, 5, 24)
    for h in range(3):
        assert torch.equal(out[h], int8_op(x[h], q[h], scale[h]))
    assert torch.equal(torch.ops.rujokes_cpu.int8_head_linear(x[:, 2:3], q, scale), out[:, 2:3])
    with torch_threads(2):  # threads split the heads; each head's numbers stay the same
        assert torch.equal(torch.ops.rujokes_cpu.int8_head_linear(x, q, scale), out)
    with pytest.raises(RuntimeError, match="heads, rows, in"):
        torch.ops.rujokes_cpu.int8_head_linear(x[:2], q, scale)
    with pytest.raises(RuntimeError, match="scale"):
        torch.ops.rujokes_cpu.int8_head_linear(x, q, scale[:, :3])


def test_absorbed_mhla_matrices_come_from_wkv_b_int8_rows():
    """Decoding with int8 weights reads W_UK and W_UV as int8 too: the same products as fp32 math on the
    dequantized wkv_b, up to the activations' int16 rounding; training and bf16 weights keep fp32 ones."""
    model = tiny_model("rope", "mhla", seed=9)
    use_lowbit_weights(model, "int8")
    attn = model.blocks[0].attn
    heads = attn._lowbit_heads(torch.zeros(1))
    assert isinstance(heads, AbsorbedHeads) and heads.uk_t.dtype == heads.uv.dtype == torch.int8
    w_uk, w_uv_t = attn._absorbed_weights()  # fp32, from the dequantized weight
    H, nope, rank = w_uk.shape
    q, y = torch.randn(H, 4, nope), torch.randn(H, 4, rank)
    torch.testing.assert_close(heads.to_latent(q), torch.bmm(q, w_uk), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(heads.from_latent(y), torch.bmm(y, w_uv_t), rtol=1e-3, atol=1e-3)
    assert attn._lowbit_heads(torch.zeros(1, requires_grad=True)) is None  # autograd: fp32 products
    assert attn._lowbit_heads(torch.zeros(1, dtype=torch.float64)) is None

    bf16 = tiny_model("rope", "mhla", seed=9)
    use_lowbit_weights(bf16, "bf16")
    assert bf16.blocks[0].attn._lowbit_heads(torch.zeros(1)) is None


def test_bf16_kernel_is_fp32_math_on_bf16_weights():
    torch.manual_seed(0)
    weight = (torch.randn(45, 100) * 0.05).bfloat16()
    for rows in (1, 2, 3, 4, 7):
        x = torch.randn(rows, 100)
        torch.testing.assert_close(torch.ops.rujokes_cpu.bf16_linear(x, weight), F.linear(x, weight.float()),
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("in_features", [96, 100, 31])  # nano's width, a tail after 32-wide blocks, under one block
def test_fp32_kernel_is_fp32_math_on_the_weights_as_they_are(in_features):
    torch.manual_seed(0)
    weight = torch.randn(45, in_features) * 0.05
    for rows in (1, 2, 3, 4, 7):
        x = torch.randn(rows, in_features)
        torch.testing.assert_close(torch.ops.rujokes_cpu.fp32_linear(x, weight), F.linear(x, weight),
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="must be fp32"):
        torch.ops.rujokes_cpu.fp32_linear(torch.randn(2, in_features), weight.bfloat16())


def test_fp32_kernels_round_nothing_and_share_the_weights_storage():
    """An fp32 model served on the kernels is the same model: the Parameters are untouched, the kernel reads
    them in place (a later change of a weight is what the next product sees), the logits match torch's."""
    model = tiny_model("alibi", "gqa", seed=3, tie_embeddings=True)
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    ids = random_ids(6, model.config.vocab_size, seed=2, batch=2)
    with torch.inference_mode():
        before = model(ids)
    assert use_fp32_kernels(model) == sum(isinstance(m, KernelLinear) for m in model.modules()) > 0
    assert all(torch.equal(p, weights[name]) for name, p in model.named_parameters())
    linear = next(m for m in model.modules() if isinstance(m, KernelLinear))
    assert linear.kind == "fp32" and linear.qweight.data_ptr() == linear.weight.data_ptr()
    with torch.inference_mode(), torch.profiler.profile() as profiler:
        after = model(ids)
    assert any(event.name == "rujokes_cpu::fp32_linear" for event in profiler.events())
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_the_kernels_run_on_as_many_threads_as_torch_is_given():
    """at::parallel_for is OpenMP pragmas in torch's headers: a build without -fopenmp drops them and
    leaves every kernel on one core (it did, and a second core then gave nothing)."""
    for count in (2, 1):
        with torch_threads(count):
            assert kernel_threads() == count


@pytest.mark.parametrize("kind", ["int8", "bf16", "fp32"])
def test_a_rows_output_is_bit_identical_whatever_its_batch_mates_and_threads(kind):
    """Seeded jokes must not depend on who shares the batch: every row, alone or in any batch, at any
    position and with any thread count, gets exactly the same numbers."""
    torch.manual_seed(1)
    linear = KernelLinear.from_linear(nn.Linear(384, 300, bias=False), kind)
    x = torch.randn(11, 384)
    alone = torch.cat([linear(x[i:i + 1]) for i in range(11)])
    for count in (1, 2):
        with torch_threads(count):
            assert torch.equal(linear(x), alone)
            assert torch.equal(linear(x.flip(0)).flip(0), alone)
            assert torch.equal(linear(x[3:8]), alone[3:8])


def test_any_leading_shape_and_non_contiguous_input():
    torch.manual_seed(2)
    linear = KernelLinear.from_linear(nn.Linear(64, 40, bias=False), "int8")
    x = torch.randn(2, 3, 128)[..., ::2]  # (2, 3, 64), strided
    out = linear(x)
    assert out.shape == (2, 3, 40)
    torch.testing.assert_close(out, F.linear(x, linear.weight), rtol=1e-3, atol=1e-3)


def test_a_non_finite_activation_poisons_only_its_row():
    q, scale = quantize_int8(torch.randn(8, 64))
    x = torch.randn(3, 64)
    x[1, 7] = float("nan")
    x[2, 0] = float("inf")
    out = int8_op(x, q, scale)
    assert out[0].isfinite().all() and out[1].isnan().all() and out[2].isnan().all()


def test_bad_inputs_are_refused_with_a_clear_message():
    q, scale = quantize_int8(torch.randn(8, 64))
    with pytest.raises(RuntimeError, match="fp32 activations"):
        int8_op(torch.randn(2, 64, dtype=torch.float64), q, scale)
    with pytest.raises(RuntimeError, match="features"):
        int8_op(torch.randn(2, 63), q, scale)
    with pytest.raises(RuntimeError, match="scale"):
        int8_op(torch.randn(2, 64), q, scale[:4])
    with pytest.raises(RuntimeError, match="int8"):
        int8_op(torch.randn(2, 64), q.float(), scale)
    with pytest.raises(ValueError, match="unknown kernel weights"):
        KernelLinear.from_linear(nn.Linear(4, 4, bias=False), "int4")


@pytest.mark.parametrize("kind", ["int8", "bf16"])
def test_the_model_becomes_its_rounding_and_keeps_checkpoint_ties_and_cache_paths(kind, tmp_path):
    """After the swap the fp32 Parameters hold the rounded weights, so the tied embedding, MHLA's absorbed
    decode (derived from wkv_b) and a saved checkpoint are all the same model as the kernels compute."""
    model = tiny_model("rope", "mhla", seed=2, tie_embeddings=True)
    keys = list(model.state_dict())
    n_linear = sum(type(m) is nn.Linear for m in model.modules())
    ids = random_ids(6, model.config.vocab_size, seed=1, batch=2)
    if kind == "bf16":  # as the weights we ship: stored in bf16, so bf16 storage rounds nothing
        with torch.no_grad():
            for module in model.modules():
                if type(module) is nn.Linear:
                    module.weight.copy_(module.weight.bfloat16().float())
    with torch.inference_mode():
        before = model(ids)

    assert use_lowbit_weights(model, kind) == n_linear
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert model.lm_head.weight is model.embed.weight
    assert list(model.state_dict()) == keys
    for module in model.modules():
        if isinstance(module, KernelLinear):
            stored = module.qweight.float() * (module.scale[:, None] if kind == "int8" else 1)
            assert torch.equal(module.weight, stored)
    with torch.inference_mode():
        after = model(ids)
    if kind == "bf16":
        # Exact weights: only fp32 summation order differs from torch's matmul (measured ~1e-6 on logits of ~2.5).
        torch.testing.assert_close(after, before, rtol=0, atol=1e-5)
    else:  # int8 rounds each weight to 1/254 of its row's range: a small, measured cost, not exactness
        torch.testing.assert_close(after, before, rtol=0, atol=0.05 * before.abs().max().item())

    # Cached decoding (absorbed MHLA) agrees with uncached decoding of the rounded model.
    assert torch.equal(model.generate(ids, 10, do_sample=False),
                       model.generate(ids, 10, do_sample=False, use_cache=False))
    model.save_pretrained(tmp_path)
    reloaded = TransformerForCausalLM.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), model.state_dict().values()))


def test_training_and_other_devices_fall_back_to_plain_fp32_on_the_rounded_weight():
    linear = KernelLinear.from_linear(nn.Linear(32, 16, bias=False), "int8")
    x = torch.randn(4, 32, requires_grad=True)
    out = linear(x)
    out.sum().backward()  # autograd works: F.linear on the dequantized weight
    assert torch.equal(out, F.linear(x, linear.weight)) and x.grad is not None


@pytest.mark.parametrize("kind", ["int8", "bf16", "fp32"])
def test_lowbit_weights_through_the_compiled_step_give_the_eager_tokens(kind):
    """The kernels register their shapes in C++, so a compiled step calls them without Python."""
    model = tiny_model("alibi", "gqa", seed=4)
    ids = random_ids(6, model.config.vocab_size, seed=6, batch=3)
    before = None
    if kind == "int8":  # a step compiled before the swap must not outlive it (its module guards are skipped)
        model.generate(ids, 2, do_sample=False, compile=True)
        before = compiled_step(model)
    use_lowbit_weights(model, kind)
    assert torch.equal(model.generate(ids, 12, do_sample=False, compile=True),
                       model.generate(ids, 12, do_sample=False))
    assert compiled_step(model) is not before


def test_one_compiled_graph_serves_every_batch_size_after_warm_up():
    """The kernels' shape functions keep the batch symbolic: after warming up for one row and for two,
    batches of 3 and 5 run without a recompile (a multi-second stall in a worker)."""
    model = tiny_model("rope", "mhla", seed=5)
    use_lowbit_weights(model, "int8")
    step = compiled_step(model)
    step.warm_up()
    with torch.inference_mode(), torch.compiler.set_stance("fail_on_recompile"):
        for batch in (3, 5):
            cache = model.new_cache(batch, 16)
            plan = model.decode_plan(torch.ones(batch, 1, dtype=torch.long), 16)
            tokens = torch.arange(3, 3 + batch)
            logits = step(tokens, cache, plan, 1)
            eager = model(tokens[:, None], cache=model.new_cache(batch, 16), inputs=plan.static_inputs(torch.tensor(1)))
            # Same kernels; inductor fuses the other ops in another float order, which can move an
            # activation across an int16 rounding boundary: agreement to 1e-3, not bit for bit.
            torch.testing.assert_close(logits, eager[:, -1], rtol=1e-3, atol=1e-3)
        # Per-call cost must not grow with the model: weight shapes and float constants (norm eps, attention
        # scale) are baked into the graph, so only batch and cache sizes (a few symbols) cross into it as
        # scalars, each boxed into a tensor and read back per call (unbaked, this 2-layer model passed 31).
        with torch.profiler.profile() as profiler:
            step(tokens, cache, plan, 2)
        boxed = [event for event in profiler.events() if event.name == "aten::item"]
        assert len(boxed) <= 8, f"{len(boxed)} scalars passed into the compiled step per call"


def test_a_model_off_the_cpu_or_not_fp32_is_refused():
    model = tiny_model()
    with pytest.raises(ValueError, match="fp32 models on the CPU"):
        use_lowbit_weights(model.to(torch.bfloat16), "int8")


def test_the_build_is_cached_by_source_and_a_missing_compiler_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("RUJOKES_KERNEL_DIR", str(tmp_path / "kernels"))
    monkeypatch.setenv("CXX", "definitely-not-a-compiler")
    monkeypatch.setenv("PATH", str(tmp_path))  # no g++ either
    with pytest.raises(KernelBuildError, match="g\\+\\+"):
        build()
    monkeypatch.undo()
    # The default cache already holds this source's build (the fixture loaded it): no compiler runs.
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    assert build().is_file() and calls == []


def test_only_the_kernels_are_built_for_avx2_the_step_runner_loads_on_any_x86_64(tmp_path):
    from rujokes_model.cpu_kernels import AOT_RUNNER_SOURCE, SOURCE, _command

    kernels, runner = (_command("g++", tmp_path / name, tmp_path / "out.so") for name in (SOURCE, AOT_RUNNER_SOURCE))
    assert {"-mavx2", "-mfma"} <= set(kernels)
    assert not {"-mavx2", "-mfma"} & set(runner) and "-O3" in runner
