"""The CPU's decode step built ahead of time (aot_step.py): exact against the eager step, reading the model's
own weights, cached on disk by shape, refusing inputs that disagree, and falling back to torch.compile.

compiled_step's tests pin its tokens in generate and in a running batch; these pin the library itself. Each
build costs seconds, so the libraries are built once per module (and reused from the disk cache after that).
"""
import logging
import os
import statistics
import threading
import time

import pytest
import torch

import rujokes_model.aot_step as aot_step
import rujokes_model.cpu_kernels as cpu_kernels
from rujokes_model.aot_step import AotStepLibrary, AotUnavailable, flat_inputs
from rujokes_model.compiled_step import CompiledDecodeStep, compiled_step
from rujokes_model.cpu_kernels import KernelBuildError
from rujokes_model.lowbit_weights import AbsorbedHeads, KernelLinear, use_fp32_kernels, use_lowbit_weights
from tests.model_helpers import tiny_model, torch_threads

COLUMNS = 12


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """One package directory for the module: the second build of a shape loads what the first wrote."""
    directory = tmp_path_factory.mktemp("decode_steps")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(aot_step, "package_dir", lambda: directory)
        yield directory


def served(position: str, attention: str, weights: str, seed: int = 1):
    """A tiny model as the CPU serves it: on the kernels, fp32 (nano) or int8 (mini and small)."""
    model = tiny_model(position, attention, seed=seed)
    use_fp32_kernels(model) if weights == "fp32" else use_lowbit_weights(model, weights)
    model.prepare_for_decoding()
    return model


def one_step(model, rows: int, library=None, column: int = 4):
    """Logits of one decode step at `column` and the caches after it, by the library or eagerly."""
    with torch.inference_mode():
        mask = torch.ones(rows, 1, dtype=torch.long)
        cache, plan = model.new_cache(rows, COLUMNS), model.decode_plan(mask, COLUMNS)
        for layer in cache:  # earlier columns already written, as in a running batch
            for tensor in layer.tensors():
                tensor.normal_(generator=torch.Generator().manual_seed(rows))
        tokens = torch.arange(3, 3 + rows)
        at = torch.tensor(column)
        if library is None:
            logits = model(tokens[:, None], cache=cache, inputs=plan.static_inputs(at))[:, -1]
        else:
            logits = library(flat_inputs(tokens, cache, plan, at))
    return logits, [t.clone() for layer in cache for t in layer.tensors()]


# ALiBi + GQA on fp32 kernels (nano's serving), RoPE + MHLA on int8 (mini's and small's: AbsorbedHeads too)
KINDS = [("alibi", "gqa", "fp32"), ("rope", "mhla", "int8")]


@pytest.mark.parametrize("kind", KINDS, ids=lambda kind: "+".join(kind))
def test_the_library_computes_the_eager_step_for_a_lone_row_and_for_batches(packages, kind):
    model = served(*kind)
    for rows, lone in ((1, True), (4, False), (2, False)):
        library = AotStepLibrary(model, lone=lone)
        logits, caches = one_step(model, rows, library)
        expected, expected_caches = one_step(model, rows)
        torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-3)
        for written, wanted in zip(caches, expected_caches):  # column 4 written over the same noise
            torch.testing.assert_close(written, wanted, rtol=1e-4, atol=1e-3)


def test_the_library_reads_the_models_weights_in_place_and_a_same_shaped_model_reuses_it(packages, monkeypatch):
    model = served("alibi", "gqa", "fp32")
    library = AotStepLibrary(model, lone=True)
    with torch.no_grad():
        model.norm.weight.mul_(3.0)  # the library holds no copy: the change must show
        model.embed.weight[3:6].neg_()
    torch.testing.assert_close(one_step(model, 1, library)[0], one_step(model, 1)[0], rtol=1e-4, atol=1e-3)

    other = served("alibi", "gqa", "fp32", seed=2)  # same shapes, other weights

    def no_tracing(*args, **kwargs):
        raise AssertionError("a library in the cache is loaded without exporting the step (seconds of a held GIL)")

    monkeypatch.setattr(torch.export, "export", no_tracing)
    reused = AotStepLibrary(other, lone=True)
    assert not reused.built and reused.path == library.path  # loaded from the disk cache, not compiled
    logits = one_step(other, 1, reused)[0]
    torch.testing.assert_close(logits, one_step(other, 1)[0], rtol=1e-4, atol=1e-3)
    assert not torch.allclose(logits, one_step(model, 1, library)[0])  # each reads its own weights


def test_a_library_for_other_shapes_or_threads_is_a_different_package(packages):
    paths = {AotStepLibrary(served("alibi", "gqa", "fp32"), lone=True).path,
             AotStepLibrary(served("alibi", "gqa", "fp32"), lone=False).path}
    narrower = tiny_model("alibi", "gqa", seed=1, d_model=32)
    use_fp32_kernels(narrower)
    paths.add(AotStepLibrary(narrower, lone=True).path)
    with torch_threads(1 if torch.get_num_threads() > 1 else 2):  # inductor writes its loops for a thread count
        paths.add(AotStepLibrary(served("alibi", "gqa", "fp32"), lone=False).path)
    assert len(paths) == 4


def test_a_build_prunes_packages_unused_for_a_month_and_a_load_marks_its_package_used(packages):
    """Every upgrade changes every key: without pruning, a cache kept across upgrades only grows."""
    month_ago, yesterday = time.time() - 40 * 86400, time.time() - 86400
    served_path = AotStepLibrary(served("alibi", "gqa", "fp32"), lone=True).path
    os.utime(served_path, (month_ago, month_ago))
    stale, recent = packages / f"{'0' * 24}.pt2", packages / f"{'1' * 24}.pt2"
    for package, when in ((stale, month_ago), (recent, yesterday)):
        package.write_bytes(b"an earlier version's step")
        (package.with_suffix(".d") / "data").mkdir(parents=True)
        os.utime(package, (when, when))
    assert not AotStepLibrary(served("alibi", "gqa", "fp32"), lone=True).built
    assert served_path.stat().st_mtime > time.time() - 60  # loaded: used now
    assert stale.exists()  # a load prunes nothing: only a build, which an upgrade brings, does
    one_layer = tiny_model("alibi", "gqa", seed=1, n_layer=1, d_model=48)  # a shape no other test builds
    use_fp32_kernels(one_layer)
    assert AotStepLibrary(one_layer, lone=True).built
    assert not stale.exists() and not stale.with_suffix(".d").exists()
    assert recent.exists() and served_path.exists()


def test_a_change_to_the_code_that_makes_the_graph_is_a_different_package(packages, monkeypatch):
    """The key is known without tracing, so what the graph is traced from is part of it: the weights' kernels
    and the code."""
    model = served("alibi", "gqa", "fp32")
    step, example, _ = aot_step._example(model, lone=True)
    key = aot_step._package_key(step, example, lone=True)
    assert aot_step._package_key(*aot_step._example(served("alibi", "gqa", "fp32", seed=4), lone=True)[:2],
                                 lone=True) == key  # other weights of the same shapes: the same library
    int8 = tiny_model("alibi", "gqa", seed=1)  # the same shapes on other weights' kernels: another graph
    use_lowbit_weights(int8, "int8")
    int8.prepare_for_decoding()
    assert aot_step._package_key(*aot_step._example(int8, lone=True)[:2], lone=True) != key
    monkeypatch.setattr(aot_step, "_source_digest", lambda: "an edited attention.py")
    assert aot_step._package_key(step, example, lone=True) != key


def test_other_python_threads_run_while_the_library_steps(packages):
    """A worker's event loop beside the engine's thread: woken every millisecond, it is late by far less
    than a step (torch's Python binding of the library held the GIL for whole steps: late by about one)."""
    with torch_threads(1):  # a core for the waking thread (the library is the previous test's, from disk)
        model = served("alibi", "gqa", "fp32")
        library = AotStepLibrary(model, lone=False)
        rows, columns = 512, 1024  # tens of milliseconds a step for this tiny model
        with torch.inference_mode():
            cache, plan = model.new_cache(rows, columns), model.decode_plan(torch.ones(rows, 1, dtype=torch.long),
                                                                             columns)
            inputs = flat_inputs(torch.zeros(rows, dtype=torch.long), cache, plan, torch.tensor(1))
            started = time.perf_counter()
            library(inputs)
            step_s = time.perf_counter() - started
            stepping = threading.Thread(target=lambda: [library(inputs) for _ in range(10)])
            late = []
            stepping.start()
            while stepping.is_alive():
                woken = time.perf_counter()
                time.sleep(0.001)
                late.append(time.perf_counter() - woken - 0.001)
            stepping.join()
    assert len(late) > 10 and statistics.median(late) < step_s / 4, (step_s, sorted(late)[::max(1, len(late) // 10)])


def test_inputs_that_disagree_are_refused_before_the_library_runs(packages):
    model = served("alibi", "gqa", "fp32")
    library = AotStepLibrary(model, lone=False)
    with torch.inference_mode():
        mask = torch.ones(3, 1, dtype=torch.long)
        cache, plan = model.new_cache(3, COLUMNS), model.decode_plan(mask, COLUMNS)
        with pytest.raises(ValueError, match="disagree"):  # 2 tokens for a batch of 3
            library(flat_inputs(torch.tensor([3, 4]), cache, plan, torch.tensor(1)))
        shorter = model.new_cache(3, COLUMNS - 2)
        with pytest.raises(ValueError, match="disagree"):  # a plan for 12 columns over a cache of 10
            library(flat_inputs(torch.tensor([3, 4, 5]), shorter, plan, torch.tensor(1)))


def test_a_runner_that_cannot_be_built_makes_the_step_unavailable_not_broken(packages, monkeypatch):
    def no_compiler():
        raise KernelBuildError("no C++ compiler found")

    monkeypatch.setattr(cpu_kernels, "load_aot_runner", no_compiler)
    with pytest.raises(AotUnavailable, match="runner could not be built: no C\\+\\+ compiler"):
        AotStepLibrary(served("alibi", "gqa", "fp32"), lone=True)  # compiled_step then uses torch.compile's


def test_a_library_that_is_unloaded_is_refused_by_the_runner(packages):
    library = AotStepLibrary(served("alibi", "gqa", "fp32"), lone=True)
    handle = library._handle
    del library
    with pytest.raises(RuntimeError, match=f"no decode-step library is loaded under handle {handle}"):
        torch.ops.rujokes_aot.run(handle, [])


def test_a_library_bound_to_other_weights_fails_its_check(packages):
    model, other = served("alibi", "gqa", "fp32"), served("alibi", "gqa", "fp32", seed=5)
    library = AotStepLibrary(model, lone=True)
    _, step_of_other, example = aot_step._export(other, lone=True)
    with pytest.raises(AotUnavailable, match="differs from the eager step"):
        library._check(step_of_other, example)


def test_a_model_that_cannot_be_exported_is_compiled_by_torch_compile_with_one_warning(tmp_path, monkeypatch,
                                                                                        caplog):
    monkeypatch.setattr(aot_step, "package_dir", lambda: tmp_path)  # such a model has no package to load
    model = served("alibi", "gqa", "fp32")

    def refuse(*args, **kwargs):
        raise AotUnavailable("the step reads tensors that are neither parameters nor buffers")

    monkeypatch.setattr(aot_step, "_export", refuse)
    step = CompiledDecodeStep(model)
    with caplog.at_level(logging.WARNING, logger="rujokes_model.compiled_step"):
        with torch.inference_mode():
            for rows in (1, 2):
                mask = torch.ones(rows, 1, dtype=torch.long)
                cache, plan = model.new_cache(rows, COLUMNS), model.decode_plan(mask, COLUMNS)
                logits = step(torch.arange(3, 3 + rows), cache, plan, 1)
                expected = model(torch.arange(3, 3 + rows)[:, None], cache=model.new_cache(rows, COLUMNS),
                                 inputs=plan.static_inputs(torch.tensor(1)))[:, -1]
                torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-3)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "neither parameters nor buffers" in warnings[0]
    assert set(step.kinds.values()) == {"torch.compile"}


def test_a_repack_gives_a_new_step_that_reads_the_new_weights(packages):
    """repack() makes new low-bit tensors; a library holds the old ones, so compiled_step must build anew."""
    model = served("rope", "mhla", "int8")
    ids = torch.tensor([[5, 6, 7, 8]])
    first = compiled_step(model)
    assert torch.equal(model.generate(ids, 6, do_sample=False, compile=True), model.generate(ids, 6, do_sample=False))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, KernelLinear):
                module.weight.copy_(torch.randn_like(module.weight) * 0.2)
                module.repack()
    assert compiled_step(model) is not first
    assert torch.equal(model.generate(ids, 6, do_sample=False, compile=True), model.generate(ids, 6, do_sample=False))


def test_the_step_that_derives_int8_absorbed_heads_is_the_one_reused(packages):
    """The first call derives MHLA's int8 AbsorbedHeads (a submodule of wkv_b): that must not make the step
    stale, or every model would build its libraries twice."""
    model = tiny_model("rope", "mhla", seed=3)
    use_lowbit_weights(model, "int8")  # no prepare_for_decoding: generate's first call derives the heads
    step = compiled_step(model)
    model.generate(torch.tensor([[5, 6, 7]]), 4, do_sample=False, compile=True)
    assert any(isinstance(m, AbsorbedHeads) for m in model.modules())
    assert compiled_step(model) is step and step.kinds
