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
import sys
from dataclasses import dataclass

import nbformat
from nbclient import NotebookClient

from conftest import ROOT, free_port, wait_for

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


def shell_env() -> dict[str, str]:
    """The environment, with this interpreter's ``de-magic`` command first on PATH (a venv not activated)."""
    return {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}


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
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", block.code], cwd=tmp_path, env=shell_env(),
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and TRACEBACK not in result.stderr, f"{block.code}\n{result.stderr}"
    assert "def compute_sum(da: xarray.DataArray)" in (tmp_path / "api.py").read_text()



def test_security_block_runs_as_written(tmp_path, processes):
    """The security block, with its public address swapped for a free port here: keys by bare name, the allowed
    directory it creates, a CURVE broker, a backend that registers with its key, and alice who lists it."""
    (block,) = [b for b in blocks() if "de-magic keys broker" in b.code]
    (backend,) = [b for b in blocks() if b.file == "backend.py"]
    (tmp_path / "backend.py").write_text(backend.code)
    port = free_port()
    code = block.code.replace(":5555", f":{port}").replace("broker.example.org", "127.0.0.1")
    env = {k: v for k, v in shell_env().items() if not k.startswith(("DE_MAGIC_", "XDG_CONFIG"))}
    env.update(HOME=str(tmp_path), PYTHONPATH=str(ROOT))

    def bash(line: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-euo", "pipefail", "-c", line], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=60)

    lines = [line for line in code.splitlines() if line.strip()]
    *setup, broker, serve, listing = lines
    for line in setup:
        done = bash(line)
        assert done.returncode == 0 and TRACEBACK not in done.stderr, f"{line}\n{done.stderr}"
    for line in (broker, serve):  # they serve until stopped: each in a terminal of its own
        processes.procs.append(subprocess.Popen(["bash", "-c", f"exec {line}"], cwd=tmp_path, env=env,
                                                start_new_session=True))
    # a CURVE broker and a backend that registers with its key: alice sees it
    wait_for(lambda: "my_analysis" in bash(listing).stdout, timeout=30, what="alice to see the backend")
    assert all(proc.poll() is None for proc in processes.procs)
