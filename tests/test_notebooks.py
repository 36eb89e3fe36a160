"""The demo notebooks, executed from a clean state in a temporary directory by a real kernel."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT, free_port, wait_for

NOTEBOOKS = ROOT / "notebooks"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def processes_using(url: str) -> list[int]:
    """Pids of processes whose command line names ``url`` (the backends a notebook started)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and url.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            pass
    return pids


@pytest.fixture
def run_notebook(tmp_path, monkeypatch):
    """Execute a notebook copied into ``tmp_path`` against a fresh local address (the embedded default)."""
    url = f"tcp://127.0.0.1:{free_port()}"
    monkeypatch.setenv("DE_MAGIC_BROKER", url)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))

    def run(name: str) -> list[nbformat.NotebookNode]:
        path = Path(shutil.copy(NOTEBOOKS / f"{name}.ipynb", tmp_path))
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
        return [cell for cell in nb.cells if cell.cell_type == "code"]

    try:
        yield run
        # the kernel has exited: everything the notebook started must be gone
        wait_for(lambda: not processes_using(url), timeout=10, what="the notebook's backends to stop")
    finally:
        for pid in processes_using(url):
            os.kill(pid, signal.SIGKILL)


def outputs_of(cell) -> tuple[str, dict]:
    """All text a cell printed or displayed as text/plain, and its rich bundles merged into one dict."""
    text, data = [], {}
    for out in cell.outputs:
        assert out.output_type != "error", f"cell failed: {cell.source}\n" + "\n".join(out.traceback)
        if out.output_type == "stream":
            text.append(out.text)
        else:
            text.append(out.data.get("text/plain", ""))
            data.update(out.data)
    return "".join(text), data


def find(cells, fragment: str):
    (cell,) = [c for c in cells if fragment in c.source]
    return outputs_of(cell)


def test_basic_notebook(run_notebook):
    cells = run_notebook("basic")
    text, _ = find(cells, "%remote_connect")
    assert "starting one in this kernel" in text
    _, data = find(cells, "%remote_list")
    assert all(name in data["text/html"] for name in ("my_sums", "hello_world", "compute_sum"))
    text, _ = find(cells, "backend.py schema")
    assert '"name": "my_sums"' in text
    text, _ = find(cells, "from api import compute_sum")
    assert "compute_sum(da: " in text and "Compute the sum over a data array." in text
    text, _ = find(cells, "compute_sum(da)")
    assert "array(66.)" in text
    text, data = find(cells, "%%remote hello_world --push da --pull total")
    assert "running on" in text
    assert "image/png" in data, "the remote plot did not come back as an image"
    assert "<table" in data["text/html"], "the remote DataFrame did not come back as HTML"
    assert find(cells, "float(total)")[0] == "66.0"
    assert find(cells, "n = %remote")[0] == "12"
    assert WIDGET_VIEW in find(cells, "%remote_ui hello_world.scale")[1]
    text, data = find(cells, "slow_sum")
    assert "190" in text


def test_example_notebook(run_notebook):
    cells = run_notebook("example")
    _, data = find(cells, "ocean = client")
    assert "get_model_parameter" in data["text/html"]
    _, data = find(cells, "model = ocean.get_model_parameter")
    assert "temperature" in data["text/html"] and "salinity" in data["text/html"]
    text, _ = find(cells, "merged = track.merge")
    assert "temperature" in text and "rmse" in text
    _, data = find(cells, "plt.subplots")
    assert "image/png" in data
