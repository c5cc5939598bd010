"""The model engine: a batch of jobs through the real model (tiny random weights)."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from bot.worker.engine import ModelEngine
from bot.worker.engine_api import Job
from bot.worker.loading import CannotServe, build_engine, load_source
from rujokes_model.compiled_step import compiled_step
from rujokes_model.config import SIZES
from rujokes_model.endings import MIN_JOKE_TOKENS, end_at_sentence
from rujokes_model.lowbit_weights import KernelLinear
from rujokes_model.pretrained import bundled_sizes
from tests.model_helpers import make_tiny_model_dir

PROMPTS = ["Штирлиц пришел домой", "Вовочка", "Приходит мужик к врачу", "Армянское радио спросили",
           "Жена говорит мужу", "Встречаются два программиста", "Кот", "Шеф, всё пропало"]


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> ModelEngine:
    path = make_tiny_model_dir(tmp_path_factory.mktemp("tiny-nano"))
    return ModelEngine({"nano": load_source("nano", str(path), torch.device("cpu"))}, torch.device("cpu"))


def job(i: int, prompt: str, **fields) -> Job:
    values = dict(request_id=f"r{i}", prompt=prompt, top_k=10, temperature=1.0, top_p=None,
                  max_new_tokens=30, seed=1000 + i)
    values.update(fields)
    return Job(**values)


def test_a_batch_of_eight_matches_each_job_generated_alone_with_the_same_seed(engine):
    jobs = [job(i, p) for i, p in enumerate(PROMPTS)]
    batched = engine.generate("nano", jobs)
    alone = [engine.generate("nano", [j])[0] for j in jobs]
    assert [o.text for o in batched] == [o.text for o in alone]
    assert [o.request_id for o in batched] == [j.request_id for j in jobs]


def test_batching_needs_far_fewer_forward_passes_than_one_per_token_per_request(engine, monkeypatch):
    """Seen from the model: how often it is called and on how many rows at a time (an engine that ran
    each job alone would call it once per token per job, always on one row)."""
    model = engine.models["nano"].model
    calls: list[tuple[int, int]] = []  # (rows, tokens per row) of every forward call
    real_forward = model.forward

    def counting_forward(input_ids, **kwargs):
        calls.append(tuple(input_ids.shape))
        return real_forward(input_ids, **kwargs)

    monkeypatch.setattr(model, "forward", counting_forward)
    outputs = engine.generate("nano", [job(i, p) for i, p in enumerate(PROMPTS)])

    total_tokens = sum(o.new_tokens for o in outputs)
    assert total_tokens > 8 * 5
    prefills, steps = [c for c in calls if c[1] > 1], [c for c in calls if c[1] == 1]
    assert prefills == [(8, prefills[0][1])]  # one prefill of all eight prompts together
    assert steps[0][0] == 8  # and decode steps on all eight rows at once
    assert len(calls) <= 1 + 30  # one call per step for the whole batch (max_new_tokens=30), not per request
    assert len(calls) < total_tokens / 4
    # No more_jobs here: finished rows leave and the batch only shrinks; it never restarts row by row.
    assert [rows for rows, _ in steps] == sorted((rows for rows, _ in steps), reverse=True)


def test_every_text_starts_with_its_prompt_and_respects_its_own_token_limit(engine):
    jobs = [job(0, "Штирлиц пришел домой", max_new_tokens=3), job(1, "Вовочка", max_new_tokens=25)]
    short, long = engine.generate("nano", jobs)
    assert short.new_tokens <= 3 and long.new_tokens <= 25
    assert short.text.startswith("Штирлиц пришел домой") and long.text.startswith("Вовочка")


def test_each_job_is_reported_done_once_as_its_row_finishes_and_short_ones_first(engine):
    jobs = [job(0, "Вовочка", max_new_tokens=25), job(1, "Кот", max_new_tokens=2), job(2, "Колобок", max_new_tokens=9)]
    done = []
    outputs = engine.generate("nano", jobs, on_done=done.append)
    assert sorted(done, key=lambda o: o.request_id) == sorted(outputs, key=lambda o: o.request_id)
    passes = [o.forward_passes for o in done]
    assert passes == sorted(passes)  # reported in the order the rows finished
    assert done[0].request_id == "r1" and done[0].forward_passes <= 3 < done[-1].forward_passes


def test_rows_keep_their_own_sampling_settings(engine):
    """Every row is checked against the same job generated alone (its own settings, its own seed), in both
    orders, so giving every row the first (or any one) row's settings fails."""
    greedy = job(0, "Кот", temperature=0.0, seed=1)
    again = job(1, "Кот", temperature=0.0, seed=2)
    sampled = job(2, "Кот", temperature=1.5, top_k=0, seed=3)
    top1 = job(3, "Кот", temperature=1.0, top_k=1, seed=4)  # top-k 1 is greedy at any temperature
    alone = {j.request_id: engine.generate("nano", [j])[0].text for j in (greedy, again, sampled, top1)}
    assert alone["r0"] == alone["r1"] == alone["r3"]  # greedy whatever the seed
    assert alone["r2"] != alone["r0"]  # the sampled row really samples (seeded: the same draw every run)
    for order in ([greedy, again, sampled, top1], [sampled, top1, greedy, again]):
        outputs = engine.generate("nano", order)
        assert {o.request_id: o.text for o in outputs} == alone, [j.request_id for j in order]


@pytest.mark.parametrize("prompt", ["", " ", "😂😂😂", "\x00\x07\x1b[31m", "ﷺ" * 5, "א" * 20, "<b>&amp;</b>",
                                    "Штирлиц " * 2000, "\n\n\n", "a" * 10_000])
def test_hostile_prompts_produce_text_without_errors(engine, prompt):
    """Odd input is kept as typed (a long one: its last tokens), stays within its token budget, and neither
    disturbs a batch mate nor is disturbed by one. (Random tiny weights write random bytes, so the new text
    itself may hold U+FFFD: what the real weights write is checked in test_bundled_weights.py and the
    bundled-model journey in test_bot_e2e.py.)"""
    hostile, neighbour = job(0, prompt, max_new_tokens=10), job(1, "Штирлиц пришел домой", max_new_tokens=10)
    (output,) = engine.generate("nano", [hostile])
    assert isinstance(output.text, str) and 0 < output.new_tokens <= 10
    if len(prompt) < 100:
        assert output.text.startswith(prompt.strip())
    else:  # longer than the context: the text starts inside the prompt's tail, not with garbage
        assert output.text[:100] in prompt
        assert len(output.text) < len(prompt)
    together = engine.generate("nano", [neighbour, hostile])
    assert [o.text for o in together] == [engine.generate("nano", [neighbour])[0].text, output.text]


def test_partials_grow_and_end_at_the_final_text(engine):
    seen: list[tuple[str, str]] = []
    (output,) = engine.generate("nano", [job(0, "Вовочка", max_new_tokens=20)], on_partial=lambda r, t: seen.append((r, t)))
    texts = [t for _, t in seen]
    assert texts and all(r == "r0" for r, _ in seen)
    assert all(len(a) <= len(b) for a, b in zip(texts, texts[1:]))
    if output.new_tokens < 20:  # the model ended it: the partials end at its text
        assert output.text.startswith(texts[-1].rstrip())
    else:  # cut by its limit: the stream's text, ended after a sentence (rujokes_model/endings.py)
        assert output.text == end_at_sentence(texts[-1], "Вовочка")


def test_a_joke_is_more_than_its_opening_eos_waits_for_its_first_tokens(tmp_path):
    """After an opening that is a whole sentence nano drew <eos> first in 22 of 400 samples, and the bot answered
    with the opening alone. Here <eos> is made the greedy first token: the joke goes on past it."""
    loaded = load_source("nano", str(make_tiny_model_dir(tmp_path / "tiny")), torch.device("cpu"))
    prompt = "Штирлиц пришел домой."
    with torch.inference_mode():
        loaded.tokenizer.eos_token_id = int(loaded.model(torch.tensor([loaded.tokenizer.encode(prompt)]))[0, -1].argmax())
    engine = ModelEngine({"nano": loaded}, torch.device("cpu"))
    (output,) = engine.generate("nano", [job(0, prompt, temperature=0.0, top_k=0, max_new_tokens=20)])
    assert output.new_tokens >= MIN_JOKE_TOKENS and len(output.text) > len(prompt), output


def test_unknown_size_raises_instead_of_guessing(engine):
    with pytest.raises(KeyError):
        engine.generate("small", [job(0, "Кот")])


def test_build_engine_skips_sizes_that_cannot_be_loaded(tmp_path, caplog):
    path = make_tiny_model_dir(tmp_path / "nano")
    unshipped = [size for size in SIZES if size not in bundled_sizes()]  # small, until it ships
    settings = SimpleNamespace(device="cpu", torch_threads=0, cuda_graphs=True, default_size="nano", compile_decode=False, cpu_bf16_sizes=[], cpu_int8_sizes=[], model_sources=lambda: {
        "nano": str(path), "mini": str(tmp_path / "missing"), "small": "", **dict.fromkeys(unshipped, "bundled")})
    with caplog.at_level(logging.INFO, logger="bot.worker.loading"):
        assert build_engine(settings).available_sizes() == ["nano"]
    # A configured model that is not there is a warning; the default of a size not shipped yet is no news.
    warned = {record.getMessage().split()[1] for record in caplog.records if record.levelno >= logging.WARNING}
    assert warned == {"mini"}
    assert all(any(f"size {size} is not bundled" in record.getMessage() for record in caplog.records)
               for size in unshipped)


def test_build_engine_with_nothing_loadable_names_the_training_command(tmp_path):
    settings = SimpleNamespace(device="cpu", torch_threads=0, cuda_graphs=True, default_size="nano", compile_decode=False, cpu_bf16_sizes=[], cpu_int8_sizes=[],
                               model_sources=lambda: {"nano": str(tmp_path / "missing")})
    with pytest.raises(CannotServe, match="rujokes-train"):
        build_engine(settings)


def test_a_compiled_int8_engine_answers_while_compiling_and_writes_the_same_jokes_after(tmp_path, compile_at_normal_priority):
    """COMPILE_DECODE and CPU_INT8_SIZES: build_engine returns at once with the step compiling in the
    background; batches started before it is ready decode eagerly, later ones through the compiled step,
    and seeded jobs joining a running batch get the same texts either way."""
    path = make_tiny_model_dir(tmp_path / "nano")
    settings = SimpleNamespace(device="cpu", torch_threads=0, cuda_graphs=True, default_size="nano", compile_decode=True, cpu_bf16_sizes=[],
                               cpu_int8_sizes=["nano"], model_sources=lambda: {"nano": str(path)})
    engine = build_engine(settings)
    model = engine.models["nano"].model
    assert all(m.kind == "int8" for m in model.modules() if isinstance(m, KernelLinear))
    assert any(isinstance(m, KernelLinear) for m in model.modules())
    first = [job(0, "Вовочка", max_new_tokens=16), job(1, "Кот", max_new_tokens=5)]
    late = [job(2, "Колобок", max_new_tokens=7)]

    def texts() -> tuple[bool, dict[str, str]]:
        offers = list(late)
        compiled = engine.compiled("nano")
        outputs = engine.generate("nano", first, more_jobs=lambda rows: [offers.pop()] if offers else [])
        return compiled, {o.request_id: o.text for o in outputs}

    was_compiled, eager = texts()
    assert not was_compiled  # a tiny model's compile takes seconds, its first batch milliseconds
    assert engine.compiling["nano"].wait(timeout=300), engine.compiling["nano"].error
    threads = torch.get_num_threads()
    assert compiled_step(model).kinds == {(True, threads): "ahead-of-time", (False, threads): "ahead-of-time"}
    now_compiled, compiled = texts()
    assert now_compiled and set(compiled) == {"r0", "r1", "r2"}
    assert compiled == eager


def test_only_the_default_size_compiles_at_start_and_another_once_it_is_asked_for(tmp_path, compile_at_normal_priority):
    """A compile shares the cores with decoding: sizes nobody asks for never compile."""
    paths = {size: make_tiny_model_dir(tmp_path / size, seed=i) for i, size in enumerate(("nano", "mini"))}
    settings = SimpleNamespace(device="cpu", torch_threads=0, cuda_graphs=True, default_size="mini", compile_decode=True,
                               cpu_bf16_sizes=[], cpu_int8_sizes=[], model_sources=lambda: {k: str(v) for k, v in paths.items()})
    engine = build_engine(settings)
    assert set(engine.compiling) == {"mini"}
    assert engine.compiling["mini"].wait(timeout=300), engine.compiling["mini"].error
    eager = engine.generate("nano", [job(0, "Кот", max_new_tokens=6)])  # the first ask starts nano's compile
    assert set(engine.compiling) == {"mini", "nano"}
    assert engine.compiling["nano"].wait(timeout=300), engine.compiling["nano"].error
    assert engine.compiled("nano") and engine.generate("nano", [job(0, "Кот", max_new_tokens=6)]) == eager


def test_a_worker_without_a_compiler_serves_the_size_with_fp32_weights(tmp_path, monkeypatch, caplog):
    """CPU_INT8_SIZES on a machine where the kernels cannot be built: slower, not down."""
    import rujokes_model.cpu_kernels as cpu_kernels

    monkeypatch.setattr(cpu_kernels, "_loaded", None)  # as in a fresh process
    monkeypatch.setenv("RUJOKES_KERNEL_DIR", str(tmp_path / "no-build-yet"))
    monkeypatch.setenv("CXX", "no-such-compiler")
    monkeypatch.setenv("PATH", str(tmp_path))
    path = make_tiny_model_dir(tmp_path / "nano")
    settings = SimpleNamespace(device="cpu", torch_threads=0, cuda_graphs=True, default_size="nano", compile_decode=False, cpu_bf16_sizes=[],
                               cpu_int8_sizes=["nano"], model_sources=lambda: {"nano": str(path)})
    engine = build_engine(settings)
    assert not any(isinstance(m, KernelLinear) for m in engine.models["nano"].model.modules())
    assert "keeping fp32 weights" in caplog.text and "g++" in caplog.text
    [output] = engine.generate("nano", [job(0, "Кот", max_new_tokens=4)])
    assert output.request_id == "r0" and output.text


def test_loading_for_the_cpu_flushes_denormal_floats(tmp_path):
    # Denormals cost x86 cores 10-100x per op (nano decoded 1.5x slower with them); the serving process owns
    # its float environment and turns them off when it loads a model for the CPU.
    torch.set_flush_denormal(False)
    tiny = torch.tensor([1e-39], dtype=torch.float32)
    assert (tiny * 0.5).item() != 0.0
    load_source("nano", str(make_tiny_model_dir(tmp_path)), torch.device("cpu"))
    assert (tiny * 0.5).item() == 0.0


def test_jobs_offered_between_steps_join_the_running_batch_and_match_their_solo_text(engine):
    first = [job(0, "Вовочка", max_new_tokens=20), job(1, "Кот", max_new_tokens=20)]
    late = [job(2, "Колобок", max_new_tokens=6), job(3, "Шеф, всё пропало", max_new_tokens=8)]
    solo = {j.request_id: engine.generate("nano", [j])[0].text for j in first + late}
    offers, done, to_offer = [], [], list(late)

    def more_jobs(rows_in_batch: int) -> list[Job]:
        offers.append(rows_in_batch)
        return [to_offer.pop(0)] if to_offer else []

    outputs = engine.generate("nano", first, on_done=done.append, more_jobs=more_jobs)

    assert [o.request_id for o in outputs] == ["r0", "r1", "r2", "r3"]
    assert offers[0] == 2  # asked while the first two rows were running
    # The late jobs finished before the first ones: they joined mid-batch instead of waiting for it to end.
    finished = [o.request_id for o in done]
    assert finished.index("r2") < finished.index("r0") and finished.index("r3") < finished.index("r0")
    assert {o.request_id: o.text for o in outputs} == solo  # seeded: the same joke, however it was batched


def test_asks_for_more_jobs_back_off_while_none_come_and_reset_when_one_joins(engine, monkeypatch):
    model = engine.models["nano"].model
    decode_steps = []
    real_forward = model.forward

    def counting_forward(input_ids, **kwargs):
        if input_ids.shape[1] == 1:
            decode_steps.append(input_ids.shape[0])
        return real_forward(input_ids, **kwargs)

    monkeypatch.setattr(model, "forward", counting_forward)
    asked_at, late = [], [job(9, "Колобок", max_new_tokens=4)]

    def more_jobs(rows_in_batch: int) -> list[Job]:
        asked_at.append(len(decode_steps))
        return [late.pop()] if late and len(asked_at) == 3 else []

    engine.generate("nano", [job(0, "Вовочка", max_new_tokens=60, top_k=0, temperature=0.0)], more_jobs=more_jobs)

    gaps = [b - a for a, b in zip(asked_at, asked_at[1:])]
    assert asked_at[0] == 3  # asked after the 4th draw, before its token is fed
    assert gaps[:3] == [8, 16, 4]  # nothing came: every 4, then 8, then 16 steps; a job joined: every 4 again


def test_forty_emoji_cut_to_fit_the_context_show_no_broken_character(engine):
    """The prompt is cut inside an emoji for some limits (byte-level tokens hold parts of one): the text
    and every partial still start on a whole 😀 and hold no U+FFFD, whatever the model appends."""
    loaded = engine.models["nano"]
    tokenizer, context = loaded.tokenizer, loaded.model.config.max_seq_len
    prompt = "😀" * 40
    ids = tokenizer.encode(prompt)
    assert len(ids) > context  # one token a byte here: 160 bytes
    limits = range(30, 38)  # 8 cuts, one byte apart: every offset inside an emoji
    assert any(tokenizer.starts_mid_character(ids[-(context - limit)]) for limit in limits)  # the old cut split one
    for limit in limits:
        partials: list[str] = []
        (output,) = engine.generate("nano", [job(limit, prompt, max_new_tokens=limit, temperature=1.5, top_k=0)],
                                    on_partial=lambda _, text: partials.append(text))
        for text in [output.text, *partials]:
            assert "\ufffd" not in text and text.startswith("😀"), (limit, text)


def test_a_gpu_engine_s_graphed_steps_write_the_same_jokes_through_joins_and_leaves(tmp_path):
    """What a GPU worker decodes through by default (CUDA_GRAPHS), here without the capture a CPU cannot do."""
    path = make_tiny_model_dir(tmp_path / "tiny-nano")
    plain = ModelEngine({"nano": load_source("nano", str(path), torch.device("cpu"))}, torch.device("cpu"))
    graphed = ModelEngine({"nano": load_source("nano", str(path), torch.device("cpu"))}, torch.device("cpu"))
    assert not graphed.cuda_graphs  # a CPU engine never asks for graphs...
    graphed.cuda_graphs = True      # ...so this test opts in for it
    texts = {}
    for name, engine in (("plain", plain), ("graphed", graphed)):
        late = [job(5, "Колобок", max_new_tokens=6), job(6, "Шеф, всё пропало", max_new_tokens=9)]
        outputs = engine.generate("nano", [job(i, p, max_new_tokens=12 + i) for i, p in enumerate(PROMPTS[:3])],
                                  more_jobs=lambda rows: [late.pop(0)] if late else [])
        texts[name] = [o.text for o in outputs]
    assert texts["graphed"] == texts["plain"] and len(texts["plain"]) == 5
    (step,) = [held for _, held in graphed._graphed.values()]
    assert sum(step.replays.values()) > 0 and step.replays[4] > 0, step.replays  # 3 to 5 rows: the bucket of 4 ran
