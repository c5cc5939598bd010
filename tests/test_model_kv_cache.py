"""KV-cached decoding: it must produce exactly what recomputing the whole sequence would, at every position."""
import pytest
import torch

from tests.model_helpers import ATTENTIONS, POSITIONS, random_ids, tiny_model

pytestmark = pytest.mark.usefixtures("single_torch_thread")

COMBINATIONS = [(position, attention) for position in POSITIONS for attention in ATTENTIONS]


@pytest.mark.parametrize(("position", "attention"), COMBINATIONS)
def test_cached_greedy_decoding_equals_uncached_token_for_token(position, attention):
    model = tiny_model(position, attention)
    prompt = random_ids(9, model.config.vocab_size, seed=1)

    cached = model.generate(prompt, 40, do_sample=False, use_cache=True)
    uncached = model.generate(prompt, 40, do_sample=False, use_cache=False)

    assert cached.shape == (1, 9 + 40)
    assert cached.tolist() == uncached.tolist()


@pytest.mark.parametrize(("position", "attention"), COMBINATIONS)
def test_cached_decode_step_at_offset_matches_last_position_of_full_forward(position, attention):
    model = tiny_model(position, attention)
    ids = random_ids(12, model.config.vocab_size, seed=2)
    prefix_len = ids.shape[1] - 1

    with torch.no_grad():
        full_last = model(ids)[:, -1]
        cache = model.new_cache(1, ids.shape[1])
        model(ids[:, :prefix_len], cache=cache, start=0)
        step = model(ids[:, prefix_len:], cache=cache, start=prefix_len)[:, -1]

    torch.testing.assert_close(step, full_last, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("position", "attention"), COMBINATIONS)
def test_every_cached_decode_step_matches_the_full_forward_at_that_position(position, attention):
    model = tiny_model(position, attention)
    ids = random_ids(16, model.config.vocab_size, seed=3)
    prompt_len = 5

    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(1, ids.shape[1])
        steps = [model(ids[:, :prompt_len], cache=cache, start=0)[:, -1]]
        for column in range(prompt_len, ids.shape[1]):
            steps.append(model(ids[:, column:column + 1], cache=cache, start=column)[:, -1])

    torch.testing.assert_close(torch.stack(steps, dim=1), full[:, prompt_len - 1:], atol=1e-5, rtol=1e-5)


def test_rope_forward_past_max_seq_len_raises():
    model = tiny_model("rope", "gqa", max_seq_len=16)
    too_long = random_ids(17, model.config.vocab_size)

    with pytest.raises(ValueError, match="max_seq_len"):
        model(too_long)


def test_rope_cached_step_past_max_seq_len_raises():
    model = tiny_model("rope", "mhla", max_seq_len=16)
    ids = random_ids(16, model.config.vocab_size)
    with torch.no_grad():
        cache = model.new_cache(1, 16)
        model(ids, cache=cache, start=0)

        with pytest.raises(ValueError, match="max_seq_len"):
            model(ids[:, :1], cache=cache, start=16)


def test_rope_cache_larger_than_context_is_refused():
    model = tiny_model("rope", "gqa", max_seq_len=16)

    with pytest.raises(ValueError, match="exceeds"):
        model.new_cache(1, 17)

