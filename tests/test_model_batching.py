"""Batched generation: a prompt's greedy continuation must not depend on its batch mates or on the padding."""
import pytest
import torch

from model_helpers import left_pad, random_ids, right_pad, single_torch_thread, tiny_model  # noqa: F401

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
