"""Multi-head latent attention: the absorbed path is the naive path rearranged, and the cache holds only the latent."""
import pytest
import torch

from rujokes_model.kv_cache import KVCache, LatentCache
from tests.model_helpers import POSITIONS, clone, random_ids, tiny_model

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def set_mode(model, mode: str) -> None:
    for block in model.blocks:
        block.attn.mode = mode


def prefill_and_decode(model, ids: torch.Tensor, prompt_len: int) -> list[torch.Tensor]:
    """Logits of the prefill's last position, then of each one-token decode step."""
    with torch.no_grad():
        cache = model.new_cache(ids.shape[0], ids.shape[1])
        logits = [model(ids[:, :prompt_len], cache=cache, start=0)[:, -1]]
        for column in range(prompt_len, ids.shape[1]):
            logits.append(model(ids[:, column:column + 1], cache=cache, start=column)[:, -1])
    return logits


@pytest.mark.parametrize("position", POSITIONS)
def test_absorbed_equals_naive_at_prefill_and_every_decode_step(position):
    naive = tiny_model(position, "mhla", seed=4)
    absorbed = clone(naive)
    set_mode(naive, "naive")
    set_mode(absorbed, "absorbed")
    ids = random_ids(20, naive.config.vocab_size, seed=5, batch=2)

    naive_steps = prefill_and_decode(naive, ids, prompt_len=7)
    absorbed_steps = prefill_and_decode(absorbed, ids, prompt_len=7)

    assert len(naive_steps) == 1 + 13
    for step, (expected, actual) in enumerate(zip(naive_steps, absorbed_steps)):
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5, msg=lambda m: f"step {step}: {m}")


def test_absorbed_equals_naive_with_low_rank_queries():
    model = tiny_model("rope", "mhla", seed=6, q_lora_rank=24)
    ids = random_ids(12, model.config.vocab_size, seed=7)

    set_mode(model, "naive")
    naive_steps = prefill_and_decode(model, ids, prompt_len=4)
    set_mode(model, "absorbed")
    absorbed_steps = prefill_and_decode(model, ids, prompt_len=4)

    torch.testing.assert_close(torch.stack(absorbed_steps), torch.stack(naive_steps), atol=1e-5, rtol=1e-5)


def test_auto_mode_generation_matches_naive_mode_generation():
    model = tiny_model("rope", "mhla", seed=8)
    prompt = random_ids(6, model.config.vocab_size, seed=9)

    auto = model.generate(prompt, 30, do_sample=False)
    set_mode(model, "naive")
    naive = model.generate(prompt, 30, do_sample=False)

    assert auto.tolist() == naive.tolist()


def test_latent_cache_holds_only_latent_and_shared_rope_key():
    model = tiny_model("rope", "mhla")
    config = model.config
    cache = model.new_cache(3, 20)

    assert len(cache) == config.n_layer
    for layer_cache in cache:
        assert isinstance(layer_cache, LatentCache)
        assert layer_cache.latent.shape == (3, 20, config.kv_lora_rank)
        assert layer_cache.rope_key.shape == (3, 20, config.qk_rope_head_dim)
        # Every tensor it holds is a view of one buffer of exactly latent + rope key per column.
        buffers = {t.untyped_storage().data_ptr() for t in vars(layer_cache).values()}
        assert len(buffers) == 1
        floats = layer_cache.entries.untyped_storage().nbytes() // layer_cache.entries.element_size()
        assert floats == 3 * 20 * (config.kv_lora_rank + config.qk_rope_head_dim)


def test_latent_cache_is_smaller_than_an_equivalent_mha_cache():
    mhla = tiny_model("rope", "mhla")
    mha = tiny_model("rope", "mha")
    assert (mhla.config.n_head, mhla.config.d_model) == (mha.config.n_head, mha.config.d_model)

    def elements(cache) -> int:
        return sum(tensor.numel() for layer in cache for tensor in vars(layer).values())

    mha_cache = mha.new_cache(2, 32)
    assert all(isinstance(layer, KVCache) for layer in mha_cache)
    assert elements(mhla.new_cache(2, 32)) < elements(mha_cache)


def test_prefill_fills_the_latent_cache_up_to_the_prompt_length_only():
    model = tiny_model("rope", "mhla")
    ids = random_ids(5, model.config.vocab_size)
    cache = model.new_cache(1, 10)

    with torch.no_grad():
        model(ids, cache=cache, start=0)

    for layer_cache in cache:
        assert layer_cache.latent[:, :5].abs().sum(-1).gt(0).all()
        assert layer_cache.rope_key[:, :5].abs().sum(-1).gt(0).all()
        assert torch.count_nonzero(layer_cache.latent[:, 5:]) == 0
        assert torch.count_nonzero(layer_cache.rope_key[:, 5:]) == 0

