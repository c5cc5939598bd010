"""Position schemes and attention equivalences: ALiBi slopes, RoPE relativity, GQA ⊇ MHA, packed documents."""
import pytest
import torch

from rujokes_model import ModelConfig, TransformerForCausalLM
from rujokes_model.layers import alibi_slopes, apply_rope, rope_tables
from tests.model_helpers import ATTENTIONS, POSITIONS, random_ids, tiny_model

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def paper_slopes(n_head: int) -> list[float]:
    """ALiBi (Press et al.): 2^(-8i/n) for i = 1..n when n is a power of two; otherwise the slopes of the
    closest lower power of two m, followed by every other slope of 2m until there are n."""
    def geometric(n: int) -> list[float]:
        return [2.0 ** (-8.0 * i / n) for i in range(1, n + 1)]

    m = 1
    while m * 2 <= n_head:
        m *= 2
    if m == n_head:
        return geometric(n_head)
    return geometric(m) + geometric(2 * m)[::2][: n_head - m]


@pytest.mark.parametrize("n_head", [4, 6, 12])
def test_alibi_slopes_follow_the_paper(n_head):
    expected = torch.tensor(paper_slopes(n_head))

    torch.testing.assert_close(alibi_slopes(n_head), expected, atol=0, rtol=1e-6)


def test_alibi_slopes_for_six_heads_are_the_four_head_slopes_then_odd_eight_head_slopes():
    slopes = alibi_slopes(6).tolist()

    assert slopes == pytest.approx([2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3])


def rotate(x: torch.Tensor, position: int, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (D,) rotated as if at `position`, through apply_rope's (B, H, T, D) interface."""
    at = torch.tensor([[position]])
    return apply_rope(x[None, None, None], cos[at], sin[at])[0, 0, 0]


def test_rope_score_depends_only_on_relative_offset():
    dim, context = 16, 256
    cos, sin = rope_tables(dim, context, theta=10000.0)
    generator = torch.Generator().manual_seed(0)
    q, k = torch.randn(dim, generator=generator), torch.randn(dim, generator=generator)

    for offset in (0, 1, 5, 37):
        scores = [float(rotate(q, p, cos, sin) @ rotate(k, p + offset, cos, sin)) for p in (0, 3, 50, 100, 200)]
        assert scores == pytest.approx([scores[0]] * len(scores), abs=1e-4), f"offset {offset}"


def test_rope_score_changes_with_the_offset():
    cos, sin = rope_tables(16, 64, theta=10000.0)
    generator = torch.Generator().manual_seed(1)
    q, k = torch.randn(16, generator=generator), torch.randn(16, generator=generator)

    scores = {round(float(rotate(q, 10, cos, sin) @ rotate(k, 10 + d, cos, sin)), 4) for d in range(6)}

    assert len(scores) == 6


def test_rope_preserves_vector_norms():
    cos, sin = rope_tables(8, 32, theta=10000.0)
    x = torch.randn(2, 3, 5, 8, generator=torch.Generator().manual_seed(2))
    positions = torch.tensor([[0, 4, 9, 17, 31], [1, 2, 3, 4, 5]])

    rotated = apply_rope(x, cos[positions], sin[positions])

    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1))


@pytest.mark.parametrize("position", POSITIONS)
def test_gqa_with_as_many_kv_heads_as_query_heads_equals_mha(position):
    mha = tiny_model(position, "mha", seed=3)
    gqa = tiny_model(position, "gqa", seed=4, n_kv_head=mha.config.n_head)
    gqa.load_state_dict(mha.state_dict(), strict=True)
    ids = random_ids(14, mha.config.vocab_size, seed=5, batch=2)

    with torch.no_grad():
        torch.testing.assert_close(gqa(ids), mha(ids), atol=0, rtol=0)


def test_gqa_repeats_each_kv_head_for_consecutive_query_heads():
    """A GQA model equals an MHA model whose K/V projections repeat each KV head n_head/n_kv_head times."""
    gqa = tiny_model("rope", "gqa", seed=5, n_kv_head=2)
    mha = tiny_model("rope", "mha", seed=6)
    state = gqa.state_dict()
    head_dim, repeats = gqa.config.head_dim, gqa.config.n_head // gqa.config.n_kv_head
    for name in list(state):
        if name.endswith("attn.wqkv.weight"):
            q, k, v = state[name].split(gqa.blocks[0].attn.split)
            k, v = (w.view(-1, head_dim, w.shape[-1]).repeat_interleave(repeats, 0).flatten(0, 1) for w in (k, v))
            state[name] = torch.cat([q, k, v])
    mha.load_state_dict(state, strict=True)
    ids = random_ids(10, gqa.config.vocab_size, seed=7)

    with torch.no_grad():
        torch.testing.assert_close(mha(ids), gqa(ids), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("position", POSITIONS)
def test_second_packed_document_sees_only_itself(position, attention):
    model = tiny_model(position, attention, seed=8)
    first, second = random_ids(6, model.config.vocab_size, seed=9), random_ids(9, model.config.vocab_size, seed=10)
    packed = torch.cat([first, second], dim=1)
    document_ids = torch.tensor([[0] * 6 + [1] * 9])
    positions = torch.cat([torch.arange(6), torch.arange(9)])[None]

    with torch.no_grad():
        first_alone, second_alone = model(first), model(second)
        together = model(packed, document_ids=document_ids, position_ids=positions)

    torch.testing.assert_close(together[:, 6:], second_alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(together[:, :6], first_alone, atol=1e-5, rtol=1e-5)


def test_without_document_ids_the_second_document_does_see_the_first():
    model = tiny_model("alibi", "gqa", seed=8)
    first, second = random_ids(6, model.config.vocab_size, seed=9), random_ids(9, model.config.vocab_size, seed=10)

    with torch.no_grad():
        alone = model(second)
        together = model(torch.cat([first, second], dim=1))

    assert not torch.allclose(together[:, 6:], alone, atol=1e-3)


@pytest.mark.parametrize("position", ["rope", "alibi"])
def test_position_tables_stay_fp32_when_the_model_moves_to_bf16(position):
    config = ModelConfig.preset("nano", position=position, vocab_size=64, max_seq_len=64)
    model = TransformerForCausalLM(config).to(torch.bfloat16)
    assert model.embed.weight.dtype == torch.bfloat16
    tables = [model.rope_cos, model.rope_sin] if position == "rope" else [model.alibi]
    assert all(table.dtype == torch.float32 for table in tables)
    reference = TransformerForCausalLM(config)
    expected = [reference.rope_cos, reference.rope_sin] if position == "rope" else [reference.alibi]
    assert all(torch.equal(a, b) for a, b in zip(tables, expected))
    logits = model(torch.randint(0, 64, (1, 8)))
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()

