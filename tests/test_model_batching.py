"""Batched generation: a prompt's greedy continuation must not depend on its batch mates or on the padding."""
import pytest
import torch

from tests.model_helpers import left_pad, random_ids, right_pad, tiny_model

pytestmark = pytest.mark.usefixtures("single_torch_thread")

COMBINATIONS = [("rope", "gqa"), ("rope", "mhla"), ("alibi", "gqa"), ("alibi", "mhla")]
LENGTHS = (3, 11, 7, 1)
NEW_TOKENS = 12


def mixed_prompts(vocab_size: int) -> list[torch.Tensor]:
    return [random_ids(n, vocab_size, seed=20 + row)[0] for row, n in enumerate(LENGTHS)]


def alone(model, prompt: torch.Tensor) -> list[int]:
    return model.generate(prompt[None], NEW_TOKENS, do_sample=False)[0, len(prompt):].tolist()


@pytest.mark.parametrize(("position", "attention"), COMBINATIONS)
def test_left_padded_batch_equals_each_prompt_generated_alone(position, attention):
    model = tiny_model(position, attention, seed=11)
    prompts = mixed_prompts(model.config.vocab_size)
    ids, mask = left_pad(prompts)

    batch = model.generate(ids, NEW_TOKENS, attention_mask=mask, do_sample=False)

    new_tokens = batch[:, ids.shape[1]:].tolist()
    assert new_tokens == [alone(model, prompt) for prompt in prompts]


@pytest.mark.parametrize(("position", "attention"), COMBINATIONS)
def test_right_padded_batch_is_normalised_to_left_padding(position, attention):
    model = tiny_model(position, attention, seed=12)
    prompts = mixed_prompts(model.config.vocab_size)
    right_ids, right_mask = right_pad(prompts, pad_id=5)
    left_ids, left_mask = left_pad(prompts, pad_id=0)

    from_right = model.generate(right_ids, NEW_TOKENS, attention_mask=right_mask, do_sample=False, pad_token_id=0)
    from_left = model.generate(left_ids, NEW_TOKENS, attention_mask=left_mask, do_sample=False, pad_token_id=0)

    assert from_right.tolist() == from_left.tolist()
    assert from_right[:, left_ids.shape[1]:].tolist() == [alone(model, prompt) for prompt in prompts]


def test_generate_returns_left_padded_prompt_followed_by_new_tokens():
    model = tiny_model("rope", "gqa", seed=13)
    prompts = mixed_prompts(model.config.vocab_size)
    ids, mask = right_pad(prompts, pad_id=7)

    out = model.generate(ids, NEW_TOKENS, attention_mask=mask, do_sample=False, pad_token_id=0)

    expected_prompt, _ = left_pad(prompts, pad_id=0)
    assert out.shape == (len(prompts), ids.shape[1] + NEW_TOKENS)
    assert out[:, : ids.shape[1]].tolist() == expected_prompt.tolist()


def test_padding_token_values_do_not_matter():
    model = tiny_model("alibi", "mhla", seed=14)
    prompts = mixed_prompts(model.config.vocab_size)
    ids_a, mask = left_pad(prompts, pad_id=0)
    ids_b = ids_a.masked_fill(mask == 0, 42)

    a = model.generate(ids_a, NEW_TOKENS, attention_mask=mask, do_sample=False)
    b = model.generate(ids_b, NEW_TOKENS, attention_mask=mask, do_sample=False)

    assert a[:, ids_a.shape[1]:].tolist() == b[:, ids_b.shape[1]:].tolist()


@pytest.mark.parametrize(("position", "attention"), [("rope", "mhla"), ("alibi", "gqa")])
def test_uncached_padded_batch_equals_cached_padded_batch(position, attention):
    model = tiny_model(position, attention, seed=15)
    ids, mask = left_pad(mixed_prompts(model.config.vocab_size))

    cached = model.generate(ids, NEW_TOKENS, attention_mask=mask, do_sample=False, use_cache=True)
    uncached = model.generate(ids, NEW_TOKENS, attention_mask=mask, do_sample=False, use_cache=False)

    assert cached.tolist() == uncached.tolist()


# ---------------------------------------------------------------- finished rows leave the batch

def eos_that_ends_rows_at_different_steps(free: torch.Tensor) -> int:
    """A token that some rows, but not all, produce early in `free` (new tokens generated without eos):
    used as eos it finishes rows one by one."""
    rows = free.tolist()
    candidates = {token for row in rows for token in row[:NEW_TOKENS // 2]}
    return max(candidates, key=lambda t: (0 < sum(t in row[:NEW_TOKENS - 2] for row in rows) < len(rows),
                                          sum(t in row[:NEW_TOKENS // 2] for row in rows)))


@pytest.fixture()
def compactions(monkeypatch):
    """Counts how often generation drops finished rows from a cache."""
    from rujokes_model.kv_cache import KVCache, LatentCache

    calls = []
    for cls in (KVCache, LatentCache):
        original = cls.keep_rows
        monkeypatch.setattr(cls, "keep_rows", lambda self, rows, original=original: (calls.append(len(rows)),
                                                                                     original(self, rows))[1])
    return calls


@pytest.mark.parametrize(("position", "attention"), COMBINATIONS)
def test_finished_rows_leave_the_batch_without_changing_anyones_tokens(position, attention, compactions):
    model = tiny_model(position, attention, seed=31)
    ids, mask = left_pad(mixed_prompts(model.config.vocab_size) * 2)  # 8 rows
    free = model.generate(ids, NEW_TOKENS, attention_mask=mask, do_sample=False)[:, ids.shape[1]:]
    eos = eos_that_ends_rows_at_different_steps(free)
    kwargs = dict(attention_mask=mask, do_sample=False, eos_token_id=eos, pad_token_id=0)

    kept = model.generate(ids, NEW_TOKENS, compact=False, **kwargs)
    assert compactions == []
    compacted = model.generate(ids, NEW_TOKENS, **kwargs)

    assert compactions, "no row left the batch: the test's eos never finished a row early"
    assert compacted.tolist() == kept.tolist()


def test_seeded_rows_draw_the_same_tokens_after_their_batch_mates_leave(compactions):
    model = tiny_model("rope", "mhla", seed=32)
    ids, mask = left_pad(mixed_prompts(model.config.vocab_size) * 2)

    def run(compact: bool, eos: int | None) -> torch.Tensor:
        generators = [torch.Generator().manual_seed(s) for s in range(8)]
        return model.generate(ids, NEW_TOKENS, attention_mask=mask, do_sample=True, top_k=[5, 9] * 4,
                              temperature=[1.0, 0.8] * 4, eos_token_id=eos, pad_token_id=0,
                              generator=generators, compact=compact)

    # Seeded rows draw the same tokens whatever eos is, until they stop: pick eos from a free run.
    eos = eos_that_ends_rows_at_different_steps(run(False, None)[:, ids.shape[1]:])
    kept = run(False, eos).tolist()
    assert compactions == []
    assert run(True, eos).tolist() == kept
    assert compactions

