"""device_sampling: a batch's draws in one sync-free expression, with per-row settings and counter seeds."""
from __future__ import annotations

import pytest
import torch

from rujokes_model.continuous import ContinuousBatch, RowSettings
from rujokes_model.device_sampling import DeviceRowSampler, draw_on_device, row_uniforms
from tests.model_helpers import random_ids, tiny_model


def rows(n: int, temperature=1.0, top_k=0, top_p=1.0, seed=0):
    return (torch.full((n,), float(temperature)), torch.full((n,), top_k), torch.full((n,), float(top_p)),
            torch.full((n,), seed, dtype=torch.int64))


def draws(logits: torch.Tensor, n: int, **settings) -> torch.Tensor:
    """n draws of one row: the same row at draw counters 0..n-1."""
    temperature, top_k, top_p, seeds = rows(n, **settings)
    return draw_on_device(logits.expand(n, -1), temperature, top_k, top_p, seeds, torch.arange(n))


def test_uniforms_are_in_the_open_unit_interval_and_evenly_spread():
    u = row_uniforms(torch.arange(64, dtype=torch.int64) * 7919, torch.zeros(64, dtype=torch.int64), 4096)
    assert 0 < float(u.min()) and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.005
    histogram = torch.histc(u, bins=10, min=0, max=1) / u.numel()
    assert float((histogram - 0.1).abs().max()) < 0.005


def test_draws_follow_the_softmax_of_the_scaled_logits():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    for temperature in (1.0, 0.7):
        tokens = draws(logits, 40_000, temperature=temperature, seed=11)
        seen = torch.bincount(tokens, minlength=6).float() / len(tokens)
        expected = (logits[0] / temperature).softmax(-1)
        assert float((seen - expected).abs().max()) < 0.01, (seen, expected)


def test_top_k_top_p_and_greedy_rows_are_respected_per_row():
    torch.manual_seed(0)
    logits = torch.randn(4, 50)
    temperature = torch.tensor([1.0, 1.0, 0.0, 1.5])
    top_k, top_p = torch.tensor([5, 0, 0, 3]), torch.tensor([1.0, 0.3, 1.0, 0.9])
    allowed_k = logits.topk(5, dim=-1).indices
    probs = logits.softmax(-1)
    order = probs[1].argsort(descending=True)
    nucleus = order[: int((probs[1][order].cumsum(0) - probs[1][order] < 0.3).sum())]
    for counter in range(300):
        tokens = draw_on_device(logits, temperature, top_k, top_p, torch.tensor([1, 2, 3, 4]),
                                torch.full((4,), counter))
        assert int(tokens[0]) in allowed_k[0].tolist()
        assert int(tokens[1]) in nucleus.tolist()
        assert int(tokens[2]) == int(logits[2].argmax())
        assert int(tokens[3]) in logits[3].topk(3).indices.tolist()


def test_a_seeded_row_draws_the_same_tokens_alone_and_among_others():
    torch.manual_seed(1)
    logits = torch.randn(5, 300)
    temperature, top_k, top_p, _ = rows(5, top_k=40)
    seeds, counters = torch.tensor([5, 6, 7, 8, 9]), torch.tensor([0, 3, 1, 9, 2])
    together = draw_on_device(logits, temperature, top_k, top_p, seeds, counters)
    alone = [int(draw_on_device(logits[i:i + 1], temperature[:1], top_k[:1], top_p[:1], seeds[i:i + 1],
                                counters[i:i + 1])[0]) for i in range(5)]
    assert together.tolist() == alone
    other_seed = draw_on_device(logits, temperature, top_k, top_p, seeds + 100, counters)
    assert other_seed.tolist() != together.tolist()


def test_the_draw_has_no_host_sync_or_data_dependent_branch():
    """fullgraph=True fails on any graph break (.item(), bool(tensor), Python branching on values)."""
    compiled = torch.compile(draw_on_device, fullgraph=True, backend="eager", dynamic=True)
    logits = torch.randn(3, 64)
    args = (torch.tensor([1.0, 0.0, 0.8]), torch.tensor([0, 5, 10]), torch.tensor([0.9, 1.0, 1.0]),
            torch.tensor([1, 2, 3]), torch.tensor([0, 0, 4]))
    assert compiled(logits, *args).tolist() == draw_on_device(logits, *args).tolist()


def test_rows_leaving_and_joining_keep_their_settings_and_counters():
    sampler = DeviceRowSampler(torch.device("cpu"))
    sampler.join([RowSettings(temperature=0.0, seed=1), RowSettings(top_k=3, seed=2)])
    logits = torch.randn(2, 20)
    sampler.sample(logits)
    sampler.keep_rows(torch.tensor([1]))
    sampler.join([RowSettings(top_p=0.5, seed=None)])
    assert sampler.top_k.tolist() == [3, 0] and sampler.top_p.tolist() == [1.0, 0.5]
    assert sampler.counters.tolist() == [1, 0] and int(sampler.seeds[0]) == 2
    assert len(sampler) == 2


@pytest.mark.parametrize("position,attention", [("rope", "mhla"), ("alibi", "gqa")])
def test_a_continuous_batch_with_the_device_sampler_gives_a_seeded_row_its_own_tokens(position, attention):
    model = tiny_model(position=position, attention=attention)
    prompts = [random_ids(6, model.config.vocab_size, seed=s)[0].tolist() for s in range(3)]
    settings = [RowSettings(top_k=10, seed=100 + i) for i in range(3)]

    def run(joined: list[int], steps: int = 8) -> dict[int, list[int]]:
        batch = ContinuousBatch(model, 64, sampler="device")
        batch.join([prompts[i] for i in joined], [settings[i] for i in joined])
        out = {i: [] for i in joined}
        for _ in range(steps):
            for i, token in zip(joined, batch.sample().tolist()):
                out[i].append(token)
            batch.feed()
        return out

    together = run([0, 1, 2])
    assert together == {i: run([i])[i] for i in range(3)}
    assert ContinuousBatch(model, 64).sampler == "host"  # the CPU default: exact torch.Generator streams


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_batch_samples_on_the_device_reproducibly():
    model = tiny_model(position="rope", attention="mhla").cuda()
    batch = ContinuousBatch(model, 64)
    assert batch.sampler == "device"
    prompt = random_ids(6, model.config.vocab_size, seed=3)[0].tolist()
    first = []
    for _ in range(2):
        batch = ContinuousBatch(model, 64)
        batch.join([prompt], [RowSettings(top_k=10, seed=5)])
        tokens = []
        for _ in range(6):
            tokens.append(int(batch.sample()[0]))
            batch.feed()
        first.append(tokens)
    assert first[0] == first[1]
