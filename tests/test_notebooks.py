"""The notebooks of notebooks/ tell the story on the library: each runs from top to bottom on small data, alone in a
fresh folder (generating its data), and 01-03 also on the folder 00 wrote; they are committed without outputs, and
their data source is one line."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import nbclient
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXPECTED = ["00_data_generation", "01_forecast", "02_anomaly_detection", "03_auto_labeling"]
KERNEL = "finops-ml-tests"  # a kernel spec of its own: this interpreter, whatever kernels the user has installed
CELL_TIMEOUT_S = 300  # a stuck cell fails the test instead of hanging it (each notebook takes well under a minute)
SOURCE_LINE = re.compile(r"^SOURCE = None  # None: generate; or a file path / 'bq://project\.dataset\.table' / "
                         r"'kafka://host:port/topic'$")


def _read(path: Path):
    return nbformat.read(path, as_version=4)


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory):
    """The name of a kernel spec that runs this interpreter (sys.executable), found first on JUPYTER_PATH."""
    from ipykernel.kernelspec import write_kernel_spec

    path = tmp_path_factory.mktemp("jupyter")
    write_kernel_spec(path / "kernels" / KERNEL, overrides={"display_name": "finops-ml tests"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", os.pathsep.join([str(path), *filter(None, [os.environ.get("JUPYTER_PATH")])]))
        yield KERNEL


def _execute(path: Path, workdir: Path, kernel: str) -> float:
    """Run every cell of a notebook in `workdir`; the seconds it took. A failing cell fails the test with its
    traceback (nbclient's CellExecutionError)."""
    nb = _read(path)
    started = time.perf_counter()
    nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=kernel,
                            resources={"metadata": {"path": str(workdir)}}).execute()
    return time.perf_counter() - started


@pytest.mark.unit
def test_the_four_notebooks_are_there():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


@pytest.mark.unit
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_hold_no_outputs_and_name_their_source_in_one_line(path):
    nb = _read(path)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, \
            f"{path.name} holds outputs: save it with empty outputs (Jupyter: Edit > Clear Outputs of All Cells)"
    assert SOURCE_LINE.match(code[0].source), f"{path.name}: the first code cell is the SOURCE line"
    assert sum("SOURCE = " in c.source for c in code) == 1, f"{path.name}: the source is set in one line only"


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS[1:], ids=lambda p: p.stem)
def test_notebook_runs_alone(path, tmp_path, kernel_name):
    """01-03 each in a fresh folder: no data from 00, so they generate and ingest it themselves (00 always does:
    the next test runs it)."""
    seconds = _execute(path, tmp_path, kernel_name)
    assert (tmp_path / "notebook-data" / "features" / "resources.parquet").exists()
    print(f"{path.name}: {seconds:.1f} s")


@pytest.mark.notebook
@pytest.mark.slow
def test_the_notebooks_after_00_read_its_folder(tmp_path, kernel_name):
    """00 then 01-03 in one folder, as a reader runs them in order: 01-03 reuse 00's data, generated once."""
    print(f"{NOTEBOOKS[0].name}: {_execute(NOTEBOOKS[0], tmp_path, kernel_name):.1f} s")
    generation = tmp_path / "notebook-data" / "generated" / "generation.json"
    written = generation.stat().st_mtime_ns
    for path in NOTEBOOKS[1:]:
        print(f"{path.name} on 00's folder: {_execute(path, tmp_path, kernel_name):.1f} s")
    assert generation.stat().st_mtime_ns == written, "a notebook regenerated the data 00 wrote"
