"""`rujokes joke …`, the offline demo of the README: jokes printed straight from the model."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bot.cli import main
from rujokes_model.endings import ELLIPSIS
from tests.model_helpers import make_tiny_model_dir

OPENING = "Штирлиц пришел домой"


def test_it_prints_n_jokes_from_the_opening_each_ending_as_the_bot_ends_it(tmp_path, capsys):
    model = make_tiny_model_dir(tmp_path / "tiny")
    assert main(["joke", *OPENING.split(), "--size", "nano", "--model", str(model), "-n", "3",
                 "--max-new-tokens", "10", "--top-k", "0", "--seed", "5"]) == 0
    jokes = capsys.readouterr().out.strip().split("\n\n* * *\n\n")
    assert len(jokes) == 3
    for joke in jokes:
        assert joke.startswith(OPENING)
        # the random model's three rows of seed 5 ran into the limit (none sampled its end of text), so each
        # ends after a sentence or with "…"
        assert joke.endswith(ELLIPSIS) or re.search(r"[.!?…][»“”\"')\]]*$", joke), joke

    # the same seed, the same jokes
    assert main(["joke", *OPENING.split(), "--size", "nano", "--model", str(model), "-n", "3",
                 "--max-new-tokens", "10", "--top-k", "0", "--seed", "5"]) == 0
    assert capsys.readouterr().out.strip().split("\n\n* * *\n\n") == jokes


def test_a_model_that_is_not_there_is_said_plainly(tmp_path, capsys):
    assert main(["joke", "Вовочка", "--size", "nano", "--model", str(tmp_path / "nothing")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("rujokes: ") and "nothing" in error


def test_the_bundled_sizes_write_their_jokes_without_importing_the_compiler():
    """Packing weights for the kernels used to import dynamo for its shape marks: a second of each command's
    start-up (and of a worker's), for a compiler that eager decoding never calls."""
    code = ("import sys; from bot.cli import main\n"
            "for size in ('nano', 'mini'):\n"
            "    assert main(['joke', 'Штирлиц', '--size', size, '-n', '2', '--max-new-tokens', '8', '--seed', '1']) == 0\n"
            "assert 'torch._dynamo' not in sys.modules, 'dynamo imported'")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("Штирлиц") == 4


@pytest.mark.parametrize("option", [["-n", "0"], ["--max-new-tokens", "0"], ["--top-k", "-1"], ["--temperature", "-0.5"],
                                    ["-n", "много"]])
def test_a_setting_out_of_range_is_a_usage_error_not_a_traceback(option, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["joke", "Вовочка", *option])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("usage: rujokes joke") and option[0] in error and "Traceback" not in error


def test_a_prompt_longer_than_the_context_is_told_in_one_line_and_the_joke_starts_with_all_of_it(tmp_path, capsys):
    model = make_tiny_model_dir(tmp_path / "tiny")
    prompt = "Штирлиц пришел домой. " * 60
    assert main(["joke", prompt, "--size", "nano", "--model", str(model), "--max-new-tokens", "20", "--seed", "1"]) == 0
    said = capsys.readouterr()
    assert said.out.startswith(prompt.strip())
    assert said.err.startswith("rujokes: a prompt of ") and said.err.count("\n") == 1, said.err  # not torch's warning


@pytest.mark.parametrize("device", ["foo", "cuda:x", "meta", *(["cuda"] if not torch.cuda.is_available() else [])])
def test_a_device_this_machine_lacks_is_a_usage_error_not_a_traceback(device, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["joke", "Вовочка", "--device", device])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert "argument --device" in error and device in error and "Traceback" not in error


def test_greedy_decoding_asked_for_several_jokes_prints_its_one_joke_once_and_says_so(tmp_path, capsys):
    model = make_tiny_model_dir(tmp_path / "tiny")
    assert main(["joke", OPENING, "--size", "nano", "--model", str(model), "-n", "3", "--temperature", "0",
                 "--max-new-tokens", "10"]) == 0
    said = capsys.readouterr()
    assert "* * *" not in said.out and said.out.startswith(OPENING)
    assert said.err == "rujokes: --temperature 0 is greedy: its 3 jokes would be one joke, printed once\n"
