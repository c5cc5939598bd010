"""The compiled static-shape decode step: the same tokens as eager decoding, in generate and in a running batch.

Compiling costs ≈ 20 s a graph on two cores, so one model per kind is compiled once (module-scoped) and
serves every test here: a first batch of several rows, then a lone row (the second graph), then rows
joining and leaving a running batch, which must reuse those graphs: those rounds run under dynamo's
"fail_on_recompile" stance, so a guard that fails after warm-up (a multi-second stall in a worker) fails
the test.
"""
import pytest
import torch

from rujokes_model.compiled_step import CompiledDecodeStep, compiled_step
from rujokes_model.continuous import ContinuousBatch, RowSettings
from tests.model_helpers import ATTENTIONS, POSITIONS, left_pad, random_ids, tiny_model, torch_threads

# ALiBi + GQA (nano's preset) and RoPE + MHLA (mini's and small's): ALiBi's bias, RoPE's real-valued
# rotation, the KV cache and the latent cache each appear in the compiled graph.
COMPILED_KINDS = [("alibi", "gqa"), ("rope", "mhla")]


@pytest.fixture(scope="module", params=COMPILED_KINDS, ids=lambda kind: "+".join(kind))
def model(request):
    position, attention = request.param
    return tiny_model(position, attention, seed=7)


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_static_step_inputs_give_the_logits_of_per_step_inputs(position, attention):
    """Eager and cheap: the whole-cache mask, ALiBi bias at a tensor column and real RoPE rotation of
    `static_inputs` against the per-step inputs, for every position × attention, with left padding."""
    model = tiny_model(position, attention, seed=3)
    ids, mask = left_pad([random_ids(n, model.config.vocab_size, seed=n)[0] for n in (7, 4, 6)])
    columns = ids.shape[1] + 6
    logits = {}
    with torch.inference_mode():
        for static in (False, True):
            cache, plan = model.new_cache(3, columns), model.decode_plan(mask, columns)
            positions = (mask.cumsum(-1) - 1).clamp_min(0)
            step = model(ids, attention_mask=mask, position_ids=positions, cache=cache)[:, -1]
            seen = []
            for column in range(ids.shape[1], columns):
                tokens = step.argmax(-1)
                inputs = plan.static_inputs(torch.tensor(column)) if static else plan.inputs(column)
                step = model(tokens[:, None], cache=cache, inputs=inputs)[:, -1]
                seen.append(step)
            logits[static] = torch.stack(seen)
    torch.testing.assert_close(logits[True], logits[False], rtol=1e-5, atol=1e-5)


def test_compiled_generate_gives_the_eager_tokens_for_a_batch_and_for_a_lone_row(model):
    prompts = [random_ids(n, model.config.vocab_size, seed=10 + n)[0] for n in (9, 3, 6)]
    ids, mask = left_pad(prompts)
    compiled = model.generate(ids, 14, attention_mask=mask, do_sample=False, compile=True)
    eager = model.generate(ids, 14, attention_mask=mask, do_sample=False)
    assert torch.equal(compiled, eager)

    lone = prompts[1][None]
    assert torch.equal(model.generate(lone, 14, do_sample=False, compile=True),
                       model.generate(lone, 14, do_sample=False))
    threads = torch.get_num_threads()
    # one graph for a lone row, one for batches, both built ahead of time (the CPU's way)
    assert compiled_step(model).kinds == {(True, threads): "ahead-of-time", (False, threads): "ahead-of-time"}


def test_a_changed_thread_count_compiles_anew_instead_of_failing(model):
    """Dynamo guards on torch's thread count (inductor's C++ is built for it): a program that changes
    torch.set_num_threads between calls gets graphs for it (it once got an error, not a joke)."""
    lone = random_ids(4, model.config.vocab_size, seed=21)
    expected = model.generate(lone, 8, do_sample=False)
    other = 1 if torch.get_num_threads() > 1 else 2
    with torch_threads(other):
        assert torch.equal(model.generate(lone, 8, do_sample=False, compile=True), expected)
    assert torch.equal(model.generate(lone, 8, do_sample=False, compile=True), expected)
    assert compiled_step(model).kinds[(True, other)] == "ahead-of-time"


def test_seeded_sampling_through_the_compiled_step_reproduces_eager_draws(model):
    ids = random_ids(5, model.config.vocab_size, seed=5, batch=2)
    draws = [model.generate(ids, 10, top_k=8, generator=torch.Generator().manual_seed(99), compile=compile_)
             for compile_ in (True, False)]
    assert torch.equal(draws[0], draws[1])


def test_rows_joining_and_leaving_a_compiled_running_batch_get_the_eager_tokens(model):
    """Batch sizes 2 → 3 → 2 → 1 → 2 at growing columns, against the same rounds run eagerly."""
    vocab = model.config.vocab_size
    schedule = {0: [random_ids(4, vocab, seed=1)[0], random_ids(2, vocab, seed=2)[0]],
                2: [random_ids(3, vocab, seed=3)[0]],
                6: [random_ids(5, vocab, seed=4)[0]]}
    leave_at = {3: [0], 5: [0]}  # round → batch rows that leave after sampling

    def run(compile_: bool, step=None) -> list[list[int]]:
        batch = ContinuousBatch(model, columns=40, compile=compile_, step=step)
        drawn = []
        for round_ in range(10):
            if round_ in schedule:
                batch.join([p.tolist() for p in schedule[round_]], [RowSettings(temperature=0.0)] * len(schedule[round_]))
            drawn.append(batch.sample().tolist())
            batch.remove(leave_at.get(round_, []))
            batch.feed()
        return drawn

    eager = run(False)
    compiled_step(model).warm_up()  # both graphs, whichever tests ran before
    assert run(True) == eager
    # torch.compile's graphs (a GPU's step, and the CPU's where export fails) must not recompile either
    dynamo = CompiledDecodeStep(model, ahead_of_time=False)
    dynamo.warm_up()
    with torch.compiler.set_stance("fail_on_recompile"):
        assert run(True, step=dynamo) == eager
    assert set(dynamo.kinds.values()) == {"torch.compile"}
