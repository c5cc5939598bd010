"""argparse types for the console scripts' settings: a value out of range, or a device this machine lacks, is a
usage error that names the option, not a traceback from deep inside training or generation."""
from __future__ import annotations

import argparse
from collections.abc import Callable


def number_in(low: float | None = None, high: float | None = None, *, kind: type = float,
              low_open: bool = False, high_open: bool = False) -> Callable[[str], float]:
    """A `kind` within [low, high] (an end is left out where `*_open`, unbounded where None)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {'an integer' if kind is int else 'a number'}: {text!r}") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            left = "(" if low_open or low is None else "["
            right = ")" if high_open or high is None else "]"
            span = f"{left}{'-∞' if low is None else low}, {'∞' if high is None else high}{right}"
            raise argparse.ArgumentTypeError(f"must be in {span}, got {text}")
        return value
    return parse


def at_least(minimum: int) -> Callable[[str], int]:
    """An integer ≥ `minimum`."""
    return number_in(minimum, kind=int)


def positive(text: str) -> float:
    """A number > 0."""
    return number_in(0, low_open=True)(text)


def fraction(text: str) -> float:
    """A number strictly between 0 and 1."""
    return number_in(0, 1, low_open=True, high_open=True)(text)


def device(text: str) -> str:
    """"auto" or a torch device that this machine has ("cpu", "cuda", "cuda:1", "mps")."""
    if text == "auto":
        return text
    import torch

    from .serving import cuda_unavailable
    try:
        parsed = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"not a device: {text!r} (auto, cpu, cuda, cuda:N or mps)") from None
    if parsed.type == "cuda":
        if why := cuda_unavailable():
            raise argparse.ArgumentTypeError(f"{text}: {why} (use cpu or auto)")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise argparse.ArgumentTypeError(f"{text}: there are {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text}: no Apple GPU (MPS) here (use cpu or auto)")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{text}: rujokes runs on cpu, cuda or mps")
    return text
