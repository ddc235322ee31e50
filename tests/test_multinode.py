"""One run across two nodes: two network namespaces with an sshd each, attached as two nodes, a real
torchrun across them (static rendezvous, gloo); and the pure parts (the merge, the stop step, the
launch plans, the combined end and cost) without them."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from conftest import BIN

import gaudi_nb
from gaudi_nb.agent.placement import cluster_plan
from gaudi_nb.agent.stop import stop_step
from gaudi_nb.errors import SpecError
from gaudi_nb.nodes.link import MergedStream, combine_ends
from gaudi_nb.paths import run_dir as local_run_dir
from gaudi_nb.rundir import RunFolder, node_run_folders
from gaudi_nb.spec import RunSpec, parse_target
from gaudi_nb.summary import empty_summary, fold

GAUDI_NB = str(BIN / "gaudi-nb")
WORKER = ["-m", "gaudi_nb.worker", "--run-dir", "/runs/r1"]


# -- the target form -----------------------------------------------------------------------------------


def test_several_node_names_are_one_target():
    assert parse_target("na,nb").kind == "nodes"
    assert parse_target("na, nb").text == "na,nb"
    assert RunSpec(target="na,nb", nodes=2).target == "na,nb"
    with pytest.raises(ValueError, match="named twice"):
        parse_target("na,na")
    with pytest.raises(ValueError, match="'local' cannot be one of several"):
        parse_target("local,na")


def test_the_node_count_must_match_the_names(gaudi_home):
    with pytest.raises(SpecError, match="give --nodes 2"):
        gaudi_nb.train(target="na,nb", nodes=1)


# -- the launch plans (pure) --------------------------------------------------------------------------

CLUSTER = {"nodes": ["na", "nb"], "master_addr": "10.200.0.1", "master_port": 29600, "control_port": 29601, "token": "t", "hosts": ["10.200.0.1", "10.200.0.2"]}


def test_torchrun_across_nodes_is_a_static_rendezvous_at_node_0():
    spec = RunSpec(nodes=2, devices=1)
    for rank in (0, 1):
        plan = cluster_plan(spec, {**CLUSTER, "node_rank": rank}, WORKER, python="py", accelerator="cpu", launcher="torchrun",
                            local_addr=f"10.200.0.{rank + 1}", ifname=f"veth{rank}", environ={}, cpus=2)
        assert plan is not None
        assert plan.argv == ["py", "-u", "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank), "--nproc-per-node", "1",
                             "--master-addr", "10.200.0.1", "--master-port", "29600", "--local-addr", f"10.200.0.{rank + 1}", *WORKER]
        assert plan.env["GLOO_SOCKET_IFNAME"] == f"veth{rank}"  # the host name maps to 127.0.0.1: gloo is told the interface
    cuda = cluster_plan(spec, {**CLUSTER, "node_rank": 1}, WORKER, python="py", accelerator="cuda", launcher="torchrun", ifname="eth1", environ={})
    assert cuda is not None and cuda.env["NCCL_SOCKET_IFNAME"] == "eth1"


def test_gaudi_across_nodes_is_deepspeed_from_node_0_with_a_hostfile(tmp_path, monkeypatch):
    # Intel's DeepSpeed fork, as its metadata reads (no Gaudi card here: the plan is built, not run)
    info = tmp_path / "deepspeed-0.16.1+hpu.synapse.v1.24.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: deepspeed\nVersion: 0.16.1+hpu.synapse.v1.24.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = RunSpec(nodes=2, devices=8, launcher="auto")
    plan = cluster_plan(spec, {**CLUSTER, "node_rank": 0}, WORKER, python="py", accelerator="hpu", launcher="deepspeed", environ={}, free_modules=list(range(8)))
    assert plan is not None
    assert plan.argv == ["deepspeed", "--hostfile", "hostfile", "--master_addr", "10.200.0.1", "--no_local_rank", "--master_port", "29600",
                         "--module", "gaudi_nb.worker", "--run-dir", "/runs/r1"]
    assert plan.files["hostfile"] == "10.200.0.1 slots=8\n10.200.0.2 slots=8\n"
    assert plan.files[".deepspeed_env"].startswith("PT_HPU_LAZY_MODE=0\n")  # the environment every node's ranks get
    # node 1's ranks are started by node 0's deepspeed over ssh: its agent launches nothing, it meters and samples
    assert cluster_plan(spec, {**CLUSTER, "node_rank": 1}, WORKER, python="py", accelerator="hpu", launcher="deepspeed", environ={}) is None


def test_the_stop_step_is_ahead_by_the_margin():
    assert stop_step(10, 0.5, 1000, margin_s=1) == 10 + 3 + 2
    assert stop_step(10, 3.0, 1000, margin_s=1) == 10 + 3 + 1
    assert stop_step(10, None, 1000) == 15  # no step time yet
    assert stop_step(10, 0.01, 50, margin_s=1) == 50  # never past the last step


def test_every_rank_of_the_built_in_trainer_stops_at_the_step_its_agent_wrote(tmp_path):
    """Across nodes no rank decides: each node's agent writes the agreed step (control/stop_at.json), and the
    trainers' callbacks, rank 0's and the others', stop after it with its reason and save there."""
    from gaudi_nb.private import write_atomic
    from gaudi_nb.rundir import RunFolder
    from gaudi_nb.worker.callback import RankProgress

    folder = RunFolder(tmp_path)
    folder.control.mkdir()
    ranks = [RankProgress(None, folder, tokens_per_step=64, samples_per_step=2, warmup_steps=0, max_steps=500, memory_stats=dict, is_main=main)
             for main in (True, False)]
    assert [rank.step_ended(3) for rank in ranks] == [(False, False)] * 2
    write_atomic(folder.stop_at, json.dumps({"step": 6, "reason": "budget_exceeded"}))
    assert [rank.step_ended(4) for rank in ranks] == [(False, False)] * 2
    assert [rank.step_ended(6) for rank in ranks] == [(True, True)] * 2  # a checkpoint, then the end
    assert {(rank.stop_at, rank.stop_reason) for rank in ranks} == {(6, "budget_exceeded")}


# -- the merged stream, the combined end, the cost ---------------------------------------------------


def _line(node, kind, t, **fields):
    return json.dumps({"v": 1, "type": kind, "t": t, "run_id": "r", "node": node, "rank": None, **fields}, separators=(",", ":")) + "\n"


def _append(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(text)


def test_the_merge_survives_a_crash_between_append_and_commit_and_a_torn_line(tmp_path):
    stream = MergedStream(tmp_path, ["na", "nb"], "r")
    _append(stream.node_events("na"), _line("na", "run_start", 1.0, command="x", spec={}) + _line("na", "cost", 2.0, usd=1.0))
    _append(stream.node_events("nb"), _line("nb", "run_start", 1.5, command="y", spec={}) + _line("nb", "cost", 2.5, usd=2.0) + '{"v":1,"ty')
    stream.merge()
    first = stream.events.read_bytes()
    kinds = [(e["node"], e["type"]) for e in map(json.loads, first.splitlines())]
    assert kinds == [("na", "run_start"), ("nb", "log"), ("na", "cost"), ("nb", "cost")]  # by time; nb's run_start is a log
    committed = stream.state_path.read_text()

    # a pass appends and dies before its commit, the last line torn
    _append(stream.node_events("na"), _line("na", "cost", 3.0, usd=1.5))
    stream.merge()
    stream.state_path.write_text(committed)
    with open(stream.events, "ab") as fh:
        fh.write(b'{"v":1,"type":"cost","t":9')
    _append(stream.node_events("nb"), 'pe":"cost","t":3.5,"run_id":"r","node":"nb","rank":null,"usd":2.5}\n')
    stream.merge()
    events = [json.loads(line) for line in stream.events.read_bytes().splitlines()]
    assert [(e["node"], e["type"], e["t"]) for e in events[4:]] == [("na", "cost", 3.0), ("nb", "cost", 3.5)]  # once each, nothing torn

    # each node's run_end is a log line; the run's one run_end comes once both have ended
    _append(stream.node_events("na"), _line("na", "run_end", 4.0, status="stopped", reason="stopped on request", usd=2.0, steps_completed=7, exit_code=0))
    assert not stream.merge()["final"]
    _append(stream.node_events("nb"), _line("nb", "run_end", 4.2, status="stopped", reason="stopped on request", usd=3.0, steps_completed=0, exit_code=0))
    assert stream.merge()["final"]
    stream.merge()
    events = [json.loads(line) for line in stream.events.read_bytes().splitlines()]
    ends = [e for e in events if e["type"] == "run_end"]
    assert len(ends) == 1 and ends[0] is events[-1]
    assert ends[0]["status"] == "stopped" and ends[0]["usd"] == 5.0 and ends[0]["steps_completed"] == 7
    assert [e["node_end"]["status"] for e in events if "node_end" in e] == ["stopped", "stopped"]


def test_a_nodes_restart_takes_back_its_end_and_a_held_end_waits_for_the_scheduler(tmp_path):
    """Slurm's requeue (or a resume): the node's end of attempt 1, then its `restart`; the run's one end is attempt 2's,
    and while the scheduler may start the job again (may_end=False) the run's end is held back."""
    stream = MergedStream(tmp_path, ["n1"], "r")
    _append(stream.node_events("n1"), _line("n1", "run_start", 1.0, command="x", spec={})
            + _line("n1", "run_end", 2.0, status="stopped", reason="stopped on request", usd=1.0, steps_completed=6, exit_code=0))
    state = stream.merge(may_end=False)
    assert not state["final"] and "n1" in state["ends"]  # the node ended; the run's end waits
    _append(stream.node_events("n1"), _line("n1", "restart", 3.0, attempt=2, cause="requeue", from_step=6))
    assert stream.merge(may_end=True)["ends"] == {}  # the restart took the end back: nothing to end the run with
    _append(stream.node_events("n1"), _line("n1", "run_end", 4.0, status="succeeded", usd=2.0, steps_completed=10, exit_code=0, attempt=2))
    assert stream.merge()["final"]
    events = [json.loads(line) for line in stream.events.read_bytes().splitlines()]
    ends = [e for e in events if e["type"] == "run_end"]
    assert len(ends) == 1 and ends[0]["status"] == "succeeded" and ends[0]["steps_completed"] == 10
    assert [e["type"] for e in events] == ["run_start", "log", "restart", "log", "run_end"]


def test_the_run_ends_as_its_worst_node_and_the_cause_speaks():
    ends = {
        "na": {"status": "failed", "reason": "RuntimeError: connection reset by peer", "t": 12.0, "usd": 1.0},
        "nb": {"status": "lost", "reason": "its agent (pid 7) stopped beating", "t": 11.0, "usd": None},
    }
    end = combine_ends(ends, ["na", "nb"])
    assert end["status"] == "lost" and end["reason"].startswith("node nb: its agent") and end["usd"] is None
    both_failed = combine_ends({"na": {"status": "failed", "reason": "echo", "t": 5.0}, "nb": {"status": "failed", "reason": "cause", "t": 4.0}}, ["na", "nb"])
    assert both_failed["reason"] == "node nb: cause"  # the first to fail
    well = combine_ends({"na": {"status": "succeeded", "t": 1, "usd": 1.0, "steps_completed": 5}, "nb": {"status": "succeeded", "t": 2, "usd": 1.5}}, ["na", "nb"])
    assert well["status"] == "succeeded" and well["reason"] is None and well["usd"] == 2.5 and well["steps_completed"] == 5


def test_the_cost_is_the_sum_of_each_nodes_latest():
    s = empty_summary("r")
    s = fold(s, [{"type": "run_start", "t": 0, "node": "na", "spec": {"nodes": 2, "max_steps": 10}, "price_per_hour": 36.0}])
    s = fold(s, [{"type": "cost", "t": 1, "node": "na", "usd": 0.01, "elapsed_s": 1, "nodes": 1, "price_per_hour": 36.0},
                 {"type": "cost", "t": 1, "node": "nb", "usd": 0.005, "elapsed_s": 0.5, "nodes": 1, "price_per_hour": 36.0},
                 {"type": "cost", "t": 2, "node": "na", "usd": 0.02, "elapsed_s": 2, "nodes": 1, "price_per_hour": 36.0}])
    assert s["cost"]["usd"] == pytest.approx(0.025) and s["cost"]["elapsed_s"] == 2 and s["cost"]["nodes"] == 2


# -- where each node keeps its part of a run ---------------------------------------------------------


def test_each_node_has_its_own_folder_under_the_runs_and_a_node_finds_its_own(tmp_path):
    from gaudi_nb.targets.ssh import SshNode, SshNodes

    record = {"name": "na", "home": "/shared/home"}
    assert SshNode("na").folder_on(record, "r1") == "/shared/home/runs/r1"
    assert SshNodes("na,nb").folder_on(record, "r1") == "/shared/home/runs/r1/nodes/na"
    assert SshNodes("na,nb").folder_on({**record, "name": "nb"}, "r1") != SshNodes("na,nb").folder_on(record, "r1")
    # what a node's watchdog sees in one shared home: each node's part of a run across nodes, and a one-node run
    runs = tmp_path / "runs"
    for part in ("r1/nodes/na", "r1/nodes/nb", "r2"):
        RunFolder(runs / part).create().run.write_text("{}")
    (runs / "r3" / "nodes" / "na").mkdir(parents=True)  # a client's mirror of a run across nodes: its own run.json on top
    (runs / "r3" / "run.json").write_text("{}")
    assert [name for name, _ in node_run_folders(runs)] == ["r1/nodes/na", "r1/nodes/nb", "r2", "r3"]


# -- two real nodes ----------------------------------------------------------------------------------

SHARED_SCRIPT = """
import torch
import torch.distributed as dist
from gaudi_nb.worker.script import init_distributed, report

init_distributed()
total = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(total)  # both ranks met: 1 + 2
report(step=1, loss=float(total.item()), tokens=1, samples=1)
"""


@pytest.mark.slow
def test_nodes_that_share_a_home_each_keep_their_own_run_folder(two_nodes_one_home, shared_home_sshds, tmp_path):
    """Two machines with one NFS home: before, both wrote ~/.gaudi_nb/runs/<id>, the second run.json overwrote the
    first, both agents started torchrun as node rank 1 and the run waited for ever."""
    script = tmp_path / "meet.py"
    script.write_text(SHARED_SCRIPT)
    run = gaudi_nb.train(target="sa,sb", nodes=2, devices=1, max_steps=1, script=str(script))
    run.wait(timeout=240)
    record = run.record()
    assert record["status"] == "succeeded", record["exit"]
    assert [e["loss"] for e in run.events(types=["step"])] == [3.0]  # rank 0 on sa and rank 1 on sb met
    home = shared_home_sshds[0].node_home
    folders = {name: home / "runs" / run.run_id / "nodes" / name for name in ("sa", "sb")}
    ranks = {name: json.loads((folder / "run.json").read_text())["cluster"]["node_rank"] for name, folder in folders.items()}
    assert ranks == {"sa": 0, "sb": 1}  # each node's own run.json, in its own folder
    (run_start,) = run.events(types=["run_start"])
    (other,) = [e["node_start"] for e in run.events() if "node_start" in e]
    assert (run_start["run_dir"], other["run_dir"]) == (str(folders["sa"]), str(folders["sb"]))
    assert {e["node"] for e in run.events(types=["run_end"])} == {"sa,sb"}



def cli_here(capsys, *args):
    """`gaudi-nb ARGS` through gaudi_nb.cli.main in this process: (exit code, stdout, stderr)."""
    from gaudi_nb.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out = capsys.readouterr()
    return exited.value.code or 0, out.out, out.err


def _alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _mirror_lines(run, name):
    return (local_run_dir(run.run_id) / "nodes" / name / "events.jsonl").read_bytes().splitlines()


@pytest.mark.slow
def test_a_run_across_two_nodes_has_both_in_one_stream(two_nodes, netns_sshds, two_hosts, capsys):
    started = time.monotonic()
    run = gaudi_nb.train(target="na,nb", nodes=2, devices=1, max_steps=3, price_per_hour=36.0, batch_size=2, sequence_length=32)  # small steps: the road is the point
    first_step = None
    deadline = time.monotonic() + 300
    while not run.done and time.monotonic() < deadline:
        if first_step is None and run.record()["steps_completed"] >= 1:
            first_step = time.monotonic() - started
        time.sleep(0.5)
    took = time.monotonic() - started
    record = run.record()
    assert record["status"] == "succeeded", record["exit"]
    events = run.events()
    assert [e["step"] for e in events if e["type"] == "step"] == [1, 2, 3]  # rank 0's, each once
    assert record["device_count"] == 2  # the world: one rank on each node
    starts = [e for e in events if e["type"] == "worker_start"]
    assert sorted((e["node"], e["rank"], e["world_size"]) for e in starts) == [("na", 0, 2), ("nb", 1, 2)]
    assert {e["node"] for e in events if e["type"] == "telemetry"} == {"na", "nb"}
    # one run_start (node 0's), node 1's agent start as a log line; both placed on their own network
    (run_start,) = [e for e in events if e["type"] == "run_start"]
    assert run_start["node"] == "na" and run_start["master_addr"] == two_hosts.addresses[0] and run_start["ifname"] == two_hosts.interfaces[0]
    (other,) = [e["node_start"] for e in events if "node_start" in e]
    assert other["node_rank"] == 1 and other["local_addr"] == two_hosts.addresses[1] and other["ifname"] == two_hosts.interfaces[1]
    assert run_start["run_dir"].startswith(str(netns_sshds[0].node_home)) and other["run_dir"].startswith(str(netns_sshds[1].node_home))
    # the cost: every node metered its own; the record's is the sum of each node's latest
    latest = {}
    for e in events:
        if e["type"] == "cost":
            latest[e["node"]] = e["usd"]
    assert set(latest) == {"na", "nb"} and record["cost"]["usd"] == pytest.approx(sum(latest.values()))
    # one run_end, last, from the client, with each node's; and nothing lost or doubled on the way
    ends = [e for e in events if e["type"] == "run_end"]
    assert len(ends) == 1 and events[-1]["type"] == "run_end" and ends[0]["ended_by"] == "client"
    assert {name: node["status"] for name, node in ends[0]["nodes"].items()} == {"na": "succeeded", "nb": "succeeded"}
    assert len(events) == len(_mirror_lines(run, "na")) + len(_mirror_lines(run, "nb")) + 1
    print(f"\ntwo-node run (3 steps): {took:.1f} s, first step after {first_step:.1f} s")
    # the commands through gaudi_nb.cli.main, what the console script calls, in this process (no interpreter to start)
    code, shown, _ = cli_here(capsys, "show", run.run_id, "--json")
    assert code == 0 and json.loads(shown)["status"] == "succeeded" and json.loads(shown)["steps_completed"] == 3
    code, log, errors = cli_here(capsys, "logs", run.run_id)
    assert code == 0 and "node-rank" not in errors
    assert log == (Path(run_start["run_dir"]) / "logs" / "train.log").read_text(errors="replace")  # node 0's
    code, second, _ = cli_here(capsys, "logs", run.run_id, "--node", "nb")
    assert code == 0 and second == (Path(other["run_dir"]) / "logs" / "train.log").read_text(errors="replace")
    code, _, wrong = cli_here(capsys, "logs", run.run_id, "--node", "nc")
    assert code != 0 and "ran on na, nb, not on 'nc'" in wrong and len(wrong.strip().splitlines()) == 1


# every step waits for the rank on the other node, as DDP's gradient all-reduce does (gloo), without a model to build;
# and the built-in trainer's stop: once this rank has reported the agreed step, every rank saves its part of the
# checkpoint there, rank 0 marks it complete.
MEETING_LOOP = """
import json
import time

import torch
import torch.distributed as dist
from gaudi_nb.rundir import RunFolder
from gaudi_nb.worker.script import checkpoint_dir, checkpoint_saved, init_distributed, report, run_dir, should_stop, spec

init_distributed()
for step in range(1, spec().max_steps + 1):
    time.sleep(0.2)
    met = torch.ones(1)
    dist.all_reduce(met)
    report(step=step, loss=float(met.item()), tokens=64, samples=2)
    if should_stop():
        (checkpoint_dir(step) / f"rank_{dist.get_rank()}.txt").write_text(str(step))
        dist.barrier()  # every rank's part is written before rank 0 marks the checkpoint complete
        checkpoint_saved(step, reason=json.loads(RunFolder(run_dir()).stop_at.read_text())["reason"])
        break
"""


@pytest.mark.slow
def test_the_budget_counts_both_nodes_and_its_stop_ends_both_at_the_same_step(two_nodes, tmp_path):
    """From the CLI: $2 per second per node, so the budget is reached by both nodes' spend together. Node 0's agent
    picks the step, both nodes' agents have it, every rank stops there with a checkpoint, and nothing of the run
    is left on either node. (A stop from `gaudi-nb stop` takes the same road from node 0's agent on: it reaches
    node 0 as on one node, test_ssh_target, and the followers through the peers, test_peers.) The ranks meet every
    step without a model: the budget's road is the point; the built-in trainer's stop at the agreed step (its
    callback) is checked on one node with a real run, test_engine, and its two-node world in the canary above."""
    started = time.monotonic()
    per_tick = 2 * 2.5  # $ the two meters may lag the spend by: a tick each at $2 per second
    script = tmp_path / "meet_and_stop.py"
    script.write_text(MEETING_LOOP)
    result = subprocess.run([GAUDI_NB, "train", "--target", "na,nb", "--nodes", "2", "--devices", "1", "--max-steps", "5000", "--script", str(script),
                             "--price-per-hour", "7200", "--budget-usd", "48", "--json"], capture_output=True, text=True, timeout=400)
    record = json.loads(result.stdout)
    assert record["status"] == "budget_exceeded", (record["exit"], result.stderr[-2000:])
    events = gaudi_nb.get_run(record["run_id"]).events()
    asked = [e for e in events if e["type"] == "stop_requested"]
    assert {(e["node"], e["reason"]) for e in asked} == {("na", "budget_exceeded"), ("nb", "budget_exceeded")}
    (stop_at,) = {e["stop_at"] for e in asked}
    assert record["steps_completed"] == stop_at and record["checkpoints"][-1] == {"step": stop_at, "path": record["checkpoints"][-1]["path"], "reason": "budget_exceeded"}
    other_dir = Path([e["node_start"]["run_dir"] for e in events if "node_start" in e][0])
    assert (other_dir / "checkpoints" / f"checkpoint-{stop_at}" / "rank_1.txt").read_text() == str(stop_at)  # rank 1 (node nb) saved at the same step
    (end,) = [e for e in events if e["type"] == "run_end"]
    assert {name: (node["status"], node["exit_code"]) for name, node in end["nodes"].items()} == {"na": ("budget_exceeded", 0), "nb": ("budget_exceeded", 0)}
    latest = {}
    for e in events:
        if e["type"] == "cost":
            latest[e["node"]] = e["usd"]
    # neither node alone reached $48 when node 0 stopped the run: their sum did
    spent_when_asked = {}
    for e in events:
        if e["type"] == "cost" and e["t"] <= asked[0]["t"]:
            spent_when_asked[e["node"]] = e["usd"]
    assert max(spent_when_asked.values()) < 48 <= sum(spent_when_asked.values()) + per_tick  # within a tick of the meters
    assert record["cost"]["usd"] == pytest.approx(sum(latest.values())) and record["cost"]["usd"] >= 48
    # nothing of the run is left on either node: ranks, launchers, agents
    pids = [e["pid"] for e in events if e["type"] == "worker_start"] + [e["pid"] for e in events if e["type"] == "run_start"]
    pids += [e["node_start"]["pid"] for e in events if "node_start" in e]
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in pids if _alive(pid)]
    print(f"\ntwo-node budget stop: stop_at={stop_at}, ${record['cost']['usd']:.0f} spent, {time.monotonic() - started:.1f} s from the CLI")


@pytest.fixture
def heartbeat_2s(netns_sshds, monkeypatch):
    """GAUDI_NB_HEARTBEAT_TIMEOUT_S=2 (the documented setting, 15 s by default) here and in both hosts' sessions, as
    their login environment would set it: a dead agent's part is called lost in seconds (lost also needs the
    agent's process gone, so never early)."""
    monkeypatch.setenv("GAUDI_NB_HEARTBEAT_TIMEOUT_S", "2")
    first, second = netns_sshds
    with first.session_env_set(GAUDI_NB_HEARTBEAT_TIMEOUT_S="2"), second.session_env_set(GAUDI_NB_HEARTBEAT_TIMEOUT_S="2"):
        yield


@pytest.mark.slow
def test_a_follower_agent_that_dies_ends_the_run_and_leaves_nothing_running(heartbeat_2s, two_nodes, netns_sshds, tmp_path):
    """kill -9 of node 1's agent mid-run: its rank follows it (its watchdog), node 0's rank loses its peer in the next
    all-reduce, and the run ends with the cause named for node nb; no rank, launcher or agent of the run is left on
    either node. (The ranks all-reduce each step without a model: the agents' road is the point, not the trainer's.)"""
    script = tmp_path / "meet_every_step.py"
    script.write_text(MEETING_LOOP)
    run = gaudi_nb.train(target="na,nb", nodes=2, devices=1, max_steps=5000, script=str(script))
    deadline = time.monotonic() + 300
    while run.record()["steps_completed"] < 2 and time.monotonic() < deadline and not run.done:
        time.sleep(0.5)
    (follower,) = [e["node_start"] for e in run.events() if "node_start" in e]
    killed = time.monotonic()
    os.kill(follower["pid"], signal.SIGKILL)  # the test shares the process table with the namespaces
    run.wait(timeout=240)
    ended_in = time.monotonic() - killed
    record = run.record()
    assert record["status"] in ("failed", "lost"), record["exit"]
    (end,) = [e for e in run.events() if e["type"] == "run_end"]
    assert end["nodes"]["nb"]["status"] in ("lost", "failed"), end["nodes"]
    assert "nb" in (record["exit"].get("reason") or ""), record["exit"]  # the cause speaks: which node went
    events = run.events()
    pids = [e["pid"] for e in events if e["type"] == "worker_start"] + [e["pid"] for e in events if e["type"] == "run_start"] + [follower["pid"]]
    deadline = time.monotonic() + 60
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [pid for pid in pids if _alive(pid)]
    print(f"\nfollower agent killed: the run ended {record['status']} {ended_in:.1f} s later ({record['exit'].get('reason')})")
