"""The tutorial notebook: its stored outputs are complete and error-free, and it runs top to bottom (quick mode)."""
from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest

from trainer.data import DEFAULT_CORPUS

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "russian_jokes_generator.ipynb"
MAX_STORED_BYTES = 2_000_000


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stored() -> dict:
    return json.loads(NOTEBOOK.read_text(encoding="utf-8"))


def _text(output: dict) -> str:
    text = output.get("text") or output.get("data", {}).get("text/plain", "")
    return "".join(text) if isinstance(text, list) else text


def test_stored_notebook_has_outputs_in_every_code_cell_and_no_errors():
    cells = [cell for cell in _stored()["cells"] if cell["cell_type"] == "code"]
    assert cells
    for index, cell in enumerate(cells):
        where = f"code cell {index} ({''.join(cell['source'])[:60]!r})"
        assert cell["outputs"], f"{where} has no stored outputs: rerun `python scripts/run_notebook.py`"
        assert cell["execution_count"] is not None, f"{where} was not executed"
        for output in cell["outputs"]:
            assert output["output_type"] != "error", f"{where} stores an error: {output.get('ename')}"
            assert "Traceback" not in _text(output), f"{where} stores a traceback"


def test_stored_notebook_comes_from_a_full_run_with_embedded_plots_and_stays_small():
    stored = _stored()
    texts = [_text(o) for cell in stored["cells"] if cell["cell_type"] == "code" for o in cell["outputs"]]
    assert any("режим: полный" in text for text in texts), "stored outputs must come from a full (not quick) run"
    pngs = [o for cell in stored["cells"] if cell["cell_type"] == "code" for o in cell["outputs"]
            if "image/png" in o.get("data", {})]
    assert len(pngs) >= 10
    assert NOTEBOOK.stat().st_size < MAX_STORED_BYTES


def test_stored_cells_are_the_builders_cells():
    """scripts/build_notebook.py is the notebook's source: edit there, rebuild, rerun."""
    built = _script("build_notebook").build()
    stored = _stored()["cells"]
    assert [(c.cell_type, c.source) for c in built.cells] == \
        [(c["cell_type"], "".join(c["source"])) for c in stored], \
        "notebook cells differ from scripts/build_notebook.py: run it, then `python scripts/run_notebook.py`"


@pytest.mark.timeout(900)
def test_notebook_runs_top_to_bottom_in_quick_mode(tmp_path):
    corpus = Path(DEFAULT_CORPUS)
    if not corpus.is_file():
        pytest.skip(f"the notebook needs the joke corpus, which is missing: {corpus} "
                    "(expected at ../shared/data/russian_jokes.jsonl next to the repository)")
    started = time.perf_counter()
    # Raises nbclient.exceptions.CellExecutionError, naming the cell and its traceback, on any error.
    executed = _script("run_notebook").execute(NOTEBOOK, quick=True, run_dir=tmp_path / "run")
    elapsed = time.perf_counter() - started
    outputs = [o for cell in executed.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("режим: быстрый" in _text(o) for o in outputs)
    assert (tmp_path / "run" / "model.safetensors").is_file()
    print(f"notebook executed in quick mode in {elapsed:.0f} s")
