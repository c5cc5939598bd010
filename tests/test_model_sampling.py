"""Sampling: filters never let a token outside their set through; seeds make draws reproducible per row."""
import pytest
import torch

from rujokes_model.sampling import filter_logits, sample_tokens
from tests.model_helpers import left_pad, random_ids, tiny_model

pytestmark = pytest.mark.usefixtures("single_torch_thread")

DRAWS = 4000


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_logits(vocab_size: int = 50, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, vocab_size, generator=seeded(seed)) * 2.0


def draw_many(logits_row: torch.Tensor, draws: int = DRAWS, seed: int = 0, **filters) -> set[int]:
    """Sample `draws` tokens from one row (repeated as a batch) through filter_logits + sample_tokens."""
    filtered = filter_logits(logits_row.expand(draws, -1), **filters)
    return set(sample_tokens(filtered, True, seeded(seed)).tolist())


def nucleus(logits_row: torch.Tensor, top_p: float) -> set[int]:
    """Smallest set of most likely tokens whose probability mass reaches top_p (computed independently)."""
    probs = logits_row.softmax(-1).tolist()
    order = sorted(range(len(probs)), key=lambda i: -probs[i])
    kept, mass = set(), 0.0
    for token in order:
        kept.add(token)
        mass += probs[token]
        if mass >= top_p:
            break
    return kept


@pytest.mark.parametrize("k", [1, 3, 10])
def test_top_k_never_samples_outside_the_k_best(k):
    logits = random_logits(seed=k)
    best = set(logits[0].topk(k).indices.tolist())

    drawn = draw_many(logits, top_k=k)

    assert drawn <= best
    assert len(drawn) == k  # and the k best all stay possible


def test_top_k_in_generate_never_samples_outside_the_k_best_next_tokens():
    model = tiny_model("alibi", "gqa", seed=1)
    prompt = random_ids(8, model.config.vocab_size, seed=2)
    with torch.no_grad():
        best = set(model(prompt)[0, -1].topk(3).indices.tolist())
    batch = prompt.expand(500, -1)

    out = model.generate(batch, 1, do_sample=True, top_k=3, generator=seeded(3))

    assert set(out[:, -1].tolist()) <= best


@pytest.mark.parametrize("top_p", [0.3, 0.6, 0.9])
def test_top_p_never_samples_outside_the_nucleus(top_p):
    logits = random_logits(seed=int(top_p * 10))
    allowed = nucleus(logits[0], top_p)

    drawn = draw_many(logits, top_p=top_p)

    assert drawn <= allowed
    assert len(drawn) > 0


def test_top_p_keeps_exactly_the_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.1, 0.05, 0.03, 0.02]])

    kept = torch.isfinite(filter_logits(probs.log(), top_p=0.85))[0].nonzero().flatten().tolist()

    assert kept == [0, 1, 2]


def test_top_p_always_keeps_the_most_likely_token():
    logits = torch.tensor([[0.0, 5.0, 1.0, 2.0]])

    kept = torch.isfinite(filter_logits(logits, top_p=0.01))[0]

    assert kept.tolist() == [False, True, False, False]


def test_per_row_top_k_list_limits_each_row_to_its_own_k():
    logits = random_logits(seed=7).expand(3, -1)
    top_ks = [1, 3, None]
    generator = seeded(8)
    drawn = [set() for _ in top_ks]

    for _ in range(600):
        tokens = sample_tokens(filter_logits(logits, top_k=top_ks), True, generator)
        for row, token in enumerate(tokens.tolist()):
            drawn[row].add(token)

    assert drawn[0] == {int(logits[0].argmax())}
    assert drawn[1] <= set(logits[1].topk(3).indices.tolist())
    assert len(drawn[2]) > 3  # None: no top-k filter for this row


def test_per_row_top_p_list_limits_each_row_to_its_own_nucleus():
    logits = random_logits(seed=9).expand(2, -1)
    filtered = filter_logits(logits, top_p=[0.5, None])

    assert set(torch.isfinite(filtered[0]).nonzero().flatten().tolist()) == nucleus(logits[0], 0.5)
    assert torch.isfinite(filtered[1]).all()


def test_temperature_zero_row_is_greedy_while_other_rows_sample():
    model = tiny_model("rope", "mhla", seed=4)
    prompt = random_ids(6, model.config.vocab_size, seed=5)
    greedy = model.generate(prompt, 20, do_sample=False)[0].tolist()

    out = model.generate(prompt.expand(3, -1), 20, do_sample=True, temperature=[0.0, 1.5, 0.0],
                         generator=seeded(6))

    assert out[0].tolist() == greedy
    assert out[2].tolist() == greedy
    assert out[1].tolist() != greedy


def test_scalar_temperature_zero_is_greedy():
    model = tiny_model("alibi", "gqa", seed=4)
    prompt = random_ids(6, model.config.vocab_size, seed=5)

    sampled = model.generate(prompt, 20, do_sample=True, temperature=0.0, generator=seeded(1))

    assert sampled.tolist() == model.generate(prompt, 20, do_sample=False).tolist()


def test_same_generator_seed_reproduces_the_same_output():
    model = tiny_model("rope", "gqa", seed=10)
    prompt = random_ids(5, model.config.vocab_size, seed=11, batch=2)

    first = model.generate(prompt, 25, do_sample=True, top_p=0.95, generator=seeded(123))
    second = model.generate(prompt, 25, do_sample=True, top_p=0.95, generator=seeded(123))

    assert first.tolist() == second.tolist()


def test_different_seeds_give_different_outputs():
    model = tiny_model("rope", "gqa", seed=10)
    prompt = random_ids(5, model.config.vocab_size, seed=11)

    outputs = {tuple(model.generate(prompt, 25, do_sample=True, generator=seeded(seed))[0].tolist())
               for seed in range(5)}

    assert len(outputs) > 1


def test_per_row_generator_makes_a_row_independent_of_its_batch_mates():
    model = tiny_model("alibi", "mhla", seed=12)
    prompts = random_ids(7, model.config.vocab_size, seed=13, batch=3)
    seeds = [101, 202, 303]

    batch = model.generate(prompts, 20, do_sample=True, top_k=20, generator=[seeded(s) for s in seeds])

    for row, seed in enumerate(seeds):
        single = model.generate(prompts[row:row + 1], 20, do_sample=True, top_k=20, generator=seeded(seed))
        assert batch[row].tolist() == single[0].tolist(), f"row {row}"


def test_per_row_generator_row_output_does_not_change_when_batch_mates_change():
    model = tiny_model("rope", "gqa", seed=14)
    prompts = random_ids(7, model.config.vocab_size, seed=15, batch=3)
    other_mates = random_ids(7, model.config.vocab_size, seed=16, batch=3)
    other_mates[1] = prompts[1]

    first = model.generate(prompts, 20, do_sample=True, generator=[seeded(1), seeded(2), seeded(3)])
    second = model.generate(other_mates, 20, do_sample=True, generator=[seeded(9), seeded(2), seeded(8)])

    assert first[1].tolist() == second[1].tolist()
    assert first[0].tolist() != second[0].tolist()


def test_per_row_generators_with_mixed_length_prompts_match_each_prompt_alone():
    model = tiny_model("rope", "mhla", seed=17)
    prompts = [random_ids(n, model.config.vocab_size, seed=18 + n)[0] for n in (4, 9)]
    ids, mask = left_pad(prompts)

    batch = model.generate(ids, 15, attention_mask=mask, do_sample=True, generator=[seeded(5), seeded(6)])

    for row, (prompt, seed) in enumerate(zip(prompts, (5, 6))):
        single = model.generate(prompt[None], 15, do_sample=True, generator=seeded(seed))
        assert batch[row, ids.shape[1]:].tolist() == single[0, len(prompt):].tolist()


def test_per_row_generator_list_of_wrong_length_is_rejected():
    model = tiny_model("rope", "gqa")
    prompts = random_ids(4, model.config.vocab_size, batch=2)

    with pytest.raises(ValueError, match="one generator per row"):
        model.generate(prompts, 3, do_sample=True, generator=[seeded(1)])


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(1.0, None, None), (0.7, 5, None), (1.3, None, 0.8),
                                                             (0.5, 4, 0.9), (0.0, 3, None)])
def test_one_setting_for_the_batch_filters_like_the_same_setting_per_row(temperature, top_k, top_p):
    logits = torch.randn(3, 40, generator=seeded(11))

    batch_wide = filter_logits(logits, temperature, top_k, top_p)
    per_row = filter_logits(logits, [temperature] * 3, [top_k] * 3, [top_p] * 3)

    torch.testing.assert_close(batch_wide, per_row, atol=0, rtol=0)


def test_temperature_divides_the_logits():
    logits = torch.randn(2, 10, generator=seeded(12))

    torch.testing.assert_close(filter_logits(logits, temperature=2.0), logits / 2.0)
    torch.testing.assert_close(filter_logits(logits, temperature=[2.0, 0.5]), logits / torch.tensor([[2.0], [0.5]]))


def test_rows_without_a_generator_share_one_draw_and_seeded_rows_keep_theirs():
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    seeded = sample_tokens(logits, True, [torch.Generator().manual_seed(7), None, torch.Generator().manual_seed(9), None])
    alone = [sample_tokens(logits[i:i + 1], True, [torch.Generator().manual_seed(s)])[0] for i, s in ((0, 7), (2, 9))]
    assert [seeded[0], seeded[2]] == alone
    assert seeded.shape == (4,) and bool(((seeded >= 0) & (seeded < 50)).all())


def test_fused_top_k_draw_equals_filter_then_sample_with_the_same_generator():
    from rujokes_model.sampling import sample_top_k

    logits = torch.randn(6, 80, generator=seeded(21)) * 3
    for temperature in (1.0, 0.7):
        fused = sample_top_k(logits, 5, temperature, seeded(4))
        two_step = sample_tokens(filter_logits(logits, temperature, 5, None), True, seeded(4))
        assert fused.tolist() == two_step.tolist()


def test_per_row_settings_that_agree_generate_like_one_setting_for_the_batch():
    # The worker passes one value per row (and one generator slot per row, None without a seed);
    # rows that all agree must take the same path, and draw the same tokens, as batch-wide settings.
    model = tiny_model("alibi", "mhla", seed=22)
    prompts = random_ids(6, model.config.vocab_size, seed=23, batch=3)

    torch.manual_seed(5)
    per_row = model.generate(prompts, 15, do_sample=True, top_k=[7] * 3, top_p=[None] * 3, temperature=[0.9] * 3,
                             generator=[None] * 3)
    torch.manual_seed(5)
    batch_wide = model.generate(prompts, 15, do_sample=True, top_k=7, temperature=0.9)

    assert per_row.tolist() == batch_wide.tolist()

