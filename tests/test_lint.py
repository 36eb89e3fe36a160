"""ruff, with the configuration in pyproject.toml, finds nothing in the Python sources and notebooks."""

import subprocess
import sys

from conftest import ROOT


def test_ruff_check_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
