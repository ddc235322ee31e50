"""Runs on a real Slurm cluster (tests/slurm_cluster.py: slurmctld and two slurmd on this machine), and Slurm's text.

One successful two-node run is shared by the tests that read it (the done-when of the issue); the
faults each need their own run. The fast lane keeps the cheapest real road (a two-node job cancelled
behind our back: launch, queue events, the end from Slurm's state) and what needs no run; the rest goes
to the whole suite. Every run is the torch-free loop (tests/scriptrun.py), one rank a node.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import scriptrun
from conftest import BIN, wait_for

import gaudi_nb
import gaudi_nb.api
import gaudi_nb.nodes.link
from gaudi_nb.launch.slurm import (
    START_MARK,
    Gres,
    JobRequest,
    ended_by_slurm,
    expand_hosts,
    job_state,
    parse_gres,
    parse_record,
    parse_squeue,
    visible_modules,
    warning_seconds,
)

GAUDI_NB = str(BIN / "gaudi-nb")


# -- Slurm's text: the forms Slurm prints, by version and command (SkyPilot #10283, #10522, #8399) ----------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("gpu:8", [Gres("gpu", None, 8)]),
        ("gpu:H100:8", [Gres("gpu", "H100", 8)]),  # the type's case is kept: a request must match it
        ("gres/gpu=1", [Gres("gpu", None, 1)]),
        ("gres/gpu:h100:4", [Gres("gpu", "h100", 4)]),
        ("gres/gpu:h100=4", [Gres("gpu", "h100", 4)]),
        ("gres:hpu:8", [Gres("hpu", None, 8)]),
        ("gpu:hl225:4(S:0-1)", [Gres("gpu", "hl225", 4)]),
        ("gpu:hl225:4(IDX:0-3),hpu:8", [Gres("gpu", "hl225", 4), Gres("hpu", None, 8)]),
        ("N/A", []),
        ("(null)", []),
        ("", []),
    ],
)
def test_gres_in_every_spelling(text, expected):
    assert parse_gres(text) == expected


def test_a_request_is_typed_as_the_node_names_it():
    assert Gres("gpu", "hl225", 4).request(2) == "gpu:hl225:2"  # untyped fails on typed nodes: "gpu:(null) not found"
    assert Gres("gpu", None, 8).request(8) == "gpu:8"


def test_squeue_lines_host_lists_and_scontrol_records():
    jobs = parse_squeue("12|PENDING|Resources||gaudi|gres/gpu:hl225:1\n13|RUNNING|None|n[1-2]|gaudi|N/A\n")
    assert jobs[0] == {"job_id": "12", "state": "PENDING", "reason": "Resources", "nodes": "", "partition": "gaudi", "gres": "gres/gpu:hl225:1"}
    assert expand_hosts(jobs[1]["nodes"]) == ["n1", "n2"]
    assert expand_hosts("node[01-02,07],gpu1") == ["node01", "node02", "node07", "gpu1"]
    record = parse_record("JobId=13 JobName=x JobState=CANCELLED Reason=None NodeList=n[1-2] Command=/a b/job.sh WorkDir=/w")
    assert job_state(record) == "CANCELLED" and record["Command"] == "/a b/job.sh"


def test_cards_come_from_slurms_gpus_unless_intels_fork_set_them():
    assert visible_modules({"SLURM_STEP_GPUS": "0,1", "SLURM_JOB_GPUS": "0,1,2"}) == {"HABANA_VISIBLE_MODULES": "0,1"}
    assert visible_modules({"SLURM_JOB_GPUS": "2"}) == {"HABANA_VISIBLE_MODULES": "2"}
    assert visible_modules({"SLURM_STEP_GPUS": "0", "HABANA_VISIBLE_DEVICES": "3"}) == {}
    assert visible_modules({}) == {}


def test_the_job_script_asks_for_what_the_run_needs():
    request = JobRequest("r-1", "/shared/runs/r-1", nodes=2, devices=4, partition="gaudi", gres=Gres("gpu", "hl225", 4), exclusive=True,
                         account="team", time_limit_s=7200)
    script = request.script("/env/bin/python", "/shared")
    for line in ("--nodes=2", "--ntasks-per-node=1", "--gres=gpu:hl225:4", "--exclusive", "--account=team", "--time=0-02:00:00",
                 "--signal=B:USR1@120", "--no-requeue", "--job-name=gaudi-nb-r-1", "--partition=gaudi"):
        assert f"#SBATCH {line}\n" in script
    # the time limit's warning goes to the batch shell (on node 0), whose trap asks node 0's agent to stop
    assert "warned() { /env/bin/python -m gaudi_nb.agent.commands slurm-stop --reason stopped --time-limit --nodes 2 --run-dir /shared/runs/r-1/nodes/\"$SLURMD_NODENAME\"; }\ntrap warned USR1\n" in script
    assert "srun --kill-on-bad-exit=0 --ntasks-per-node=1 /env/bin/python -m gaudi_nb.agent.commands slurm-task --run-dir /shared/runs/r-1 &\n" in script
    plain = JobRequest("r-2", "/shared/runs/r-2", nodes=1, devices=1, partition="gaudi").script("/env/bin/python", None)
    assert plain.endswith("exec srun --kill-on-bad-exit=0 --ntasks-per-node=1 /env/bin/python -m gaudi_nb.agent.commands slurm-task --run-dir /shared/runs/r-2\n")
    # --max-restarts on one node: Slurm requeues the job after a preemption or a node failure, its output appended to,
    # each start marked; the time limit's warning stops the run's one part wherever Slurm started the job
    requeued = JobRequest("r-3", "/shared/runs/r-3", nodes=1, devices=1, partition="gaudi", requeue=True, time_limit_s=60).script("/env/bin/python", None)
    assert "#SBATCH --requeue\n#SBATCH --open-mode=append\n" in requeued and "--no-requeue" not in requeued
    assert f'echo {START_MARK!r} $SLURM_JOB_ID "(restart ${{SLURM_RESTART_COUNT:-0}})"\n' in requeued
    assert "#SBATCH --time=0-00:01:00\n#SBATCH --signal=B:USR1@45\n" in requeued and "--run-dir /shared/runs/r-3/nodes/*/; }" in requeued


@pytest.mark.parametrize("limit, warning", [(45, 45), (60, 45), (90, 45), (300, 75), (600, 120), (7200, 120)])
def test_the_time_limits_warning_leaves_slurmctlds_30_s_timer_a_chance_and_the_run_time_to_checkpoint(limit, warning):
    """slurmctld sends --signal's warning from a 30 s timer: a window of 45 s or more always meets it; a quarter of the limit, at most 120 s."""
    assert warning_seconds(limit) == warning


def test_slurms_own_line_in_the_output_says_how_each_start_of_the_job_ended():
    output = (f"{START_MARK} 12 (restart 0)\n"
              "slurmstepd-n1: error: *** STEP 12.0 ON n1 CANCELLED AT 2026-12-07T23:35:28 DUE TO PREEMPTION ***\n"
              f"{START_MARK} 12 (restart 1)\nslurmstepd-n1: error: *** JOB 12 ON n1 CANCELLED AT 2026-12-07T23:40:02 DUE TO TIME LIMIT ***\n")
    assert ended_by_slurm(output, "12") == "TIMEOUT" and ended_by_slurm(output, "12", start=-2) == "PREEMPTED"
    assert ended_by_slurm(f"{START_MARK} 12 (restart 1)\n", "12") is None  # running again: the earlier end is not this start's
    assert ended_by_slurm("slurmstepd-n2: error: *** JOB 7 ON n2 CANCELLED AT 2026-12-07T23:34:30 ***\n", "7") == "CANCELLED"
    assert ended_by_slurm("*** JOB 7 ON n2 CANCELLED AT 2026-12-07T23:34:30 DUE TO JOB REQUEUE ***", "7") == "REQUEUED"
    assert ended_by_slurm("*** JOB 7 ON n2 CANCELLED AT 2026-12-07T23:34:30 DUE TO NODE FAILURE, SEE SLURMCTLD LOG FOR DETAILS ***", "7") == "NODE_FAIL"
    assert ended_by_slurm("*** JOB 8 ON n2 CANCELLED AT 2026-12-07T23:34:30 ***", "7") is None


def test_restarts_since_the_last_resume_count_against_max_restarts():
    from gaudi_nb.agent.attempts import restarts_used

    assert restarts_used([]) == 0
    marks = [{"type": "run_start"}, {"type": "restart", "cause": "crash"}, {"type": "restart", "cause": "requeue"}]
    assert restarts_used(marks) == 2
    assert restarts_used([*marks, {"type": "restart", "cause": "resume"}]) == 0  # a resume by hand gives the restarts again
    assert restarts_used([*marks, {"type": "restart", "cause": "resume"}, {"type": "restart", "cause": "requeue"}]) == 1


def _attempt_one(root, node="n1", end=None, steps=6, checkpoints=(2, 4, 6)):
    """A one-node run's part after attempt 1 (what the first start of a job left), with complete checkpoints."""
    from gaudi_nb.events import EventWriter
    from gaudi_nb.rundir import CHECKPOINT_COMPLETE, RunFolder
    from gaudi_nb.spec import RunSpec

    part = RunFolder(root / "nodes" / node)
    part.control.mkdir(parents=True)
    part.spec.write_text(RunSpec(max_steps=40, max_restarts=1, save_steps=2).model_dump_json())
    part.run.write_text(json.dumps({"run_id": "r", "node": node}))
    writer = EventWriter(part.events, "r", node=node)
    writer.emit("run_start", spec={}, command="torchrun")
    for step in range(1, steps + 1):
        writer.emit("step", step=step, loss=1.0)
    if end:
        writer.emit("run_end", status=end, steps_completed=steps)
    writer.close()
    for step in checkpoints:
        folder = part.checkpoint_path(step)
        folder.mkdir(parents=True)
        (folder / CHECKPOINT_COMPLETE).write_text("{}")
    return part


def test_a_job_slurm_started_again_goes_on_from_the_last_checkpoint_unless_the_run_had_ended_or_its_restarts_are_used(tmp_path):
    from gaudi_nb.agent.requeue import go_on
    from gaudi_nb.agent.slurm_task import part_name
    from gaudi_nb.events import read_events

    preempted = f"{START_MARK} 12 (restart 0)\n*** JOB 12 ON n1 CANCELLED AT 2026-12-07T23:35:28 DUE TO PREEMPTION ***\n{START_MARK} 12 (restart 1)\n"
    part = _attempt_one(tmp_path / "a", end="stopped")  # Slurm's SIGTERM: the agent stopped after a checkpoint
    # Slurm started the one-node job again on n2: the run keeps its one part (its events and checkpoints)
    assert part_name(tmp_path / "a", {"SLURMD_NODENAME": "n2", "SLURM_RESTART_COUNT": "1"}, ["n2"]) == "n1"
    assert part_name(tmp_path / "a", {"SLURMD_NODENAME": "n2"}, ["n2"]) == "n2"  # a first start makes its own
    assert go_on(part, "12", 1, preempted, host="n2")
    (restart,) = [e for e in read_events(part.events, 0)[0] if e["type"] == "restart"]
    assert restart["cause"] == "requeue" and restart["attempt"] == 2 and restart["from_step"] == 6 and restart["restarts_left"] == 0
    assert restart["reason"] == "Slurm job 12 PREEMPTED: Slurm started it again (restart 1, on node n2)"
    assert json.loads(part.resume_request.read_text())["checkpoint"].endswith("checkpoint-6")  # what the agent goes on from
    # started again once more: --max-restarts 1 is used; the attempt that the node lost ends the run, with Slurm's word
    assert not go_on(part, "12", 2, preempted + "slurmstepd: error: *** JOB 12 ON n2 CANCELLED AT 2026-12-07T23:40:00 ***\n", host="n1")
    end = read_events(part.events, 0)[0][-1]
    assert end["type"] == "run_end" and end["status"] == "lost" and end["attempt"] == 2, end
    assert "no restarts are left (1 of --max-restarts 1 used)" in end["reason"]
    # a run that had ended by itself stays ended, whatever Slurm does with the job
    assert not go_on(_attempt_one(tmp_path / "b", end="succeeded"), "13", 1, "", host="n1")
    # an agent killed with its node: no end, no line from slurmstepd: a node failure, from the newest complete checkpoint
    killed = _attempt_one(tmp_path / "c", checkpoints=(2, 4))
    assert go_on(killed, "14", 1, f"{START_MARK} 14 (restart 0)\n{START_MARK} 14 (restart 1)\n", host="n1")
    restart = read_events(killed.events, 0)[0][-1]
    assert restart["reason"].startswith("Slurm job 14 NODE_FAIL") and restart["from_step"] == 4


# -- a real cluster ----------------------------------------------------------------------------------------


def cli(*args, timeout=120):
    return subprocess.run([GAUDI_NB, *args], capture_output=True, text=True, timeout=timeout, env=os.environ.copy())


@pytest.fixture(scope="module")
def hpc(slurm_cluster, tmp_path_factory):
    """GAUDI_NB_HOME with the cluster attached as `hpc` (`nodes attach slurm:`), and the loop script."""
    home = tmp_path_factory.mktemp("slurm_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GAUDI_NB_HOME", str(home))
        mp.setenv("SLURM_CONF", str(slurm_cluster.conf))
        mp.setenv("GAUDI_NB_ACCELERATOR", "cpu")
        mp.delenv("GAUDI_NB_STORE_URL", raising=False)
        attached = cli("nodes", "attach", "slurm:", "--name", "hpc", "--partition", "gaudi", "--price-per-hour", "3.6", "--json")
        assert attached.returncode == 0, attached.stderr
        yield {"home": home, "record": json.loads(attached.stdout), "loop": scriptrun.write_loop(home, step_s=0.05), "cluster": slurm_cluster}


@pytest.fixture(scope="module")
def two_node_run(hpc):
    """The done-when run: `gaudi-nb train --target hpc --nodes 2 --devices 1 --max-steps 10 --json`, and what it left."""
    started = time.monotonic()
    trained = cli("train", "--target", "hpc", "--nodes", "2", "--devices", "1", "--max-steps", "10", "--script", str(hpc["loop"]), "--json")
    assert trained.returncode == 0, trained.stderr
    record = json.loads(trained.stdout)
    seconds = time.monotonic() - started
    # the run ends when its agents have ended; Slurm lets the job go a moment later (the task, srun and the batch
    # shell exit): it must leave the queue by itself, without a scancel (30 s: a loaded CI machine)
    wait_for(lambda: hpc["cluster"].squeue().strip() == "", timeout=30, poll_s=0.5, what="the job to leave the queue after the run's end")
    return {"record": record, "seconds": seconds, "squeue": hpc["cluster"].squeue(),
            "shown": json.loads(cli("show", record["run_id"], "--json").stdout),
            "events": [json.loads(line) for line in (hpc["home"] / "runs" / record["run_id"] / "events.jsonl").read_text().splitlines()]}


def test_attach_records_the_partition_its_nodes_gres_and_cpus(hpc):
    slurm = hpc["record"]["resources"]["slurm"]
    assert slurm["partition"] == "gaudi" and slurm["gres"] == "gpu:hl225:4"
    assert [(n["name"], n["gres"], n["cpus"]) for n in slurm["nodes"]] == [("n1", {"name": "gpu", "type": "hl225", "count": 4}, 4),
                                                                          ("n2", {"name": "gpu", "type": "hl225", "count": 4}, 4)]


@pytest.mark.slow
def test_nodes_list_and_check_show_the_clusters_nodes_states_and_gres(hpc):
    listed = cli("nodes", "list", "--no-refresh")
    assert listed.returncode == 0 and "hpc" in listed.stdout and "slurm:" in listed.stdout
    checked = cli("nodes", "check", "hpc")
    assert checked.returncode == 0, checked.stderr
    assert "n1" in checked.stdout and "n2" in checked.stdout and "gpu:hl225:4" in checked.stdout


@pytest.mark.slow
def test_an_unknown_partition_is_one_line_and_nothing_attached(hpc):
    refused = cli("nodes", "attach", "slurm:", "--name", "other", "--partition", "nope")
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 2 and len(lines) == 1 and "no partition 'nope'" in lines[0] and "gaudi" in lines[0]
    assert "other" not in cli("nodes", "list", "--no-refresh").stdout


def test_more_cards_than_a_node_has_is_slurms_one_line_and_nothing_queued(hpc):
    before = len(gaudi_nb.runs())
    refused = cli("train", "--target", "hpc", "--nodes", "2", "--devices", "5", "--max-steps", "10", "--script", str(hpc["loop"]))
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr
    assert "Requested node configuration is not available" in lines[0]
    assert hpc["cluster"].squeue().strip() == ""
    assert len(gaudi_nb.runs()) == before  # nothing recorded


@pytest.mark.slow
def test_a_two_node_run_succeeds_with_every_step_once_from_both_nodes(two_node_run):
    record, events = two_node_run["record"], two_node_run["events"]
    assert record["status"] == "succeeded", record["exit"]
    steps = [e["step"] for e in events if e["type"] == "step"]
    assert sorted(steps) == list(range(1, 11)) and record["steps_completed"] == 10
    nodes_heard = {e["node"] for e in events if e["type"] in ("step", "telemetry", "cost")}
    assert {"n1", "n2"} <= nodes_heard  # events carry the Slurm node name
    assert two_node_run["squeue"].strip() == ""  # the job left the queue
    assert two_node_run["shown"]["slurm"]["job_id"] == record["slurm"]["job_id"]
    assert record["slurm"]["partition"] == "gaudi" and record["slurm"]["nodes"] == ["n1", "n2"]
    queue = [e for e in events if e["type"] == "job"]
    # an idle cluster may start the job before the client first asks (a job pending behind another: its own test)
    assert queue[0]["state"] in ("PENDING", "RUNNING") and any(e["state"] == "RUNNING" and e["nodes"] == ["n1", "n2"] for e in queue)


@pytest.mark.slow
def test_queue_time_is_not_billed(two_node_run):
    """Spend is a node-hour's price × nodes × time running: each agent meters its own node from its start."""
    record, events = two_node_run["record"], two_node_run["events"]
    latest = {}
    for e in events:
        if e["type"] == "cost":
            latest[e["node"]] = e
    assert set(latest) == {"n1", "n2"} and all(e["price_per_hour"] == 3.6 for e in latest.values())
    running_s = sum(e["elapsed_s"] for e in latest.values())
    assert record["cost"]["usd"] == pytest.approx(3.6 * running_s / 3600, rel=0.05)


def _start(hpc, max_steps=100000, nodes=2):
    return gaudi_nb.train(target="hpc", nodes=nodes, devices=1, script=str(hpc["loop"]), max_steps=max_steps).run_id


def _record(run_id):
    return gaudi_nb.get_run(run_id).record()  # in this process: a CLI start costs seconds on a loaded machine


def _stop(run_id):
    """Ask the stop; a script rank started directly may finish its checkpoint-then-stop before the call returns ("ended: stopped")."""
    answer = gaudi_nb.api.stop(run_id)
    assert answer.outcome == "requested" or (answer.outcome, answer.status) == ("ended", "stopped"), answer


def test_scancel_behind_our_back_ends_the_run_within_30_s_with_cancelled(hpc):
    run_id = _start(hpc)
    wait_for(lambda: _record(run_id)["status"] in ("starting", "running"), timeout=90, what="the agents to start")
    job_id = _record(run_id)["slurm"]["job_id"]
    subprocess.run(["scancel", job_id], check=True, env=os.environ.copy())
    cancelled = time.monotonic()
    record = wait_for(lambda: (r := _record(run_id))["status"] in ("failed", "lost") and r, timeout=30, what="the run's end")
    assert time.monotonic() - cancelled < 30
    assert "CANCELLED" in record["exit"]["reason"] and job_id in record["exit"]["reason"]
    wait_for(lambda: hpc["cluster"].squeue().strip() == "", timeout=30, what="the job to leave the queue")


def crash_once_loop(folder):
    """The loop whose first attempt's rank dies at step 3, after its checkpoint at step 2 (the next attempt goes on from it)."""
    path = folder / "crash_once.py"
    path.write_text(scriptrun.LOOP.format(step_s=0.05).replace("    time.sleep(STEP_S)\n", "    time.sleep(STEP_S)\n    if step == 3 and resume_from() is None:\n        raise SystemExit(3)\n"))
    return path


@pytest.mark.slow
def test_a_rank_that_fails_once_restarts_from_its_checkpoint_and_the_run_succeeds_on_attempt_2(hpc):
    run = gaudi_nb.train(target="hpc", nodes=1, devices=1, script=str(crash_once_loop(hpc["home"])), max_steps=6, save_steps=2, max_restarts=1)
    record = wait_for(lambda: (r := _record(run.run_id))["status"] in ("succeeded", "failed", "lost") and r, timeout=120, what="the run's end")
    assert record["status"] == "succeeded" and record["attempt"] == 2, record["exit"]
    restart = run.events(types=["restart"])[0]
    assert restart["cause"] == "crash" and restart["from_step"] == 2 and restart["checkpoint"].endswith("checkpoint-2")
    steps = [e["step"] for e in run.events(types=["step"])]
    assert steps == [1, 2, 3, 4, 5, 6]  # attempt 1 died before step 3; attempt 2 went on from its checkpoint at 2
    wait_for(lambda: hpc["cluster"].squeue().strip() == "", timeout=30, what="the job to leave the queue")


@pytest.mark.slow
def test_gaudi_nb_resume_submits_a_new_job_that_goes_on_from_the_last_checkpoint(hpc):
    run = gaudi_nb.train(target="hpc", nodes=1, devices=1, script=str(crash_once_loop(hpc["home"])), max_steps=6, save_steps=2)
    failed = wait_for(lambda: (r := _record(run.run_id))["status"] in ("succeeded", "failed", "lost") and r, timeout=120, what="attempt 1's end")
    assert failed["status"] == "failed" and failed["steps_completed"] == 2, failed["exit"]
    first_job = failed["slurm"]["job_id"]
    resumed = cli("resume", run.run_id)
    assert resumed.returncode == 0, resumed.stderr
    record = wait_for(lambda: (r := _record(run.run_id))["status"] in ("succeeded", "failed", "lost") and r, timeout=120, what="attempt 2's end")
    assert record["status"] == "succeeded" and record["attempt"] == 2, record["exit"]
    assert record["slurm"]["job_id"] != first_job and record["slurm"]["nodes"] == failed["slurm"]["nodes"]  # a new job, on the node with the checkpoints
    restart = run.events(types=["restart"])[0]
    assert restart["cause"] == "resume" and restart["from_step"] == 2
    assert [e["step"] for e in run.events(types=["step"])] == [1, 2, 3, 4, 5, 6]
    assert len(run.events(types=["run_end"])) == 2  # attempt 1's end, then the run's
    wait_for(lambda: hpc["cluster"].squeue().strip() == "", timeout=30, what="the job to leave the queue")


def _job_state(hpc, job_id):
    return subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, env=os.environ.copy()).stdout.strip()


@pytest.mark.slow
def test_a_preempted_job_is_requeued_by_slurm_and_the_run_goes_on_from_its_checkpoint_as_its_next_attempt(hpc):
    """--max-restarts 1 on one node: `--requeue`; a job of the urgent partition preempts it, Slurm requeues it, and its task goes on
    from the last complete checkpoint as attempt 2 (no client needed: the job itself decides), under the same job id."""
    folder = hpc["home"] / "requeue"
    folder.mkdir(exist_ok=True)
    run = gaudi_nb.train(target="hpc", nodes=1, devices=1, script=str(scriptrun.write_loop(folder, step_s=0.15)), max_steps=50, save_steps=2, max_restarts=1)
    wait_for(lambda: _record(run.run_id)["steps_completed"] >= 4, timeout=90, what="a few steps and a checkpoint")
    job_id = _record(run.run_id)["slurm"]["job_id"]
    hpc["cluster"].preempt(seconds=1)
    # Slurm holds a requeued job for its credential's lifetime (cred_expire, 120 s by default) as BeginTime; released here at once
    waiting = wait_for(lambda: (r := _record(run.run_id))["status"] == "pending" and r["queued"] and r, timeout=30, what="the run pending again after the preemption")
    assert waiting["queued"]["short"] in ("BeginTime", "Resources", "Priority"), waiting
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], check=True, env=os.environ.copy())
    record = wait_for(lambda: (r := _record(run.run_id))["status"] in ("succeeded", "failed", "lost", "stopped") and r, timeout=90, what="attempt 2's end")
    assert record["status"] == "succeeded" and record["attempt"] == 2, record["exit"]
    assert record["slurm"]["job_id"] == job_id  # Slurm's requeue: the same job, started again
    (restart,) = run.events(types=["restart"])
    assert restart["cause"] == "requeue" and f"Slurm job {job_id} PREEMPTED" in restart["reason"] and restart["restarts_left"] == 0, restart
    assert restart["from_step"] >= 2 and restart["checkpoint"].endswith(f"checkpoint-{restart['from_step']}")
    events = run.events()
    steps = [(e.get("attempt") or 1, e["step"]) for e in events if e["type"] == "step"]
    first = [step for attempt, step in steps if attempt == 1]
    assert first == list(range(1, len(first) + 1)) and restart["from_step"] <= first[-1]  # attempt 1 went as far as the preemption
    assert [step for attempt, step in steps if attempt == 2] == list(range(restart["from_step"] + 1, 51))  # attempt 2 from its checkpoint
    assert record["steps_completed"] == 50 and len([e for e in events if e["type"] == "run_end"]) == 1  # one stream, one end
    # the queue time between the attempts is not billed: the agents metered their own running time only
    gap = restart["t"] - max(e["t"] for e in events if e["type"] == "cost" and e["t"] < restart["t"])
    assert gap > 1 and record["cost"]["elapsed_s"] < (events[-1]["t"] - events[0]["t"]) - gap + 1
    wait_for(lambda: hpc["cluster"].squeue().strip() == "", timeout=30, what="the job to leave the queue")


@pytest.mark.slow
def test_a_real_one_minute_time_limit_checkpoints_before_slurms_kill_and_resume_goes_on_from_it(hpc):
    """--time-limit 1m: Slurm's own warning (--signal=B:USR1@45, from slurmctld's 30 s timer) stops the run with a
    checkpoint before the limit; the job ends by itself (COMPLETED, not TIMEOUT); `gaudi-nb resume` goes on from it."""
    run = gaudi_nb.train(target="hpc", nodes=1, devices=1, script=str(hpc["loop"]), max_steps=100000, time_limit="1m")
    wait_for(lambda: _record(run.run_id)["steps_completed"] > 0, timeout=60, what="a step")
    started = time.monotonic()
    record = wait_for(lambda: (r := _record(run.run_id))["status"] in ("stopped", "failed", "lost", "succeeded") and r, timeout=75, what="the stop at the warning")
    assert record["status"] == "stopped" and "time limit" in record["exit"]["reason"], record["exit"]
    assert record["exit"]["reason"] == "stopped before Slurm's time limit: stopped after a checkpoint"
    assert time.monotonic() - started < 60  # Slurm's kill comes at 60 s after the job's start, or later
    stopped_at = record["steps_completed"]
    assert record["checkpoints"][-1]["step"] == stopped_at and record["checkpoints"][-1]["reason"] == "stopped"
    job_id = record["slurm"]["job_id"]
    wait_for(lambda: job_state(parse_record(subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True,
                                                           env=os.environ.copy()).stdout)) == "COMPLETED", timeout=30, what="the job's own end")
    resumed = cli("resume", run.run_id, "--max-steps", str(stopped_at + 3), "--json")
    assert resumed.returncode == 0, resumed.stderr
    record = json.loads(resumed.stdout)
    assert record["status"] == "succeeded" and record["attempt"] == 2 and record["steps_completed"] == stopped_at + 3, record["exit"]
    assert [e["step"] for e in run.events(types=["step"]) if (e.get("attempt") or 1) == 2] == [stopped_at + 1, stopped_at + 2, stopped_at + 3]
    wait_for(lambda: hpc["cluster"].squeue().strip() == "", timeout=30, what="the job to leave the queue")


@pytest.mark.slow
def test_a_batch_notebook_runs_as_a_one_node_job_with_the_cell_events_parameters_and_manifest_of_a_local_batch(hpc):
    from pathlib import Path

    notebook = Path(__file__).parent / "fixtures" / "notebooks" / "good.ipynb"
    done = cli("batch", str(notebook), "--target", "hpc", "-p", "epochs", "3", "--json", timeout=180)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["status"] == "succeeded" and record["target"] == "hpc", record
    assert "cell 2" in done.stderr and "succeeded" in done.stderr  # the CLI's cell lines, as for a local batch
    events = gaudi_nb.get_run(record["run_id"]).events()
    queue = [e for e in events if e["type"] == "job"]
    assert queue and queue[0]["scheduler"] == "slurm" and queue[0]["job_id"]
    ends = [e for e in events if e["type"] == "cell" and e["phase"] == "end"]
    assert len(ends) == 4 and {e["node"] for e in ends} <= {"n1", "n2"}  # every code cell (papermill's injected one too), on a Slurm node
    run_dir = hpc["home"] / "runs" / record["run_id"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["parameters_given"] == {"epochs": 3}  # typed by the parameters cell, as a local batch records it
    output = json.loads((run_dir / "output.ipynb").read_text())
    assert "tiny 2" in json.dumps(output["cells"])  # the third epoch printed: the parameter reached the kernel
    wait_for(lambda: hpc["cluster"].squeue().strip() == "", timeout=30, what="the job to leave the queue")


@pytest.mark.slow
def test_a_stop_across_two_nodes_ends_both_at_the_same_step_with_a_checkpoint(hpc):
    """Node 0's agent picks the step; node 1's agent writes it into its part, where the script's should_stop reads it."""
    run_id = _start(hpc)
    wait_for(lambda: _record(run_id)["steps_completed"] >= 3, timeout=90, what="a few steps on both nodes")
    _stop(run_id)
    record = wait_for(lambda: (r := _record(run_id))["status"] in ("stopped", "failed", "lost") and r, timeout=60, what="the stop")
    assert record["status"] == "stopped", record["exit"]
    nodes = hpc["home"] / "runs" / run_id / "nodes"
    last = {name: max(int(p.name.split("-")[-1]) for p in (nodes / name / "checkpoints").glob("checkpoint-*")) for name in ("n1", "n2")}
    stop_at = json.loads((nodes / "n1" / "control" / "stop_at.json").read_text())["step"]
    assert last == {"n1": stop_at, "n2": stop_at} and record["steps_completed"] == stop_at  # both nodes stopped after the agreed step
    assert (nodes / "n2" / "checkpoints" / f"checkpoint-{stop_at}" / "state.txt").read_text() == str(stop_at)
    wait_for(lambda: hpc["cluster"].squeue().strip() == "", timeout=30, what="the job to leave the queue")


@pytest.mark.slow
def test_a_job_behind_another_is_pending_with_slurms_reason_then_runs_and_stops(hpc):
    from gaudi_nb.notebook.panel import header_html
    from gaudi_nb.notebook.panel_state import PanelState
    from gaudi_nb.runs_table import row_cells, run_row

    blocker = subprocess.run(["sbatch", "--parsable", "-N2", "--exclusive", "-p", "gaudi", "--output=/dev/null", "--wrap", "sleep 120"],
                             capture_output=True, text=True, check=True, env=os.environ.copy()).stdout.strip()
    try:
        run_id = _start(hpc, nodes=1)
        record = wait_for(lambda: (r := _record(run_id))["queued"] and r, timeout=30, what="a pending reason")
        assert record["status"] == "pending" and record["queued"]["short"] in ("Resources", "Priority")
        assert row_cells(run_row(record))[1] == f"pending: {record['queued']['short']}"  # gaudi-nb runs, the dashboard's table
        panel = PanelState(run_id)
        panel.apply(gaudi_nb.get_run(run_id).events())
        assert f"pending: {record['queued']['short']}" in header_html(panel)  # the notebook panel
        assert record["cost"]["usd"] is None  # nothing metered while queued
    finally:
        subprocess.run(["scancel", blocker], env=os.environ.copy())
    wait_for(lambda: _record(run_id)["steps_completed"] > 0, timeout=90, what="a step once the blocker left")
    assert _record(run_id)["queued"] is None
    _stop(run_id)
    record = wait_for(lambda: (r := _record(run_id))["status"] == "stopped" and r, timeout=60, what="the stop")
    assert record["checkpoints"] and record["checkpoints"][-1]["reason"] == "stopped"
    wait_for(lambda: hpc["cluster"].squeue().strip() == "", timeout=30, what="the job to leave the queue")


@pytest.mark.slow
def test_a_login_node_over_ssh_attaches_and_runs_the_job(hpc, tmp_path, monkeypatch):
    """slurm://USER@LOGIN: Slurm's commands through the loopback sshd, whose sessions see this cluster's SLURM_CONF."""
    from pathlib import Path

    import sshd as sshd_module

    if sshd_module.available():
        pytest.skip(sshd_module.available())

    class LoginSshd(sshd_module.Sshd):
        def _write_config(self) -> None:
            super()._write_config()
            text = self.config.read_text().replace("SetEnv GAUDI_NB_HOME=", f"SetEnv SLURM_CONF={hpc['cluster'].conf} GAUDI_NB_HOME=")
            self.config.write_text(text)

    login = LoginSshd(tmp_path / "login", node_home=hpc["home"] / "login_home").start()
    try:
        monkeypatch.setenv("HOME", str(login.client_home(tmp_path / "client_home")))
        monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
        monkeypatch.setenv("GAUDI_NB_HOME", str(tmp_path / "client_gaudi_home"))
        monkeypatch.delenv("SLURM_CONF")  # this machine is not the login node now: every Slurm command goes over SSH
        url = f"slurm://{login.user}@127.0.0.1:{login.port}"
        record = gaudi_nb.attach(url, name="hpc-ssh", partition="gaudi", python=sys.executable, run_root=str(hpc["home"] / "shared"))
        assert [n["name"] for n in record["resources"]["slurm"]["nodes"]] == ["n1", "n2"]
        # --time-limit: --time with a warning signal; the warning (sent here at once, as Slurm sends it before the limit)
        # takes the agent's checkpoint-then-stop road
        run = gaudi_nb.train(target="hpc-ssh", nodes=1, devices=1, script=str(hpc["loop"]), max_steps=100000, time_limit="10m")
        wait_for(lambda: run.record()["steps_completed"] > 0, timeout=90, what="a step over SSH")
        record = run.record()
        job_script = (hpc["home"] / "shared" / "runs" / run.run_id / "job" / "job.sh").read_text()
        assert "#SBATCH --time=0-00:10:00\n" in job_script and "#SBATCH --signal=B:USR1@120\n" in job_script
        subprocess.run(["scancel", "--batch", "-s", "USR1", record["slurm"]["job_id"]], check=True, env={**os.environ, "SLURM_CONF": str(hpc["cluster"].conf)})
        record = wait_for(lambda: (r := run.record())["status"] == "stopped" and r, timeout=60, what="the stop at the warning")
        assert record["checkpoints"][-1]["reason"] == "stopped" and record["run_dir"].startswith(str(hpc["home"] / "shared"))
        assert "time limit" in record["exit"]["reason"]
        # a batch notebook through the login node: the job gets its own run folder on the cluster's filesystem, the
        # notebook sent there; its cell events come back as they are written, its output notebook and manifest at the end
        notebook = Path(__file__).parent / "fixtures" / "notebooks" / "good.ipynb"
        cells = []
        done = gaudi_nb.batch(str(notebook), {"epochs": 3}, target="hpc-ssh", on_event=cells.append)
        assert done.record()["status"] == "succeeded", done.record()["exit"]
        ends = [e for e in cells if e["type"] == "cell" and e["phase"] == "end"]
        assert len(ends) == 4 and {e["node"] for e in ends} <= {"n1", "n2"}  # live, from a Slurm node
        here = tmp_path / "client_gaudi_home" / "runs" / done.run_id
        assert "tiny 2" in json.dumps(json.loads((here / "output.ipynb").read_text())["cells"])  # the parameter reached the kernel there
        assert json.loads((here / "manifest.json").read_text())["parameters_given"] == {"epochs": 3}
        assert (hpc["home"] / "shared" / "runs" / done.run_id / "job" / "good.ipynb").exists()
    finally:
        login.stop()
        gaudi_nb.nodes.link.links().drop("hpc-ssh")


def test_a_time_limit_is_a_slurm_jobs_and_reads_as_slurm_writes_it(gaudi_home):
    from gaudi_nb.errors import SpecError
    from gaudi_nb.spec import time_limit_seconds

    assert [time_limit_seconds(t) for t in ("2h", "90m", "45s", "1.5h", "1-00:00:00", "00:10:00")] == [7200, 5400, 45, 5400, 86400, 600]
    with pytest.raises(SpecError, match="is not a time limit: use 2h, 90m"):
        gaudi_nb.train(time_limit="2 weeks", max_steps=1)
    with pytest.raises(SpecError, match="time_limit: --time-limit is a Slurm job's limit"):
        gaudi_nb.train(time_limit="2h", max_steps=1)
    assert not (gaudi_home / "runs").exists()


def test_the_fleet_page_shows_a_clusters_nodes_with_state_and_gres_and_never_bills_it_idle():
    from gaudi_nb.dashboard.fleet import fleet_frame

    cluster = {"name": "hpc", "url": "slurm:", "price_per_hour": 32.0, "accelerator": "hpu", "device_count": 4, "resources": {"slurm": {
        "partition": "gaudi", "nodes": [{"name": "n1", "state": "idle", "gres": {"name": "gpu", "type": "hl225", "count": 4}, "cpus": 4, "addr": "10.0.0.1"},
                                        {"name": "n2", "state": "mixed", "gres": {"name": "gpu", "type": "hl225", "count": 4}, "cpus": 4, "addr": "10.0.0.2"}]}}}
    fleet = fleet_frame([cluster], [], {}, now=1000.0).set_index("node")
    assert fleet.loc["n1", "address"] == "hpc (idle)" and fleet.loc["n2", "address"] == "hpc (mixed)"
    assert fleet.loc["n1", "accelerator"] == "gpu:hl225:4" and fleet.loc["n1", "devices"] == 4
    assert "hpc" not in fleet.index and "costs money" not in " ".join(fleet["state"])  # a cluster is paid per job's node-hours


def test_the_sidebar_lists_the_cluster_with_its_runs():
    from gaudi_nb.jupyter_server_ext.payloads import nodes

    cluster = {"name": "hpc", "url": "slurm:", "accelerator": "hpu", "device_count": 4, "price_per_hour": 32.0}
    rows = [{"run_id": "r1", "status": "pending", "target": "hpc", "accelerator": None}, {"run_id": "r0", "status": "succeeded", "target": "hpc", "accelerator": "cpu"}]
    (listed,) = nodes(rows, [cluster], {}, now=1000.0)
    assert listed["name"] == "hpc" and listed["url"] == "slurm:" and listed["active_runs"] == ["r1"]
    assert listed["usd"] is None  # its runs meter themselves: node-hours while running, never the queue
