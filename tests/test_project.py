"""[tool.gaudi_nb] defaults reach every door that starts a run: gaudi-nb train, gaudi_nb.train() and %gaudi_train."""
from __future__ import annotations

import pytest
from IPython import get_ipython
from IPython.core.error import UsageError
from IPython.testing.globalipapp import start_ipython

import gaudi_nb
from gaudi_nb.errors import SpecError
from gaudi_nb.project import run_defaults


@pytest.fixture
def project(gaudi_home, tmp_path, monkeypatch):
    """A project whose pyproject.toml sets defaults; the working directory is its notebooks/ folder."""
    root = tmp_path / "project"
    (root / "notebooks").mkdir(parents=True)
    (root / "pyproject.toml").write_text('[tool.gaudi_nb]\ndataset = "data/train.txt"\ninstance-type = "nope.large"\npanel = "static"\n')
    monkeypatch.chdir(root / "notebooks")
    monkeypatch.setenv("GAUDI_NB_PANEL", "static")
    return root


def refusal_of(door: str, capsys, **options: str) -> str:
    """The one line a door answers with (each door is asked for a run it must refuse before anything starts)."""
    if door == "cli":
        from gaudi_nb.cli import main

        capsys.readouterr()
        with pytest.raises(SystemExit) as info:
            main(["train", "--detach", *[part for key, value in options.items() for part in (f"--{key.replace('_', '-')}", value)]])
        assert info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("error: "), err
        return err.removeprefix("error: ")
    if door == "python":
        with pytest.raises(SpecError) as python_info:
            gaudi_nb.train(**options)
        return str(python_info.value)
    start_ipython()
    shell = get_ipython()
    shell.run_line_magic("load_ext", "gaudi_nb")
    with pytest.raises(UsageError) as magic_info:
        shell.run_line_magic("gaudi_train", " ".join(f"--{key.replace('_', '-')} {value}" for key, value in options.items()))
    return str(magic_info.value)


@pytest.mark.parametrize("door", ["cli", "python", "magic"])
def test_every_door_starts_from_the_projects_defaults(door, project, capsys):
    # the dataset is read from the project's folder, wherever the notebook is
    assert refusal_of(door, capsys) == f"dataset: file not found: {project / 'data' / 'train.txt'}: give an existing .txt/.jsonl/.parquet file (a relative path is read from the working directory)"
    # what the door is given wins over the project's default; the next default is still the project's
    assert refusal_of(door, capsys, dataset="sample-text").startswith("instance_type: no price for instance type 'nope.large'")
    assert gaudi_nb.runs() == []  # nothing was started by any of them


def test_run_defaults_are_runspec_fields_and_unknown_keys_say_so(project):
    assert run_defaults() == {"dataset": str(project / "data" / "train.txt"), "instance_type": "nope.large"}
    (project / "pyproject.toml").write_text("[tool.gaudi_nb]\ngpus = 3\n")
    with pytest.raises(SpecError, match=r"\[tool.gaudi_nb\] has unknown keys gpus: use RunSpec fields"):
        gaudi_nb.train()
