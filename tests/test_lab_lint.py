"""The JupyterLab extension's own checks: prettier, eslint and stylelint, then its jest tests.

They need the extension's node_modules, which ``pip install -e .[test]`` makes (the build hook
runs ``jlpm install``); only a checkout without them skips.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from conftest import ROOT

EXTENSION = ROOT / "labextension"

pytestmark = pytest.mark.skipif(
    shutil.which("jlpm") is None or not (EXTENSION / "node_modules" / ".bin" / "jest").exists(),
    reason="needs jlpm and the extension's node_modules (pip install -e .[test] or: cd labextension && jlpm install)")


@pytest.mark.parametrize("script", ["lint:check", "test"])
def test_extension(script):
    done = subprocess.run(["jlpm", script], cwd=EXTENSION, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"jlpm {script} failed:\n{done.stdout}\n{done.stderr}"
