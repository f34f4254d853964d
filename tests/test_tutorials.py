"""Every notebook under ``tutorials/`` runs, in smoke mode, in the project's interpreter.

Each notebook reads ``IMPLICIT_TRANSFORMS_SMOKE=1`` and shrinks its budgets (steps, samples,
grid sizes) while taking the same code path as its full run. The notebooks are discovered by
glob, so a new notebook is tested as soon as it is added. A notebook fails its test when a
cell raises (the message shows the cell and the traceback), when a cell runs past
``CELL_TIMEOUT`` seconds, or when it emits one of this package's warnings that it did not
catch itself.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="needs the tutorials extra")
nbclient = pytest.importorskip("nbclient", reason="needs the tutorials extra")
pytest.importorskip("ipykernel", reason="needs the tutorials extra")
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient.exceptions import CellExecutionError, CellTimeoutError

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
CELL_TIMEOUT = 180
"""Seconds any one cell may run in smoke mode (a smoke run of a whole notebook takes seconds)."""

OUR_WARNINGS = ("ConvergenceWarning", "LipschitzWarning", "ImplicitTransformsWarning")

# Appended to each notebook copy: the kernel must be this interpreter and import this checkout.
_CHECK_KERNEL = (
    "import sys, implicit_transforms\nprint(sys.executable)\nprint(implicit_transforms.__file__)"
)


def _kernel_manager(tmp_path: Path) -> KernelManager:
    """A kernel that runs ``sys.executable`` (the project's venv), whatever kernelspecs the
    machine has installed under the name ``python3``."""
    spec_dir = tmp_path / "kernels" / "implicit-transforms-test"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "implicit-transforms (test)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    ksm = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    return KernelManager(kernel_name="implicit-transforms-test", kernel_spec_manager=ksm)


def test_notebooks_are_present() -> None:
    """The glob finds the tutorials (an empty glob would make the suite vacuous)."""
    assert "01_quickstart" in {p.stem for p in NOTEBOOKS}, f"no tutorials found in {TUTORIALS}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_smoke_mode(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(_CHECK_KERNEL))
    monkeypatch.setenv("IMPLICIT_TRANSFORMS_SMOKE", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel picks its inline backend
    # silences the debugger's "frozen modules" notice that ipykernel prints on stderr
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    client = nbclient.NotebookClient(
        nb,
        km=_kernel_manager(tmp_path),
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(TUTORIALS)}},
    )
    start = time.perf_counter()
    try:
        client.execute()
    except CellTimeoutError as err:
        pytest.fail(f"{path.name}: a cell ran past {CELL_TIMEOUT} s in smoke mode\n{err}")
    except CellExecutionError as err:
        message = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # the traceback's terminal colours
        pytest.fail(f"{path.name} failed in smoke mode:\n{message}", pytrace=False)
    seconds = time.perf_counter() - start

    lines = "".join(o.get("text", "") for o in nb.cells[-1].outputs).split()
    assert lines[0] == sys.executable, f"the kernel ran {lines[0]}, not {sys.executable}"
    assert Path(lines[1]).resolve().is_relative_to(ROOT), f"imported {lines[1]}, not {ROOT}"

    for index, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            text = out.get("text", "") if out.get("name") == "stderr" else ""
            leaked = [w for w in OUR_WARNINGS if w in text]
            assert not leaked, f"{path.name}, cell {index}: uncaught {leaked[0]}:\n{text}"
    assert seconds < 120, f"{path.name}: the smoke run took {seconds:.0f} s (budget: seconds)"


def test_smoke_flag_is_read_by_every_notebook() -> None:
    """Each notebook decides its budgets from IMPLICIT_TRANSFORMS_SMOKE."""
    for path in NOTEBOOKS:
        text = path.read_text()
        assert "IMPLICIT_TRANSFORMS_SMOKE" in text, f"{path.name} ignores the smoke flag"


@pytest.mark.skipif(not NOTEBOOKS, reason="no notebooks")
def test_committed_notebooks_carry_outputs() -> None:
    """The committed notebooks are the outputs of a full run, figures included."""
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.get("execution_count") for c in code), f"{path.name}: unexecuted cells"
        images = sum(
            1 for c in code for o in c.get("outputs", []) if "image/png" in o.get("data", {})
        )
        assert images >= 1, f"{path.name}: no figure in the committed outputs"
        smoke = [
            c
            for c in code
            for o in c.get("outputs", [])
            if "SMOKE RUN" in o.get("text", "") or "SMOKE RUN" in str(o.get("data", ""))
        ]
        assert not smoke, f"{path.name}: committed from a smoke run, not a full run"
        top = next(c.source for c in nb.cells if c.cell_type == "markdown")
        stated = re.search(r"full run[^.]*?\d+(\.\d+)?\W*(s|min|minutes|seconds)\b", top, re.I)
        assert stated, f"{path.name}: the first text cell does not state the full run's time"
