"""rujokes_model.serving: the default served path (int8 weights, a decode step compiled in the background)."""
from __future__ import annotations

import logging
import os
import re
import threading
import time

import pytest
import torch

from rujokes_model import serving
from rujokes_model.compiled_step import CompiledDecodeStep, compiled_step
from rujokes_model.config import ModelConfig, cpu_weights_for, default_int8_sizes
from rujokes_model.cpu_kernels import cpu_kernels_supported
from rujokes_model.endings import ELLIPSIS, MIN_JOKE_TOKENS, end_at_sentence
from rujokes_model.lowbit_weights import KernelLinear
from rujokes_model.serving import load_for_serving, use_persistent_compile_cache
from tests.model_helpers import make_tiny_model_dir

PROMPTS = ["Штирлиц пришел домой", "Вовочка"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("serving") / "nano")


@pytest.fixture
def held_compile(monkeypatch):
    """Hold every background compile at its start until the test sets the returned event (a cold disk cache:
    nothing to load instead)."""
    release = threading.Event()
    warm_up = CompiledDecodeStep.warm_up
    monkeypatch.setattr(CompiledDecodeStep, "load_cached", lambda self: False)

    def held(self, *args, **kwargs):
        release.wait(timeout=120)
        return warm_up(self, *args, **kwargs)

    monkeypatch.setattr(CompiledDecodeStep, "warm_up", held)
    return release


def seeded_texts(served, seed: int = 5) -> list[str]:
    ids = torch.tensor([served.tokenizer.encode(PROMPTS[0]), served.tokenizer.encode(PROMPTS[0])])
    generators = [torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)]
    out = served.generate(ids, 24, top_k=10, generator=generators)
    return [served.tokenizer.decode(row) for row in out.tolist()]


def test_int8_weights_are_the_cpu_default_where_weights_bound_a_step():
    assert [cpu_weights_for(ModelConfig.preset(size)) for size in ("nano", "mini", "small")] == [None, "int8", "int8"]
    assert default_int8_sizes() == ["mini", "small"]


def test_requests_are_answered_before_the_compile_and_get_the_same_tokens_after_it(tiny_dir, held_compile,
                                                                                   compile_at_normal_priority):
    served = load_for_serving(tiny_dir, cpu_weights="int8")
    assert any(isinstance(m, KernelLinear) and m.kind == "int8" for m in served.model.modules())
    assert served.compiling is not None and not served.compiled
    before = seeded_texts(served)  # answered while the compile has not even started
    assert not served.compiled and not compiled_step(served.model).kinds

    held_compile.set()
    assert served.wait_until_compiled(timeout=300), served.compiling.error
    threads = torch.get_num_threads()
    assert compiled_step(served.model).kinds == {(True, threads): "ahead-of-time", (False, threads): "ahead-of-time"}
    assert seeded_texts(served) == before


@pytest.fixture
def compile_starts(monkeypatch) -> list[float]:
    """When each background compile began (its warm-up), without compiling anything (a cold disk cache)."""
    began: list[float] = []
    monkeypatch.setattr(CompiledDecodeStep, "load_cached", lambda self: False)
    monkeypatch.setattr(CompiledDecodeStep, "warm_up", lambda self, *args, **kwargs: began.append(time.monotonic()))
    return began


def test_the_compile_waits_for_the_first_answer(tiny_dir, compile_starts):
    """Dynamo's tracing beside the first eager answer made that answer many times slower: it goes first."""
    served = load_for_serving(tiny_dir, cpu_weights=None)
    time.sleep(0.5)
    assert compile_starts == [] and not served.compiled
    answered_at = time.monotonic()
    served.complete("Кот", 4)
    assert served.wait_until_compiled(timeout=30)
    assert len(compile_starts) == 1 and compile_starts[0] >= answered_at


def test_the_compile_starts_unasked_after_its_bound(tiny_dir, compile_starts, monkeypatch):
    monkeypatch.setattr(serving, "COMPILE_START_WITHIN_S", 0.3)
    created_at = time.monotonic()
    served = load_for_serving(tiny_dir, cpu_weights=None)
    deadline = time.monotonic() + 30
    while not served.compiled and time.monotonic() < deadline:  # polled: wait() would start it itself
        time.sleep(0.02)
    assert served.compiled and compile_starts[0] - created_at >= 0.3


def test_steps_in_the_disk_cache_serve_the_first_answer_unasked_and_give_the_same_tokens(tiny_dir,
                                                                                        compile_at_normal_priority):
    """After a restart nothing is traced or compiled: the libraries load before any answer, without `begin`
    and long before the compile's bound, at normal priority."""
    first = load_for_serving(tiny_dir, cpu_weights="int8", compile=True)
    assert first.wait_until_compiled(timeout=300), first.compiling.error
    expected = seeded_texts(first)

    again = load_for_serving(tiny_dir, cpu_weights="int8")  # the same shapes: what a restarted worker loads
    deadline = time.monotonic() + 30
    while not again.compiled and time.monotonic() < deadline:  # polled: wait() would begin it itself
        time.sleep(0.01)
    assert again.compiled and not again.compiling._begin.is_set()
    assert again.compiling.seconds < serving.COMPILE_START_WITHIN_S
    threads = torch.get_num_threads()
    assert compiled_step(again.model).kinds == {(True, threads): "ahead-of-time", (False, threads): "ahead-of-time"}
    assert seeded_texts(again) == expected


def test_eager_decoding_during_a_real_compile_is_unaffected(tiny_dir, compile_at_normal_priority, tmp_path,
                                                            monkeypatch):
    """The compile runs on its own thread while the caller decodes eagerly: nothing it does leaks in."""
    from rujokes_model import aot_step
    monkeypatch.setattr(aot_step, "package_dir", lambda: tmp_path)  # built here, not loaded from the cache
    reference = load_for_serving(tiny_dir, cpu_weights=None, compile=False)
    expected = seeded_texts(reference)
    served = load_for_serving(tiny_dir, cpu_weights=None)
    rounds = 0
    while not served.compiling.wait(timeout=0.05):  # the pause: the compile's turn on a loaded machine
        assert seeded_texts(served) == expected
        rounds += 1
    assert served.compiled, served.compiling.error
    assert seeded_texts(served) == expected
    assert rounds >= 1  # a tiny model's compile takes seconds; an eager answer takes milliseconds


def test_a_failed_compile_leaves_the_model_serving_eagerly(tiny_dir, monkeypatch, caplog):
    def broken(self, *args, **kwargs):
        raise RuntimeError("inductor: C++ compile error")

    monkeypatch.setattr(CompiledDecodeStep, "warm_up", broken)
    monkeypatch.setattr(CompiledDecodeStep, "load_cached", lambda self: False)  # nothing in the disk cache
    with caplog.at_level(logging.INFO, logger="rujokes_model.serving"):
        served = load_for_serving(tiny_dir, cpu_weights=None)
        assert not served.wait_until_compiled(timeout=60)
    assert isinstance(served.compiling.error, RuntimeError)
    assert "serving on the eager decode step" in caplog.text and "C++ compile error" in caplog.text
    assert len(served.complete("Кот", 8)) == 1


def test_without_a_compiler_it_says_so_once_and_serves_fp32(tiny_dir, tmp_path, monkeypatch, caplog):
    import rujokes_model.cpu_kernels as cpu_kernels

    monkeypatch.setattr(cpu_kernels, "_loaded", None)  # as in a fresh process
    monkeypatch.setenv("RUJOKES_KERNEL_DIR", str(tmp_path / "no-build-yet"))
    monkeypatch.setenv("CXX", "no-such-compiler")
    monkeypatch.setenv("PATH", str(tmp_path))
    with caplog.at_level(logging.INFO, logger="rujokes_model.serving"):
        served = load_for_serving(tiny_dir, cpu_weights="int8")
    assert served.compiling is None and not served.compiled
    assert not any(isinstance(m, KernelLinear) for m in served.model.modules())
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2, errors  # one line for the weights, one for the compiled step
    assert "keeping fp32 weights" in errors[0] and "no C++ compiler" in errors[1]
    [text] = served.complete("Кот", 8)
    assert text.startswith("Кот")


def test_an_fp32_model_without_a_compiler_is_served_on_torch_with_one_warning(tiny_dir, tmp_path, monkeypatch,
                                                                             caplog):
    import rujokes_model.cpu_kernels as cpu_kernels

    monkeypatch.setattr(cpu_kernels, "_loaded", None)  # as in a fresh process
    monkeypatch.setenv("RUJOKES_KERNEL_DIR", str(tmp_path / "no-build-yet"))
    monkeypatch.setenv("CXX", "no-such-compiler")
    monkeypatch.setenv("PATH", str(tmp_path))
    with caplog.at_level(logging.INFO, logger="rujokes_model.serving"):
        served = load_for_serving(tiny_dir, compile=False)  # nano-shaped: fp32 weights by default
    assert not any(isinstance(m, KernelLinear) for m in served.model.modules())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "fp32 weights without the CPU kernels" in warnings[0], warnings
    [text] = served.complete("Кот", 8)
    assert text.startswith("Кот")


def test_the_compile_cache_persists_outside_tmp_unless_configured(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert use_persistent_compile_cache() == tmp_path / "rujokes" / "inductor"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "rujokes" / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert use_persistent_compile_cache() == tmp_path / "mine"


def test_bundled_sizes_load_by_name():
    served = load_for_serving("nano", compile=False)
    assert served.model.config.d_model == ModelConfig.preset("nano").d_model
    if cpu_kernels_supported():  # nano keeps its fp32 weights, multiplied on the kernels' fp32 loop
        kinds = {m.kind for m in served.model.modules() if isinstance(m, KernelLinear)}
        assert kinds == {"fp32"} and not any(type(m) is torch.nn.Linear for m in served.model.modules())
    [text] = served.complete("Штирлиц", 12)
    assert text.startswith("Штирлиц") and len(text) > len("Штирлиц")


@pytest.mark.skipif(not cpu_kernels_supported(), reason="the kernels are AVX2 (x86-64) code")
@pytest.mark.timeout(600)  # two real compiles, one after the other: under CPU burners each takes minutes
def test_two_sizes_loaded_together_both_get_their_compiled_steps(tmp_path, compile_at_normal_priority):
    """The worker's default mix: an int8 model (which loads the kernels) and an fp32 ALiBi + MHLA one, both
    compiling in the background at once. Run together, dynamo's tracing failed with a spurious guard
    error; compiles now take turns."""
    int8 = load_for_serving(make_tiny_model_dir(tmp_path / "int8", attention="mhla"), cpu_weights="int8")
    fp32 = load_for_serving(make_tiny_model_dir(tmp_path / "fp32", attention="mhla", seed=1), cpu_weights=None)
    expected = [seeded_texts(int8), seeded_texts(fp32)]
    assert int8.wait_until_compiled(timeout=550), int8.compiling.error
    assert fp32.wait_until_compiled(timeout=550), fp32.compiling.error
    assert [seeded_texts(int8), seeded_texts(fp32)] == expected


def test_complete_ends_a_text_cut_by_its_limit_after_a_sentence_as_the_bot_does(tiny_dir):
    """The library's one-line call gives what the bot gives: a row that sampled its end of text is left as the
    model ended it; one that ran into the limit ends after a sentence or with "…", never mid-word."""
    served = load_for_serving(tiny_dir, compile=False)
    ids = torch.tensor([served.tokenizer.encode(PROMPTS[0])] * 8)
    raw = served.generate(ids, 60, top_k=0, generator=torch.Generator().manual_seed(3),
                          min_new_tokens=MIN_JOKE_TOKENS).tolist()
    texts = served.complete(PROMPTS[0], 60, n=8, top_k=0, generator=torch.Generator().manual_seed(3))
    ended = [served.tokenizer.eos_token_id in row[ids.shape[1]:] for row in raw]
    assert 0 < sum(ended) < 8  # the random model's seed 3: both kinds of row
    shortened = 0
    for row, was_ended, text in zip(raw, ended, texts):
        whole = served.tokenizer.decode(row).strip()
        assert text.startswith(PROMPTS[0])
        if was_ended:
            assert text == whole
        else:
            assert text == end_at_sentence(whole, PROMPTS[0])
            assert text.endswith(ELLIPSIS) or re.search(r"[.!?…][»“”\"')\]]*$", text), text
            shortened += text != whole
    assert shortened  # most cut rows stopped mid-word


def test_complete_fits_a_prompt_or_limit_past_the_context_as_the_worker_does_and_says_so(tiny_dir):
    """The texts still start with the whole prompt; the model reads what fits. Before, a prompt past the context
    came back from its cut (". Штирлиц…"), and a limit past it raised from inside generate."""
    served = load_for_serving(tiny_dir, compile=False)
    context = served.model.config.max_seq_len
    prompt = ("Штирлиц 😀 пришел домой. " * 40).strip()
    kept, limit = served.tokenizer.fit_context(served.tokenizer.encode(prompt), 30, context)
    with pytest.warns(UserWarning, match=rf"last {len(kept)} and writes up to 30") as said:
        texts = served.complete(prompt, 30, n=3, top_k=0, generator=torch.Generator().manual_seed(2))
    assert len(said) == 1  # generate itself had nothing more to cut
    tail = served.tokenizer.decode(kept)
    raw = served.generate(torch.tensor([kept] * 3), 30, top_k=0, generator=torch.Generator().manual_seed(2),
                          min_new_tokens=MIN_JOKE_TOKENS)
    for text, row in zip(texts, raw.tolist()):
        assert text.startswith(prompt)
        whole = (prompt[:-len(tail)] + served.tokenizer.decode(row)).strip()
        assert text in (whole, end_at_sentence(whole, prompt))

    room = context - len(served.tokenizer.encode("Ж"))
    with pytest.warns(UserWarning, match=rf"max_new_tokens={context + 50} .* writes up to {room}$"):
        [text] = served.complete("Ж", context + 50, top_k=0, generator=torch.Generator().manual_seed(2))
    assert text.startswith("Ж")


def test_complete_drops_a_prompts_trailing_spaces_which_no_corpus_token_ends_with(tiny_dir):
    served = load_for_serving(tiny_dir, compile=False)
    texts = served.complete(PROMPTS[0], 12, n=3, top_k=0, generator=torch.Generator().manual_seed(1))
    assert served.complete(PROMPTS[0] + "  \t", 12, n=3, top_k=0, generator=torch.Generator().manual_seed(1)) == texts
