"""Our C++ CPU kernels (`kernels/*.cpp`): compiled on first use, cached on disk, registered as torch ops.

The kernels register under `torch.ops.rujokes_cpu` from C++ (TORCH_LIBRARY), shape functions included, so
a compiled decode graph calls them through the dispatcher with no Python in between. A second library
(`kernels/aot_runner.cpp`, `torch.ops.rujokes_aot`) runs the ahead-of-time decode step (aot_step.py).
Building needs a C++ compiler (g++, as torch.compile does; ≈ 15 s on two cores) but not ninja or
setuptools: one compiler call against torch's own headers and libraries. The library lands in
`RUJOKES_KERNEL_DIR` (default `~/.cache/rujokes/kernels`) under a name hashed from the source, torch's
version and the flags, so a changed kernel or torch never loads a stale build; concurrent builders each
write a temporary file and rename it into place.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from importlib import resources
from pathlib import Path

import torch

SOURCE = "decode_kernels.cpp"
AOT_RUNNER_SOURCE = "aot_runner.cpp"
# -fopenmp: at::parallel_for is OpenMP pragmas in torch's headers; without it every kernel runs on one thread.
_FLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-std=c++20", "-shared", "-fPIC", "-w")
# The runner is glue around torch's own and must load on any x86-64, AVX2 or not.
_PORTABLE_FLAGS = tuple(flag for flag in _FLAGS if flag not in ("-mavx2", "-mfma"))
_lock = threading.Lock()
_loaded: Path | None = None
_aot_runner: Path | None = None
# What compiled graphs read (attention.py): a bool, on which dynamo can guard (it cannot on a Path).
_kernels_in_process = False


class KernelBuildError(RuntimeError):
    """The CPU kernels could not be built or loaded; the message says what to install or set."""


def _has_torch_headers() -> bool:
    return (Path(torch.__file__).parent / "include" / "torch" / "library.h").is_file()


def cpu_kernels_supported() -> bool:
    """x86-64 with AVX2 (the kernels' instruction set) and a torch that exposes its C++ headers."""
    return (platform.machine() in ("x86_64", "AMD64")
            and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
            and _has_torch_headers())


def kernel_dir() -> Path:
    configured = os.environ.get("RUJOKES_KERNEL_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "rujokes" / "kernels"


def find_cxx() -> str | None:
    """The C++ compiler to use (CXX, else g++, c++, clang++), or None when there is none."""
    return next((c for c in (os.environ.get("CXX"), "g++", "c++", "clang++") if c and shutil.which(c)), None)


def _compiler() -> str:
    compiler = find_cxx()
    if compiler is None:
        raise KernelBuildError("no C++ compiler found: install g++ (apt-get install g++) or set CXX")
    return compiler


def _flags(name: str) -> tuple[str, ...]:
    return _FLAGS if name == SOURCE else _PORTABLE_FLAGS


def _command(compiler: str, source: Path, output: Path) -> list[str]:
    torch_dir = Path(torch.__file__).parent
    return [compiler, *_flags(source.name), f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
            f"-I{torch_dir / 'include'}", f"-I{torch_dir / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
            str(source), "-o", str(output), f"-L{torch_dir / 'lib'}", "-lc10", "-ltorch_cpu",
            f"-Wl,-rpath,{torch_dir / 'lib'}"]


def build(name: str = SOURCE) -> Path:
    """The shared library for this source (in kernels/) and torch, compiled now unless already cached."""
    source = resources.files(__package__) / "kernels" / name
    code = source.read_bytes()
    key = hashlib.sha256(code + torch.__version__.encode() + " ".join(_flags(name)).encode()).hexdigest()[:16]
    target = kernel_dir() / f"{Path(name).stem}-{key}.so"
    if target.is_file():
        return target
    compiler = _compiler()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        copied = Path(scratch) / name  # a real file, even when the package is zipped
        copied.write_bytes(code)
        built = Path(scratch) / target.name
        done = subprocess.run(_command(compiler, copied, built), capture_output=True, text=True)
        if done.returncode != 0:
            raise KernelBuildError(f"compiling {name} failed ({compiler}):\n{done.stderr[-3000:]}")
        os.replace(built, target)  # atomic: a concurrent builder sees the whole file or none
    return target


def _build_and_load(name: str) -> Path:
    library = build(name)
    torch.ops.load_library(str(library))
    return library


def load_cpu_kernels() -> Path:
    """Build (once per source and torch) and load the kernels into this process; returns the library."""
    global _loaded, _kernels_in_process
    with _lock:
        if _loaded is None:
            if not cpu_kernels_supported():
                raise KernelBuildError("the int8 CPU kernels need an x86-64 CPU with AVX2 and torch's C++ headers")
            _loaded = _build_and_load(SOURCE)
            _kernels_in_process = True
        return _loaded


def load_aot_runner() -> Path:
    """Build (once per source and torch) and load the ahead-of-time step's runner ops; returns the library."""
    global _aot_runner
    with _lock:
        if _aot_runner is None:
            if not _has_torch_headers():
                raise KernelBuildError("running the ahead-of-time decode step needs torch's C++ headers")
            _aot_runner = _build_and_load(AOT_RUNNER_SOURCE)
        return _aot_runner


def kernels_loaded() -> bool:
    """Whether this process has loaded the kernels (load_cpu_kernels; use_lowbit_weights calls it)."""
    return _kernels_in_process


def kernel_threads() -> int:
    """How many threads the loaded kernels split their work over now (torch.get_num_threads() when built right)."""
    load_cpu_kernels()
    return int(torch.ops.rujokes_cpu.parallel_threads())


def main() -> None:
    """`rujokes-build-kernels`: build ahead of time (images, CI). Compiling needs no AVX2 on the build
    machine; loading checks for it."""
    print(build())
    print(build(AOT_RUNNER_SOURCE))


if __name__ == "__main__":
    main()
