"""House rules the machine can check: ruff on everything, mypy on the package, the import contracts, the size of rooms."""
import ast
import shutil
import subprocess

from conftest import BIN, REPO


def test_ruff_is_clean():
    result = subprocess.run([str(BIN / "ruff"), "check", "gaudi_nb", "tests", "benchmarks", "docs/hooks"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_mypy_is_clean_on_the_package_and_refuses_a_type_error(tmp_path):
    """pyproject's [tool.mypy]: the package's own types, without reading site-packages (seconds, not minutes,
    on a fresh clone). The second check, on the same cache, shows that setting still refuses a wrong type."""
    def mypy(*targets):
        return subprocess.run([str(BIN / "mypy"), *targets], cwd=REPO, capture_output=True, text=True, timeout=600)

    result = mypy("gaudi_nb")
    assert result.returncode == 0, result.stdout[-4000:]
    wrong = tmp_path / "wrong.py"
    wrong.write_text("from gaudi_nb.spec import RunSpec\n\ndevices: int = RunSpec().target\n")
    refused = mypy(str(wrong))
    assert refused.returncode == 1 and 'Incompatible types in assignment (expression has type "str", variable has type "int")' in refused.stdout, refused.stdout


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
