"""Execute notebooks/russian_jokes_generator.ipynb and store its outputs.

    python scripts/run_notebook.py            # full run (≈ 10 min on 2 CPU cores), outputs written in place
    python scripts/run_notebook.py --quick    # CI budget (RUJOKES_NOTEBOOK_QUICK=1), to runs/notebook-quick.ipynb

The kernel is always this interpreter (`sys.executable` with its ipykernel), whatever kernel specs the
user's Jupyter has installed: the notebook imports the project from the same environment as the caller.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "russian_jokes_generator.ipynb"
QUICK_ENV = "RUJOKES_NOTEBOOK_QUICK"
RUN_DIR_ENV = "RUJOKES_NOTEBOOK_RUN_DIR"


def this_interpreter_kernel(spec_root: Path) -> KernelManager:
    """A kernel manager whose "python3" kernel is sys.executable (a spec of our own, found first)."""
    spec_dir = spec_root / "kernels" / "python3"
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3", "language": "python"}))
    specs = KernelSpecManager(kernel_dirs=[str(spec_root / "kernels")])
    return KernelManager(kernel_name="python3", kernel_spec_manager=specs)


def execute(path: Path = NOTEBOOK, *, quick: bool, run_dir: Path | None = None,
            cell_timeout_s: int = 900) -> nbformat.NotebookNode:
    """The notebook at `path` executed top to bottom (raises nbclient's CellExecutionError on any error)."""
    notebook = nbformat.read(path, as_version=4)
    saved = {name: os.environ.get(name) for name in (QUICK_ENV, RUN_DIR_ENV)}
    os.environ[QUICK_ENV] = "1" if quick else "0"  # the kernel inherits our environment
    if run_dir is not None:
        os.environ[RUN_DIR_ENV] = str(run_dir)
    else:
        os.environ.pop(RUN_DIR_ENV, None)
    try:
        with tempfile.TemporaryDirectory(prefix="rujokes-kernel-") as spec_root:
            client = NotebookClient(notebook, km=this_interpreter_kernel(Path(spec_root)), timeout=cell_timeout_s,
                                    allow_errors=False, record_timing=True,
                                    resources={"metadata": {"path": str(path.parent)}})
            client.execute()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = _coalesced(cell.outputs)
    # Keep the stored file independent of the machine and the moment that ran it.
    for cell in notebook.cells:
        timing = cell.metadata.pop("execution", None)
        if timing and "iopub.execute_input" in timing and "shell.execute_reply" in timing:
            cell.metadata["rujokes_seconds"] = _seconds(timing)  # popped again by main()/tests; handy for profiling
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


def _coalesced(outputs: list) -> list:
    """Consecutive stdout (or stderr) pieces as one output, as Jupyter shows them (print(..., end="") streams)."""
    merged = []
    for output in outputs:
        if output.output_type == "stream" and merged and merged[-1].output_type == "stream" \
                and merged[-1].name == output.name:
            merged[-1].text += output.text
        else:
            merged.append(output)
    return merged


def _seconds(timing: dict) -> float:
    from datetime import datetime
    start, end = (datetime.fromisoformat(timing[k].replace("Z", "+00:00"))
                  for k in ("iopub.execute_input", "shell.execute_reply"))
    return round((end - start).total_seconds(), 1)


def cell_seconds(notebook: nbformat.NotebookNode) -> list[tuple[float, str]]:
    """(seconds, first source line) per executed code cell, and the timings removed from the notebook."""
    rows = []
    for cell in notebook.cells:
        seconds = cell.metadata.pop("rujokes_seconds", None)
        if seconds is not None:
            rows.append((seconds, cell.source.splitlines()[0][:70]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"small budget ({QUICK_ENV}=1), as CI runs it")
    parser.add_argument("--output", type=Path, help="where to write the executed notebook "
                        "(default: in place; with --quick: runs/notebook-quick.ipynb)")
    parser.add_argument("--timings", action="store_true", help="print each code cell's run time, slowest first")
    args = parser.parse_args()
    output = args.output or (ROOT / "runs" / "notebook-quick.ipynb" if args.quick else NOTEBOOK)
    started = time.perf_counter()
    notebook = execute(NOTEBOOK, quick=args.quick)
    timings = cell_seconds(notebook)
    if args.timings:
        for seconds, first_line in sorted(timings, reverse=True):
            print(f"{seconds:7.1f} s  {first_line}")
    output.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, output)
    print(f"executed in {time.perf_counter() - started:.0f} s → {output} ({output.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
