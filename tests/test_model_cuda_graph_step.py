"""The graphed decode step (rujokes_model/cuda_graph_step.py): a continuous batch decoding through it gets the
tokens it gets from the plain step, through rows joining and leaving (its caches moved into the step's fixed
memory each time), in every attention and position kind. On the CPU the step runs without capturing; the
capture is checked where CUDA is."""
import pytest
import torch

from rujokes_model.continuous import ContinuousBatch, RowSettings
from rujokes_model.cuda_graph_step import GraphedDecodeStep, buckets
from tests.model_helpers import random_ids, tiny_model
from tests.test_model_continuous import COMBINATIONS, prompts_for, run_schedule

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def greedy(i: int) -> RowSettings:
    return RowSettings(temperature=0.0)


@pytest.mark.parametrize(("position", "attention"), COMBINATIONS)
def test_a_batch_decoding_through_the_graphed_step_gets_the_plain_step_s_tokens(position, attention):
    model = tiny_model(position, attention, seed=51)
    prompts = prompts_for(model)
    step = GraphedDecodeStep(model, max_rows=4, capture=False)
    assert run_schedule(model, prompts, greedy, step=step) == run_schedule(model, prompts, greedy)
    # SCHEDULE has 1 to 4 rows live at once: the buckets of 1, 2 and 4 rows all ran, the padded ones too.
    assert all(step.replays[size] > 0 for size in (1, 2, 4)), step.replays


def test_seeded_sampled_rows_are_unchanged_by_the_graphed_step():
    model = tiny_model("rope", "mhla", seed=52)
    prompts = prompts_for(model)

    def seeded(i: int) -> RowSettings:
        return RowSettings(top_k=20, top_p=0.9, temperature=0.9, generator=torch.Generator().manual_seed(100 + i))

    step = GraphedDecodeStep(model, max_rows=8, capture=False)
    assert run_schedule(model, prompts, seeded, step=step) == run_schedule(model, prompts, seeded)


def test_more_rows_than_the_step_holds_run_the_inner_step_directly():
    model = tiny_model("alibi", "gqa", seed=53)
    step = GraphedDecodeStep(model, max_rows=2, capture=False)
    batch, plain = ContinuousBatch(model, columns=32, step=step), ContinuousBatch(model, columns=32)
    prompts = [random_ids(4, model.config.vocab_size, seed=s)[0].tolist() for s in range(3)]
    for each in (batch, plain):
        each.join(prompts, [greedy(i) for i in range(3)])
    for _ in range(5):
        assert batch.sample().tolist() == plain.sample().tolist()
        batch.feed()
        plain.feed()
    assert sum(step.replays.values()) == 0  # three rows, two seats: never through the fixed memory


def test_buckets_double_up_to_the_rows_the_step_holds():
    assert buckets(1) == [1]
    assert buckets(16) == [1, 2, 4, 8, 16]
    assert buckets(48) == [1, 2, 4, 8, 16, 32, 48]


def test_capturing_needs_cuda():
    with pytest.raises(ValueError, match="CUDA"):
        GraphedDecodeStep(tiny_model(), capture=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize(("position", "attention"), [("rope", "mhla"), ("alibi", "gqa")])
def test_captured_graphs_replay_the_plain_step_s_tokens_on_cuda(position, attention):
    model = tiny_model(position, attention, seed=54).cuda()
    prompts = prompts_for(model)
    step = GraphedDecodeStep(model, max_rows=4)
    assert step.capture
    assert run_schedule(model, prompts, greedy, step=step) == run_schedule(model, prompts, greedy)
    assert set(step._graphs) == {1, 2, 4}
