"""Every code block of README.md runs, against the demo backends, so that the README cannot drift.

Python blocks run in order as the cells of one notebook, in a real kernel (magics included); a
block whose first line is ``# NAME.py`` is that file, written into the working directory first.
Shell blocks run with bash, after those.  A block may be skipped only by a visible
``<!-- no-test: reason -->`` right before it.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass

import nbformat
from nbclient import NotebookClient

from conftest import ROOT

from de_magic.embedded import DEMO_BACKENDS

_BLOCK = re.compile(r"(?:<!-- no-test: (?P<skip>[^>]+?) -->\n)?```(?P<lang>\w*)\n(?P<code>.*?)```", re.S)
_FILE = re.compile(r"# (\w+\.py)\n")
TRACEBACK = "Traceback (most recent call last)"


@dataclass
class Block:
    lang: str
    code: str
    skip: str | None

    @property
    def file(self) -> str | None:
        """The file name, for a block that is a file (``# backend.py`` on its first line)."""
        match = _FILE.match(self.code)
        return match[1] if match else None


def blocks() -> list[Block]:
    return [Block(m["lang"], m["code"], m["skip"]) for m in _BLOCK.finditer((ROOT / "README.md").read_text())]


def test_blocks_are_known_kinds_and_few_are_skipped():
    found = blocks()
    assert {b.lang for b in found} <= {"python", "bash"}, "a block the tests would not know how to run"
    assert len(found) >= 6
    assert len([b for b in found if b.skip]) <= 2


def test_example_backend_does_not_take_a_demo_backends_name():
    """Serving the README's example must not replace the API of a demo backend the quick start started."""
    (backend,) = [b for b in blocks() if b.file == "backend.py"]
    (name,) = re.findall(r"main\(name=\"(\w+)\"", backend.code)
    assert name not in DEMO_BACKENDS


def test_every_block_runs(demo, tmp_path, monkeypatch):
    monkeypatch.setenv("DE_MAGIC_BROKER", demo.url)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    runnable = [b for b in blocks() if not b.skip]
    for block in runnable:
        if block.file:
            (tmp_path / block.file).write_text(block.code)
    cells = [nbformat.v4.new_code_cell(b.code) for b in runnable if b.lang == "python" and not b.file]
    nb = nbformat.v4.new_notebook(cells=cells)
    # a failing cell raises CellExecutionError with the cell's source and traceback
    NotebookClient(nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [out for cell in nb.cells for out in cell.outputs]
    text = "".join(out.get("text", "") + out.get("data", {}).get("text/plain", "") for out in outputs)
    assert "de-magic: connected to " + demo.url in text
    assert "<Progress 'adding' 10/10 " in text
    for block in (b for b in runnable if b.lang == "bash"):
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], cwd=tmp_path, env=os.environ,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and TRACEBACK not in result.stderr, f"{block.code}\n{result.stderr}"
    assert "def compute_sum(da: xarray.DataArray)" in (tmp_path / "api.py").read_text()

