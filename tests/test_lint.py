"""House rules the machine can check: ruff on everything, mypy on the package."""
import subprocess

import pytest
from conftest import BIN, REPO


def test_ruff_is_clean():
    result = subprocess.run([str(BIN / "ruff"), "check", "gaudi_nb", "tests", "benchmarks", "docs/hooks"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.slow  # the whole package from a cold cache: minutes on 2 cores, the fast lane's biggest item by far
def test_mypy_is_clean_on_the_package():
    result = subprocess.run([str(BIN / "mypy"), "gaudi_nb", "--ignore-missing-imports"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:]
