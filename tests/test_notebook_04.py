"""Issue 3's batch acceptance on the shipped sweep notebook, through the CLI a user types."""
import json
import subprocess

import pytest
from conftest import BIN, REPO, checked_outputs

pytestmark = pytest.mark.slow
NOTEBOOK = str(REPO / "notebooks" / "04_batch_sweep.ipynb")


def test_sweep_notebook_as_a_ci_batch_job(gaudi_home):
    result = subprocess.run(
        [str(BIN / "gaudi-nb"), "batch", NOTEBOOK, "-p", "learning_rate", "1e-3", "-p", "max_steps", "2", "-p", "sweep", "1e-4",
         "--ci", "--json"],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    record = json.loads(result.stdout)  # progress goes to stderr, the record to stdout
    assert record["status"] == "succeeded"
    folder = gaudi_home / "runs" / record["run_id"]
    output = json.loads((folder / "output.ipynb").read_text())
    manifest = json.loads((folder / "manifest.json").read_text())
    assert output["metadata"]["gaudi_nb"]["manifest"]["parameters"]["learning_rate"] == 1e-3
    assert manifest["accelerator"] == "cpu" and manifest["git"]["commit"]
    assert (folder / "junit.xml").exists()
    # what nbval checks: the tagged cells show what the notebook stores
    assert checked_outputs(output) == checked_outputs(json.loads(open(NOTEBOOK).read()))
    # the notebook swept itself: one more batch run (a sweep of one value: each trial is a kernel and a training
    # run, and the road is the same for one as for many), with its trial's result
    listed = json.loads(subprocess.run([str(BIN / "gaudi-nb"), "runs", "--json"], capture_output=True, text=True).stdout)
    trials = [r for r in listed if r.get("kind") == "batch" and r["run_id"] != record["run_id"]]
    assert [r["batch"]["parameters"]["learning_rate"] for r in trials] == [1e-4]
    assert all(r["batch"]["results"]["final_loss"] > 0 for r in trials)


def test_a_parameter_of_the_wrong_type_is_refused_before_anything_runs(gaudi_home):
    result = subprocess.run([str(BIN / "gaudi-nb"), "batch", NOTEBOOK, "-p", "learning_rate", "fast"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "learning_rate" in result.stderr and "float" in result.stderr
    assert not (gaudi_home / "runs").exists() or not any((gaudi_home / "runs").iterdir())
