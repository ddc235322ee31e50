"""House rules the machine can check: ruff on everything, mypy on the package, the import contracts, the size of rooms."""
import ast
import shutil
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


def lint_imports(root):
    return subprocess.run([str(BIN / "lint-imports"), "--no-cache"], cwd=root, capture_output=True, text=True, timeout=300)


def test_the_architectures_import_rules_hold():
    """docs/architecture.md's "Where code runs" as import-linter contracts (pyproject.toml)."""
    result = lint_imports(REPO)
    assert result.returncode == 0 and "0 broken" in result.stdout, result.stdout[-4000:]


def test_a_rank_that_imports_the_client_breaks_a_contract(tmp_path):
    """The contracts bite: the same package with one rank module importing the store is refused."""
    shutil.copytree(REPO / "gaudi_nb", tmp_path / "gaudi_nb", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    rank = tmp_path / "gaudi_nb" / "worker" / "rank.py"
    rank.write_text(rank.read_text() + "\nfrom ..store import RunStore  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0 and "gaudi_nb.worker.rank -> gaudi_nb.store" in result.stdout, result.stdout[-4000:]


def test_no_module_over_500_lines_and_no_function_over_80():
    """Small rooms with one job: the house rule the issue set, checked rather than hoped for."""
    long_modules, long_functions = [], []
    for path in sorted((REPO / "gaudi_nb").rglob("*.py")):
        text = path.read_text()
        name = path.relative_to(REPO)
        if len(text.splitlines()) > 500:
            long_modules.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80:
                long_functions.append(f"{name}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long_modules and not long_functions, long_modules + long_functions
