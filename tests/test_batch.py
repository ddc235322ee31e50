"""Batch notebooks: real papermill execution of tiny notebooks on the python3 kernel."""
from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest.importorskip("papermill")

from gaudi_nb.batch import batch, batch_sweep, compare, compare_table, notebook_parameters, record  # noqa: E402
from gaudi_nb.batch import manifest as manifest_mod  # noqa: E402
from gaudi_nb.batch import parameters as P  # noqa: E402
from gaudi_nb.batch.cli import batch_command  # noqa: E402
from gaudi_nb.errors import SpecError  # noqa: E402
from gaudi_nb.store import RunStore  # noqa: E402

NOTEBOOKS = Path(__file__).parent / "fixtures" / "notebooks"
GOOD = NOTEBOOKS / "good.ipynb"
FAILING = NOTEBOOKS / "failing.ipynb"


def cli(argv):
    """gaudi_nb.cli.main with `batch` mounted (the lead mounts it for good; until then, here)."""
    from gaudi_nb.cli import app, main

    if not any(c.name == "batch" for c in app.registered_commands):
        app.command("batch")(batch_command)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code


# -- parameters (pure) -------------------------------------------------------------
def test_parameters_cell_types():
    declared = notebook_parameters(json.loads(GOOD.read_text()))
    assert {k: p.type_name for k, p in declared.items()} == {"learning_rate": "float", "epochs": "int", "run_name": "str", "use_bias": "bool", "seed": "int"}
    assert P.validate(declared, {"learning_rate": "1e-3", "epochs": "3", "use_bias": "false", "run_name": "x"}) == {"learning_rate": 0.001, "epochs": 3, "use_bias": False, "run_name": "x"}
    assert P.validate(declared, {"learning_rate": 1}) == {"learning_rate": 1.0}


@pytest.mark.parametrize(
    "given, message",
    [
        ({"learning_rate": "fast"}, "learning_rate: expected float (default 0.001), got 'fast'"),
        ({"epochs": "2.5"}, "epochs: expected int (default 2), got '2.5'"),
        ({"use_bias": "maybe"}, "use_bias: expected bool"),
        ({"run_name": 3}, "run_name: expected str"),
        ({"learnig_rate": "0.1"}, "the notebook's parameters are learning_rate, epochs, run_name, use_bias, seed"),
    ],
)
def test_bad_parameters_are_named(given, message):
    declared = notebook_parameters(json.loads(GOOD.read_text()))
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        P.expand_grid(declared, given)


def test_sweep_grid_is_a_cartesian_product():
    declared = notebook_parameters(json.loads(GOOD.read_text()))
    grid = P.expand_grid(declared, {"learning_rate": "1e-4,3e-4", "epochs": [1, 2, 3], "run_name": "a,b"})
    assert len(grid) == 6
    assert grid[0] == {"learning_rate": 0.0001, "epochs": 1, "run_name": "a,b"}  # a comma in a str parameter is text
    with pytest.raises(SpecError, match="learning_rate: expected float"):
        P.expand_grid(declared, {"learning_rate": "1e-4,fast"})


def test_record_outside_a_batch_run_does_nothing(monkeypatch):
    monkeypatch.delenv("GAUDI_NB_RUN_ID", raising=False)
    monkeypatch.delenv("GAUDI_NB_RUN_DIR", raising=False)
    assert record(loss=1.0) is None


# -- manifest (pure-ish) -----------------------------------------------------------
def test_manifest_masks_secrets_and_keeps_hpu_variables(tmp_path):
    environ = {"PT_HPU_LAZY_MODE": "1", "HABANA_VISIBLE_MODULES": "0,1", "HABANA_API_TOKEN": "tok-123", "MY_API_TOKEN": "tok-456", "HOME": "/root"}
    m = manifest_mod.build_manifest({"learning_rate": 0.1, "hf_token": "hf_secret", "seed": 7}, notebook=GOOD, environ=environ, accelerator="cpu")
    assert m["environment"] == {"HABANA_API_TOKEN": "***", "HABANA_VISIBLE_MODULES": "0,1", "PT_HPU_LAZY_MODE": "1"}
    assert m["parameters"]["hf_token"] == "***" and m["seeds"] == {"seed": 7}
    text = json.dumps(m)
    assert "tok-123" not in text and "tok-456" not in text and "hf_secret" not in text
    assert m["versions"]["python"] and any(p.startswith("papermill==") for p in m["packages"])


def test_git_state_hashes_the_uncommitted_diff(tmp_path, monkeypatch):
    repo, outside = tmp_path / "repo", tmp_path / "outside"
    repo.mkdir()
    outside.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # git may not look above tmp_path for a repository

    def git(*args):
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)

    git("init", "-q")
    (repo / "nb.ipynb").write_text("{}")
    assert manifest_mod.git_state(repo / "nb.ipynb") == {"root": str(repo.resolve()), "commit": None, "branch": None, "dirty": False, "diff_sha256": None}  # no commit yet
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    clean = manifest_mod.git_state(repo / "nb.ipynb")
    assert len(clean["commit"]) == 40 and clean["branch"] and clean["dirty"] is False and clean["diff_sha256"] is None
    (repo / "nb.ipynb").write_text('{"changed": 1}')
    dirty = manifest_mod.git_state(repo / "nb.ipynb")
    assert dirty["dirty"] is True and len(dirty["diff_sha256"]) == 64 and dirty["commit"] == clean["commit"]
    assert manifest_mod.git_state(outside) is None
    assert manifest_mod.git_state(outside / "nb.ipynb") is None


def test_installed_packages_match_the_metadata_api():
    from importlib import metadata

    seen = {}
    for dist in metadata.distributions():  # the slow way: every metadata file parsed whole
        if dist.name and dist.name.lower() not in seen:
            seen[dist.name.lower()] = f"{dist.name}=={dist.version}"
    assert manifest_mod.installed_packages() == [seen[k] for k in sorted(seen)]


def test_the_accelerator_is_named_without_importing_torch():
    # the manifest (and the agent) name it from the Gaudi software and device files: importing torch costs a second or more
    code = "import sys; from gaudi_nb.accel import detect_name; print(detect_name(), 'torch' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != "GAUDI_NB_ACCELERATOR"}
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, cwd=Path(manifest_mod.__file__).parents[2]).stdout.split()
    assert printed[1] == "False"
    if not glob.glob("/dev/nvidia[0-9]*") and importlib.util.find_spec("habana_frameworks") is None:
        assert printed[0] == "cpu"


def test_the_room_imports_cheaply():
    """gaudi_nb/__init__.py binds `batch` eagerly from here: the room alone loads neither papermill, the store nor torch."""
    code = (
        "import sys, types; pkg = types.ModuleType('gaudi_nb'); pkg.__path__ = [sys.argv[1]]; sys.modules['gaudi_nb'] = pkg; "
        "import gaudi_nb.batch; from gaudi_nb.batch.execute import batch; "
        "print(sorted(m for m in ('papermill', 'sqlalchemy', 'torch', 'pydantic', 'nbformat', 'gaudi_nb.store', 'gaudi_nb.api') if m in sys.modules))"
    )
    printed = subprocess.run([sys.executable, "-c", code, str(Path(manifest_mod.__file__).parents[1])], capture_output=True, text=True, check=True).stdout
    assert printed.strip() == "[]"


def test_gaudi_nb_batch_is_callable_whatever_was_imported_first():
    """`gaudi_nb.batch(...)` at the top level, even after the room itself was imported (which sets the
    package attribute `batch` to the subpackage: a lazy PEP 562 name would be shadowed)."""
    code = (
        "import gaudi_nb.batch.cli, gaudi_nb; from gaudi_nb.batch import record, batch_sweep; "
        "assert callable(gaudi_nb.batch), gaudi_nb.batch; print('ok')"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(manifest_mod.__file__).parents[2]).stdout.strip() == "ok"


def test_secret_looking_values_are_masked_in_source():
    source = '# Parameters\nlearning_rate = 0.001\napi_token = "tok-1=2"\nHF_TOKEN: str = \'x\'\nkeys_seen = 3\n'
    assert manifest_mod.mask_source(source) == '# Parameters\nlearning_rate = 0.001\napi_token = "***"\nHF_TOKEN: str = "***"\nkeys_seen = "***"\n'
    assert manifest_mod.mask_source("api_key == x\n") == "api_key == x\n"  # a comparison, not an assignment
    assert manifest_mod.mask_source("endpoint = 'https://x'\n", ["endpoint"]) == 'endpoint = "***"\n'  # given as env:VAR or file:PATH


def test_masking_covers_nested_values_common_names_and_values_given_from_the_environment():
    given = {"db_dsn": "postgresql://u:p@h/db", "slack_webhook": "https://hooks", "db_pwd": "p", "hook": manifest_mod.SecretValue("https://x"),
             "config": {"auth": {"password": "p", "user": "ada"}, "servers": [{"api_key": "k", "port": 1}]}, "lr": 0.1}
    assert manifest_mod.mask(given) == {"db_dsn": "***", "slack_webhook": "***", "db_pwd": "***", "hook": "***",
                                        "config": {"auth": "***", "servers": [{"api_key": "***", "port": 1}]}, "lr": 0.1}


def test_hlsmi_query_parsing():
    text = "Driver Version                                  : 1.21.0-ca59b5a\n[0]\n    Firmware [FIT] Version          : Linux gaudi2, Version 1.21.0-fw-58.1.0\n"
    assert manifest_mod.parse_hlsmi_query(text) == {"driver": "1.21.0-ca59b5a", "firmware": "Linux gaudi2, Version 1.21.0-fw-58.1.0"}
    assert manifest_mod.gaudi_versions(run=lambda argv: None) == {"driver": None, "firmware": None}


# -- real executions ---------------------------------------------------------------
def test_good_notebook_runs_as_a_batch_run(gaudi_home, monkeypatch):
    monkeypatch.setenv("MY_API_TOKEN", "very-secret-value")
    monkeypatch.setenv("PT_HPU_LAZY_MODE", "1")
    monkeypatch.setenv("HABANA_SECRET_KEY", "another-secret")
    seen = []
    run = batch(GOOD, {"learning_rate": "1e-3", "epochs": 3}, on_event=seen.append)
    rec = run.record()
    assert rec["status"] == "succeeded" and rec["kind"] == "batch"
    info = rec["batch"]
    assert info["cells_total"] == 4 and info["cells_done"] == 4 and info["failed_cell"] is None
    assert info["results"] == {"final_loss": pytest.approx(0.729), "epochs": 3}
    assert info["parameters"] == {"learning_rate": 0.001, "epochs": 3}

    out = Path(info["output_path"])
    assert out == gaudi_home / "runs" / run.run_id / "output.ipynb" and out.exists()
    manifest_text = Path(info["manifest_path"]).read_text()
    assert Path(info["manifest_path"]).parent == out.parent
    manifest = json.loads(manifest_text)
    assert manifest["parameters"]["learning_rate"] == 0.001 and manifest["parameters"]["run_name"] == "tiny"
    assert manifest["seeds"] == {"seed": 0} and manifest["accelerator"] == "cpu"
    assert manifest["environment"]["PT_HPU_LAZY_MODE"] == "1" and manifest["environment"]["HABANA_SECRET_KEY"] == "***"
    output_nb = json.loads(out.read_text())
    assert output_nb["metadata"]["gaudi_nb"]["manifest"]["run_id"] == run.run_id
    for text in (manifest_text, out.read_text()):
        assert "very-secret-value" not in text and "another-secret" not in text

    events = run.events()
    assert [e["type"] for e in events][0] == "run_start" and events[-1]["type"] == "run_end"
    cells = [e for e in events if e["type"] == "cell"]
    assert [(e["index"], e["phase"]) for e in cells] == [(i, p) for i in (1, 2, 3, 4) for p in ("start", "end")]
    assert all(e["duration_s"] >= 0 for e in cells if e["phase"] == "end")
    assert [e["t"] for e in cells] == sorted(e["t"] for e in cells)
    assert [e["type"] for e in seen if e["type"] != "result"] == [e["type"] for e in events if e["type"] != "result"]  # live callback saw them all
    assert RunStore().list(kind="batch")[0]["run_id"] == run.run_id


def test_failing_notebook_fails_naming_the_cell(gaudi_home, tmp_path, capsys):
    junit = tmp_path / "junit.xml"
    assert cli(["batch", str(FAILING), "--ci", "--junit", str(junit)]) == 1
    err = capsys.readouterr().err
    assert "cell 2 failed: ZeroDivisionError: division by zero" in err
    [rec] = RunStore().list(kind="batch")
    assert rec["status"] == "failed" and rec["exit"]["reason"] == "cell 2 failed: ZeroDivisionError: division by zero"
    assert rec["batch"]["failed_cell"] == 2 and rec["batch"]["cells_done"] == 2
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("tests") == "4" and suite.get("failures") == "1" and suite.get("skipped") == "1"
    failure = suite.find("testcase/failure")
    assert "ZeroDivisionError" in failure.get("message")


def test_bad_parameter_is_refused_before_anything_runs(gaudi_home, capsys):
    assert cli(["batch", str(GOOD), "-p", "learning_rate", "fast"]) == 2
    assert "learning_rate: expected float (default 0.001), got 'fast'" in capsys.readouterr().err
    assert RunStore().list() == []
    assert not any((gaudi_home / "runs").glob("*")) if (gaudi_home / "runs").exists() else True
    with pytest.raises(SpecError, match="unknown parameter 'nope'"):
        batch(GOOD, {"nope": 1})
    with pytest.raises(SpecError, match="batch_sweep"):
        batch(GOOD, {"learning_rate": "1e-3,1e-2"})
    assert RunStore().list() == []


@pytest.mark.slow  # several papermill runs; the fast lane runs one notebook
def test_sweep_runs_a_grid_and_compares(gaudi_home, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli(["batch", str(GOOD), "-p", "learning_rate", "1e-4,3e-4,1e-3", "-p", "epochs", "1", "--output", str(out), "--compare"]) == 0
    printed = capsys.readouterr().out
    records = RunStore().list(kind="batch")
    assert len(records) == 3 and {r["status"] for r in records} == {"succeeded"}
    assert sorted(r["batch"]["parameters"]["learning_rate"] for r in records) == [0.0001, 0.0003, 0.001]
    for r in records:
        assert (out / r["run_id"] / "output.ipynb").exists() and (out / r["run_id"] / "manifest.json").exists()
        assert r["run_id"] in printed
    assert "final_loss" in printed and "epochs (result)" in printed and "cell 3: import random" in printed  # the table, the live per-cell lines

    rows = compare([r["run_id"] for r in records])
    assert sorted(row["results"]["final_loss"] for row in rows) == pytest.approx([0.9, 0.97, 0.99])
    assert all(row["duration_s"] > 0 and row["status"] == "succeeded" for row in rows)
    assert compare_table(rows).row_count == 3


def test_batch_sweep_api_refuses_a_single_ipynb_output(gaudi_home, tmp_path):
    with pytest.raises(SpecError, match="give a folder"):
        batch_sweep(GOOD, {"epochs": "1,2"}, output=str(tmp_path / "x.ipynb"))
    assert RunStore().list() == []


class MemoryHandler:
    """A papermill I/O handler for memory:// paths: stands in for s3:// (same code path, no bucket)."""

    def __init__(self):
        self.files = {}

    def read(self, path):
        return self.files[path]

    def write(self, buf, path):
        self.files[path] = buf

    def listdir(self, path):
        return [p for p in self.files if p.startswith(path)]

    def pretty_path(self, path):
        return path


def test_output_goes_through_papermills_io_handlers(gaudi_home):
    from papermill.iorw import papermill_io

    handler = MemoryHandler()
    papermill_io.register("memory://", handler)
    try:
        run = batch(GOOD, {"epochs": 1}, output="memory://bucket/experiments/")
    finally:
        papermill_io._handlers.remove(("memory://", handler))
    rec = run.record()
    assert rec["status"] == "succeeded", rec["exit"]
    out = f"memory://bucket/experiments/{run.run_id}/output.ipynb"
    assert rec["batch"]["output_path"] == out and rec["batch"]["manifest_path"] == f"memory://bucket/experiments/{run.run_id}/manifest.json"
    assert json.loads(handler.files[out])["metadata"]["gaudi_nb"]["manifest"]["parameters"]["epochs"] == 1
    assert json.loads(handler.files[rec["batch"]["manifest_path"]])["run_id"] == run.run_id
    assert (gaudi_home / "runs" / run.run_id / "manifest.json").exists()  # the run folder keeps a copy


def secret_notebook(folder: Path) -> Path:
    """A notebook whose parameter looks secret; it records the sha256 of the value it received."""
    def code(source, tags=()):
        return {"cell_type": "code", "execution_count": None, "metadata": {"tags": list(tags)}, "outputs": [], "source": source}

    nb = {
        "cells": [
            code('api_token = ""\nendpoint = ""\nsteps = 1\n', tags=["parameters"]),
            code("import hashlib\nfrom gaudi_nb.batch import record\nrecord(token_sha256=hashlib.sha256(api_token.encode()).hexdigest(), "
                 "endpoint_sha256=hashlib.sha256(endpoint.encode()).hexdigest(), steps=steps)\n"),
        ],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}, "language_info": {"name": "python"}},
        "nbformat": 4,
        "nbformat_minor": 4,
    }
    path = folder / "secret.ipynb"
    path.write_text(json.dumps(nb))
    return path


def test_secret_parameters_reach_the_notebook_and_nothing_else(gaudi_home, tmp_path, capsys, monkeypatch):
    secret = "s3cr3t-" + "Zq81xVw"  # built, so that this file's bytes never matter
    hook = "https://hooks.example/" + "T0k3n" + "Qx9"  # a name that does not look secret, given as env:VAR: masked by where it came from
    notebook = secret_notebook(tmp_path)
    (tmp_path / "token.txt").write_text(secret + "\n")
    monkeypatch.setenv("GAUDI_NB_TEST_HOOK", hook)
    # from a file and from a variable: neither value is on the command line (ps, shell history)
    assert cli(["batch", str(notebook), "-p", "api_token", f"file:{tmp_path / 'token.txt'}", "-p", "endpoint", "env:GAUDI_NB_TEST_HOOK", "-p", "steps", "2", "--compare", "--json"]) == 0
    printed = capsys.readouterr()
    [rec] = RunStore().list(kind="batch")
    assert rec["status"] == "succeeded"
    assert rec["batch"]["results"] == {"token_sha256": hashlib.sha256(secret.encode()).hexdigest(), "endpoint_sha256": hashlib.sha256(hook.encode()).hexdigest(), "steps": 2}  # the kernel got the real values
    assert rec["batch"]["parameters"] == {"api_token": "***", "endpoint": "***", "steps": 2}
    for value in (secret, hook):
        assert value not in printed.out and value not in printed.err  # progress, compare table, JSON record
    assert "api_token=***" in printed.err and "(injected parameters) api_token = \"***\"" in printed.err

    folder = gaudi_home / "runs" / rec["run_id"]
    events_text = (folder / "events.jsonl").read_text()
    assert secret not in events_text and '"api_token":"***"' in events_text
    for path in folder.rglob("*"):  # events, manifest, output notebook, logs
        if path.is_file():
            assert secret.encode() not in path.read_bytes() and hook.encode() not in path.read_bytes(), path
    output = json.loads((folder / "output.ipynb").read_text())
    assert output["metadata"]["papermill"]["parameters"] == {"api_token": "***", "endpoint": "***", "steps": 2}

    store_files = list(gaudi_home.glob("store.db*"))  # the database and its write-ahead log
    assert store_files and all(secret.encode() not in p.read_bytes() and hook.encode() not in p.read_bytes() for p in store_files)
    with sqlite3.connect(gaudi_home / "store.db") as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        rows = [repr(row) for table in tables for row in db.execute(f"SELECT * FROM {table}")]
    assert rows and not any(secret in row or hook in row for row in rows)
    assert cli(["batch", str(notebook), "-p", "endpoint", "env:GAUDI_NB_NOT_SET"]) == 2  # one line, nothing runs
    assert "-p endpoint: env:GAUDI_NB_NOT_SET: the variable GAUDI_NB_NOT_SET is not set here" in capsys.readouterr().err


def test_a_bad_secret_value_is_not_printed(tmp_path):
    declared = notebook_parameters(json.loads(secret_notebook(tmp_path).read_text()))
    with pytest.raises(SpecError) as refused:
        P.validate(declared, {"api_token": 12345})
    assert str(refused.value) == "api_token: expected str (default \"\"), got ***"
