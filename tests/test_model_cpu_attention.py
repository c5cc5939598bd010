"""Our CPU kernel for MHLA's absorbed decode attention (`latent_attention`): against torch's math, in the model."""
import pytest
import torch

from rujokes_model.cpu_kernels import cpu_kernels_supported, kernels_loaded, load_cpu_kernels
from rujokes_model.lowbit_weights import use_cpu_kernels
from tests.model_helpers import POSITIONS, random_ids, tiny_model, torch_threads

pytestmark = pytest.mark.skipif(not cpu_kernels_supported(), reason="the kernels are AVX2 (x86-64) code")
NEG_INF = float("-inf")


@pytest.fixture(scope="module", autouse=True)
def kernels():
    load_cpu_kernels()


def reference(q, entries, mask, scale, rank):
    scores = torch.bmm(q, entries.transpose(1, 2)) * scale + mask
    return torch.bmm(scores.softmax(-1), entries[..., :rank])


# (batch, heads, D = rank + rope, columns, rank, mask heads): mini's and small's shapes, nano's 60 = 48 + 12
# (tails of 8 and 16), and a shape smaller than one vector.
SHAPES = [(1, 6, 160, 216, 128, 1), (8, 6, 160, 216, 128, 1), (2, 12, 288, 100, 256, 1),
          (3, 4, 60, 37, 48, 4), (2, 3, 13, 5, 7, 3)]


@pytest.mark.parametrize("batch, heads, width, columns, rank, mask_heads", SHAPES)
def test_matches_softmax_attention_with_padding_unwritten_columns_and_per_head_bias(
        batch, heads, width, columns, rank, mask_heads):
    torch.manual_seed(columns)
    q, entries = torch.randn(batch, heads, width), torch.randn(batch, columns, width)
    mask = torch.zeros(batch, mask_heads, columns)
    mask[:, :, columns // 2 + 1:] = NEG_INF  # columns not written yet
    mask[0, :, :2] = NEG_INF                 # left padding of row 0
    if mask_heads > 1:                       # ALiBi-like per-head bias, one column hidden from one head only
        mask[:, :, :columns // 2] += torch.randn(batch, mask_heads, 1) * torch.arange(columns // 2)
        mask[-1, 0, 3] = NEG_INF
    out = torch.ops.rujokes_cpu.latent_attention(q, entries, mask, 0.1, rank)
    torch.testing.assert_close(out, reference(q, entries, mask, 0.1, rank), rtol=1e-5, atol=2e-6)


def test_a_sliced_cache_and_a_mask_shared_by_the_batch():
    """Eager decoding passes the cache's first columns (rows strided by the whole cache) and a mask of one row."""
    torch.manual_seed(1)
    cache, q = torch.randn(3, 40, 24), torch.randn(3, 2, 24)
    entries = cache[:, :17]
    mask = torch.zeros(1, 1, 17)
    out = torch.ops.rujokes_cpu.latent_attention(q, entries, mask, 0.3, 16)
    torch.testing.assert_close(out, reference(q, entries.contiguous(), mask, 0.3, 16), rtol=1e-5, atol=2e-6)


def test_a_row_depends_on_nothing_but_itself():
    torch.manual_seed(2)
    q, entries, mask = torch.randn(5, 6, 40), torch.randn(5, 30, 40), torch.zeros(5, 1, 30)
    together = torch.ops.rujokes_cpu.latent_attention(q, entries, mask, 0.2, 32)
    alone = torch.cat([torch.ops.rujokes_cpu.latent_attention(q[i:i + 1], entries[i:i + 1], mask[i:i + 1], 0.2, 32)
                       for i in range(5)])
    assert torch.equal(together, alone)


@pytest.mark.parametrize("batch, heads, mask_heads", [(1, 12, 1), (1, 6, 6), (2, 5, 5)])
def test_heads_split_between_threads_give_the_same_bits(batch, heads, mask_heads):
    """Fewer rows than threads: a row's heads are shared out. Each head's numbers must not depend on the
    split, even where columns are hidden from some heads only (the live columns are the row's)."""
    torch.manual_seed(heads)
    # Many near-equal probabilities, so that summing them in another order shows in the last bits: a split
    # that took its live columns from its own heads only (here 7 fewer for the first heads) is caught.
    q, entries = torch.randn(batch, heads, 40) * 0.1, torch.randn(batch, 200, 40)
    mask = torch.zeros(batch, mask_heads, 200)
    mask[:, :, 150:] = NEG_INF
    mask[:, :max(1, mask_heads // 2), 5:12] = NEG_INF  # hidden from the first half of the heads only
    with torch_threads(1):
        expected = torch.ops.rujokes_cpu.latent_attention(q, entries, mask, 0.2, 32)
    for threads in (2, 3, 4):
        with torch_threads(threads):
            assert torch.equal(torch.ops.rujokes_cpu.latent_attention(q, entries, mask, 0.2, 32), expected)
    torch.testing.assert_close(expected, reference(q, entries, mask, 0.2, 32), rtol=1e-5, atol=2e-6)


def test_bad_inputs_are_refused_with_a_clear_message():
    q, entries, mask = torch.randn(2, 3, 16), torch.randn(2, 9, 16), torch.zeros(2, 1, 9)
    with pytest.raises(RuntimeError, match="fp32"):
        torch.ops.rujokes_cpu.latent_attention(q.double(), entries, mask, 0.1, 8)
    with pytest.raises(RuntimeError, match="entries must be"):
        torch.ops.rujokes_cpu.latent_attention(q, entries[:, :, :8], mask, 0.1, 8)
    with pytest.raises(RuntimeError, match="mask must be"):
        torch.ops.rujokes_cpu.latent_attention(q, entries, torch.zeros(2, 2, 9), 0.1, 8)
    with pytest.raises(RuntimeError, match="rank"):
        torch.ops.rujokes_cpu.latent_attention(q, entries, mask, 0.1, 17)


@pytest.mark.parametrize("position", POSITIONS)
def test_mhla_decoding_runs_on_the_kernel_and_keeps_the_uncached_tokens(position):
    """Given the kernels, every cached one-token step of an MHLA model (RoPE, or ALiBi with its
    per-head bias) attends with the kernel, and greedy tokens equal uncached full-sequence decoding."""
    model = tiny_model(position, "mhla", seed=11)
    assert use_cpu_kernels(model) == model.config.n_layer and kernels_loaded()
    ids = random_ids(7, model.config.vocab_size, seed=3, batch=3)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # a left-padded row
    with torch.profiler.profile() as profiler:
        cached = model.generate(ids, 12, attention_mask=mask, do_sample=False)
    calls = [event for event in profiler.events() if event.name == "rujokes_cpu::latent_attention"]
    assert len(calls) == 11 * model.config.n_layer  # every decode step after the prefill, every layer
    assert torch.equal(cached, model.generate(ids, 12, attention_mask=mask, do_sample=False, use_cache=False))


def test_kernel_and_bmm_decode_steps_give_the_same_logits(monkeypatch):
    """Which path a step takes depends on whether the model was given the kernels; both must be one model."""
    model = tiny_model("rope", "mhla", seed=12)
    ids = random_ids(9, model.config.vocab_size, seed=4, batch=2)
    logits = {}
    use_cpu_kernels(model)
    for kernel in (True, False):
        for module in model.modules():
            if hasattr(module, "cpu_decode_kernel"):
                module.cpu_decode_kernel = kernel
        with torch.inference_mode(), torch.profiler.profile() as profiler:
            cache = model.new_cache(2, 12)
            plan = model.decode_plan(torch.ones_like(ids), 12)
            model(ids, cache=cache, start=0)
            logits[kernel] = torch.stack([model(ids[:, i:i + 1], cache=cache, inputs=plan.inputs(9 + i))[:, -1]
                                          for i in range(3)])
        used = any(event.name == "rujokes_cpu::latent_attention" for event in profiler.events())
        assert used == kernel
    torch.testing.assert_close(logits[True], logits[False], rtol=1e-5, atol=1e-5)


def test_giving_one_model_the_kernels_leaves_every_other_model_as_it_was():
    """The kernels are applied to a model by its caller, never switched on for the whole process."""
    given, other = tiny_model("rope", "mhla", seed=13), tiny_model("rope", "mhla", seed=14)
    use_cpu_kernels(given)
    ids = random_ids(5, other.config.vocab_size, seed=5)
    for model, expected in ((given, True), (other, False)):
        with torch.profiler.profile() as profiler:
            model.generate(ids, 4, do_sample=False)
        used = any(event.name == "rujokes_cpu::latent_attention" for event in profiler.events())
        assert used == expected
