"""Continuous batching: rows that join a running batch (and leave it) get exactly the tokens they get alone."""
import pytest
import torch

from rujokes_model.continuous import ContinuousBatch, RowSettings
from tests.model_helpers import random_ids, tiny_model

pytestmark = pytest.mark.usefixtures("single_torch_thread")

COMBINATIONS = [("rope", "gqa"), ("rope", "mhla"), ("alibi", "gqa"), ("alibi", "mhla")]
# (join at round, prompt length, new tokens): rows join a running batch and leave it at different times.
SCHEDULE = [(0, 5, 9), (0, 2, 4), (2, 3, 8), (3, 6, 5), (7, 1, 6)]


def run_schedule(model, prompts, settings_for, step=None) -> list[list[int]]:
    """Drive a ContinuousBatch (decoding through `step`, if given) through SCHEDULE; returns each row's new tokens."""
    batch = ContinuousBatch(model, columns=48, step=step)
    tokens: list[list[int]] = [[] for _ in SCHEDULE]
    live: list[int] = []  # schedule index of each batch row
    for round_ in range(40):
        joining = [i for i, (at, _, _) in enumerate(SCHEDULE) if at == round_]
        if joining:
            assert all(batch.can_join(len(prompts[i]), SCHEDULE[i][2]) for i in joining)
            batch.join([prompts[i] for i in joining], [settings_for(i) for i in joining])
            live += joining
        if not live:
            if round_ > max(at for at, _, _ in SCHEDULE):
                break
            continue
        drawn = batch.sample().tolist()
        done = []
        for row, token in enumerate(drawn):
            tokens[live[row]].append(token)
            if len(tokens[live[row]]) == SCHEDULE[live[row]][2]:
                done.append(row)
        batch.remove(done)
        live = [i for row, i in enumerate(live) if row not in done]
        batch.feed()
    return tokens


def prompts_for(model) -> list[list[int]]:
    return [random_ids(n, model.config.vocab_size, seed=40 + i)[0].tolist() for i, (_, n, _) in enumerate(SCHEDULE)]


@pytest.mark.parametrize(("position", "attention"), COMBINATIONS)
def test_rows_joining_a_running_batch_generate_what_they_generate_alone_greedy(position, attention):
    model = tiny_model(position, attention, seed=41)
    prompts = prompts_for(model)

    joined = run_schedule(model, prompts, lambda i: RowSettings(temperature=0.0))

    for i, (prompt, (_, _, n)) in enumerate(zip(prompts, SCHEDULE)):
        alone = model.generate(torch.tensor([prompt]), n, do_sample=False)[0, len(prompt):].tolist()
        assert joined[i] == alone, f"row {i}"


@pytest.mark.parametrize(("position", "attention"), [("rope", "mhla"), ("alibi", "gqa")])
def test_seeded_rows_draw_the_same_tokens_whenever_they_join(position, attention):
    model = tiny_model(position, attention, seed=42)
    prompts = prompts_for(model)
    settings = lambda i: RowSettings(top_k=[5, 9][i % 2], temperature=[1.0, 0.8][i % 2],  # noqa: E731
                                     generator=torch.Generator().manual_seed(100 + i))

    joined = run_schedule(model, prompts, settings)

    for i, (prompt, (_, _, n)) in enumerate(zip(prompts, SCHEDULE)):
        s = settings(i)
        alone = model.generate(torch.tensor([prompt]), n, do_sample=True, top_k=s.top_k, temperature=s.temperature,
                               generator=s.generator)[0, len(prompt):].tolist()
        assert joined[i] == alone, f"row {i}"


def test_a_row_may_join_only_if_its_prompt_and_budget_fit_around_the_current_column():
    model = tiny_model("rope", "gqa")
    batch = ContinuousBatch(model, columns=20)
    assert batch.can_join(19, 1) and not batch.can_join(19, 2)  # an empty batch: the whole cache
    batch.join([[5, 6, 7, 8]], [RowSettings(temperature=0.0)])
    assert batch.next_column == 4
    assert batch.can_join(4, 16) and not batch.can_join(5, 1) and not batch.can_join(2, 17)


def test_joining_between_sample_and_feed_is_refused_and_an_emptied_batch_starts_over():
    model = tiny_model("alibi", "mhla")
    batch = ContinuousBatch(model, columns=32)
    batch.join([[5, 6, 7]], [RowSettings(temperature=0.0)])
    batch.sample()
    with pytest.raises(RuntimeError, match="between rounds"):
        batch.join([[9]], [RowSettings(temperature=0.0)])
    batch.remove([0])
    assert len(batch) == 0 and batch.cache is None
    batch.join([[1, 2, 3, 4, 5, 6]], [RowSettings(temperature=0.0)])  # longer than the first prompt: fits again
    assert batch.next_column == 6

