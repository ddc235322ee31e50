"""The Target seam (targets/base.py) and the node CLI every target's node commands go to (agent/commands.py), without a node."""
import json
import os
import stat
import subprocess
import sys

import pytest

import gaudi_nb
from gaudi_nb.agent import commands
from gaudi_nb.errors import GaudiNbError, SpecError
from gaudi_nb.events import read_events
from gaudi_nb.rundir import RunFolder
from gaudi_nb.targets import LocalTarget, Part


def node_cli(*argv, stdin=None):
    result = subprocess.run([sys.executable, "-m", "gaudi_nb.agent.commands", *argv], input=stdin, capture_output=True, text=True, timeout=60)
    return result.returncode, result.stdout, result.stderr


def test_free_ports_are_two_ports_free_now():
    code, out, err = node_cli("free-ports", "--count", "2")
    assert code == 0, err
    ports = json.loads(out)["ports"]
    assert len(ports) == 2 and len(set(ports)) == 2 and all(0 < p < 65536 for p in ports)


def test_files_sent_with_a_command_stay_inside_the_run_folder_and_a_secret_is_its_owners(tmp_path):
    folder = RunFolder(tmp_path / "r1")
    commands.write_files(folder, {"spec.json": {"text": "{}"}, "control/environment.json": {"text": '{"K": "v"}', "mode": 0o600}})
    assert (folder.path / "spec.json").read_text() == "{}"
    assert stat.S_IMODE(folder.sent_environment.stat().st_mode) == 0o600
    for bad in ("../escape.json", "/etc/passwd", ""):
        with pytest.raises(ValueError, match="not a path inside the run folder"):
            commands.write_files(folder, {bad: {"text": "x"}})
    assert not (tmp_path / "escape.json").exists()


def test_stop_all_and_end_started_on_a_node_whose_agent_never_started(tmp_path):
    folder = RunFolder(tmp_path / "r1").create()
    folder.run.write_text(json.dumps({"run_id": "r1", "node": "na"}))
    code, out, _ = node_cli("stop-all", "--run-dir", str(folder.path), "--reason", "stopped")
    assert code == 0 and json.loads(out) == {"first": False, "alive": False}  # the client then asks each node itself
    code, out, _ = node_cli("end-started", "--run-dir", str(folder.path), "--reason", "the run could not start: node nb refused")
    assert code == 0 and json.loads(out) == {"ended": True}
    (end,) = [e for e in read_events(folder.events)[0] if e["type"] == "run_end"]
    assert end["status"] == "failed" and end["reason"].startswith("the run could not start: node nb refused")
    assert json.loads(node_cli("end-started", "--run-dir", str(folder.path), "--reason", "again")[1]) == {"ended": False}  # once
    assert json.loads(node_cli("end-started", "--run-dir", str(tmp_path / "never"), "--reason", "x")[1]) == {"ended": False}


def test_a_refused_resume_is_one_line_with_its_exit_status_and_nothing_sent_stays(tmp_path):
    folder = RunFolder(tmp_path / "r1").create()
    folder.run.write_text(json.dumps({"run_id": "r1", "node": "na", "cluster": {"nodes": ["na", "nb"]}}))
    secret = json.dumps({"control/environment.json": {"text": '{"TOKEN": "s"}', "mode": 0o600}})
    code, out, err = node_cli("resume", "--run-dir", str(folder.path), "--files-stdin", stdin=secret)
    assert code == commands.REFUSED and out == "" and len(err.strip().splitlines()) == 1 and "ran across nodes" in err
    assert not folder.sent_environment.exists()


class Unstartable(LocalTarget):
    """This machine, where the node command that starts the agent fails (a full disk, say)."""

    def node_call(self, part: Part, *argv, files=None, timeout=120.0):
        if argv[0] == "start":
            raise GaudiNbError("node local: start failed: No space left on device")
        return super().node_call(part, *argv, files=files, timeout=timeout)


def test_a_launch_that_raises_ends_the_run_failed_with_the_reason(gaudi_home, tmp_path, monkeypatch):
    from gaudi_nb import api

    script = tmp_path / "train.py"
    script.write_text("print('never runs')\n")
    monkeypatch.setattr(api, "target_for", lambda target: Unstartable())
    with pytest.raises(GaudiNbError, match="could not start: node local: start failed: No space left on device"):
        gaudi_nb.train(script=str(script), max_steps=1)
    (row,) = gaudi_nb.runs()
    run = gaudi_nb.get_run(row["run_id"])
    record = run.record()
    assert record["status"] == "failed" and "No space left on device" in record["exit"]["reason"]
    assert (run.run_dir / "script.py").read_text() == "print('never runs')\n"  # the inputs were in place; only the start failed


def test_logs_of_another_node_name_is_one_line(gaudi_home):
    with pytest.raises(SpecError, match="ran on one node, 'local': leave out --node"):
        LocalTarget().log_path("r1", node="nb")
    assert os.environ["GAUDI_NB_HOME"]  # isolated
