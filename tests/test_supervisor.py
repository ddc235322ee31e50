"""The agent's parts (gaudi_nb/agent/): the final status as a pure function, the stop policies of one node and
of several nodes (with real processes as ranks and real sockets between the policies), the one read of
events.jsonl that feeds every side service, and a real agent process told to stop by SIGTERM while its
ranks wait in rendezvous for a node that never comes."""
import json
import os
import signal
import socket
import sys
import time
from types import SimpleNamespace
from typing import Any, Dict, List

import psutil
import pytest

from gaudi_nb.agent import commands, stop
from gaudi_nb.agent import feed as feed_module
from gaudi_nb.agent.attempts import Ending, final_status
from gaudi_nb.agent.feed import EventFeed
from gaudi_nb.agent.ranks import RankGroup
from gaudi_nb.agent.services import RunObserver
from gaudi_nb.agent.stop import OneNodeStop, SeveralNodesStop, stop_step
from gaudi_nb.agent.trackers import TrackerThread
from gaudi_nb.events import EventWriter, read_events
from gaudi_nb.launch import LaunchPlan
from gaudi_nb.rundir import RunFolder
from gaudi_nb.spec import RunSpec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate, timeout: float = 30.0, poll_s: float = 0.05) -> None:  # 30 s: two xdist workers on a loaded 2-core CI box
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(poll_s)


def of_type(folder: RunFolder, kind: str) -> List[Dict[str, Any]]:
    return [e for e in read_events(folder.events)[0] if e["type"] == kind]


# -- the final status: a pure function of what the agent saw ---------------------------------------


LOG = ["[rank0]: Traceback (most recent call last):", "[rank0]: ValueError: bad batch", "ChildFailedError:"]


@pytest.mark.parametrize("end, status, reason", [
    (Ending(0, steps=10, usd=1.0), "succeeded", None),
    (Ending(1, log_lines=LOG), "failed", "ValueError: bad batch"),
    (Ending(1, log_lines=[]), "failed", "the launcher exited with code 1"),
    (Ending(1, failure="node nb ended failed: rank 1 crashed", log_lines=LOG), "failed", "node nb ended failed: rank 1 crashed"),
    (Ending(None, error="the agent failed: OSError: disk full"), "failed", "the agent failed: OSError: disk full"),
    # a stop wins over the launcher's exit code: ranks ended by a stop are not a failure
    (Ending(0, stop="stopped"), "stopped", "stopped on request: stopped after a checkpoint"),
    (Ending(-15, stop="budget_exceeded", stop_note="budget reached, but the ranks did not stop within 300 s: killed with SIGTERM, no checkpoint at the stop"),
     "budget_exceeded", "budget reached, but the ranks did not stop within 300 s: killed with SIGTERM, no checkpoint at the stop"),
    (Ending(1, crash={"reason": "rank 1 was killed by SIGKILL"}, restarts=(2, 2), failure="rank 1: boom"), "failed",
     "rank 1 was killed by SIGKILL; no restarts left (2 of --max-restarts 2 used)"),
    (Ending(1, crash={"reason": "rank 1 was killed by SIGKILL"}, restarts=(0, 0), failure="rank 1: boom"), "failed", "rank 1: boom"),
    (Ending(1, crash={"reason": "rank 1 was killed by SIGKILL"}, restarts=None, failure="rank 1: boom"), "failed", "rank 1: boom"),  # across nodes
])
def test_the_final_status_and_its_reason(end, status, reason):
    got, fields = final_status(end)
    assert got == status and fields.get("reason") == reason
    assert fields["exit_code"] == end.exit_code and fields["steps_completed"] == end.steps and fields["usd"] == end.usd
    assert ("last_log_lines" in fields) == (status == "failed")
    assert "attempt" not in fields


def test_a_later_attempt_says_which_it_was():
    _, fields = final_status(Ending(0, attempt=3))
    assert fields["attempt"] == 3


# -- stop policies, with a real process as the ranks -------------------------------------------------


@pytest.fixture
def make_node(tmp_path):
    made: List[Any] = []

    def make(name="local", *, cluster=None, budget_usd=None, stepped=False):
        folder = RunFolder(tmp_path / name).create()
        events = EventWriter(folder.events, "r1", node=name)
        ranks = RankGroup(folder)
        # a launcher that ignores nothing and never ends by itself, in its own process group
        ranks.start(LaunchPlan(argv=[sys.executable, "-c", "import time; time.sleep(600)"]), attempt=1, resume_from=None)
        progress = SimpleNamespace(last_step=10, fastest_step_s=None, stepped=stepped)
        spec = RunSpec(max_steps=100, budget_usd=budget_usd)
        if cluster is None:
            policy = OneNodeStop(folder, events, spec, progress, ranks)
        else:
            policy = SeveralNodesStop(folder, events, spec, progress, ranks, node=name, cluster=cluster, refresh=lambda: None)
            policy.start()
        made.append(policy)
        return policy

    yield make
    for policy in made:
        policy.ranks.kill(term_wait_s=1)
        if isinstance(policy, SeveralNodesStop):
            policy.peers.close()


def test_one_node_budget_asks_the_ranks_through_the_folder_once(make_node):
    policy = make_node(budget_usd=4.0)
    policy.tick(3.9)
    assert policy.folder.stop_reason() is None and not policy.stopping()
    policy.tick(4.0)
    policy.tick(4.5)
    assert policy.folder.stop_reason() == "budget_exceeded"
    (asked,) = of_type(policy.folder, "stop_requested")
    assert asked["reason"] == "budget_exceeded" and asked["at_step"] == 10 and "stop_at" not in asked  # rank 0 picks the step
    assert policy.end_reason() == "budget_exceeded" and policy.stopping() and policy.ranks.running()  # the ranks stop themselves


def test_a_signal_is_only_noted_in_the_handler_and_ends_ranks_without_a_step_at_once(make_node):
    policy = make_node()
    policy.request("stopped", signal_name="SIGTERM")
    assert not policy.folder.control.joinpath("stop.json").exists() and of_type(policy.folder, "stop_requested") == []
    started = time.monotonic()
    policy.tick(None)
    assert not policy.ranks.running() and time.monotonic() - started < 6
    assert policy.killed_with == "SIGTERM" and policy.end_reason() == "stopped" and policy.folder.stop_reason() == "stopped"
    assert policy.description("stopped") == "stopped by SIGTERM to the agent: the ranks were ended with SIGTERM, no checkpoint at the stop"
    assert "no rank had reached a step" in of_type(policy.folder, "log")[-1]["message"]


def test_a_signal_gives_stepping_ranks_a_bounded_grace(make_node, monkeypatch):
    monkeypatch.setattr(stop, "SIGNAL_GRACE_S", 1.0)
    policy = make_node(stepped=True)
    policy.request("stopped", signal_name="SIGTERM")
    policy.tick(None)
    assert policy.ranks.running() and of_type(policy.folder, "stop_requested")[0]["reason"] == "stopped"  # its checkpoint may come
    time.sleep(1.1)
    policy.tick(None)
    assert not policy.ranks.running() and "did not stop within 1 s" in of_type(policy.folder, "log")[-1]["message"]


def test_a_stop_asked_in_the_folder_is_enforced_after_its_grace(make_node, monkeypatch):
    monkeypatch.setattr(stop, "STOP_GRACE_S", 0.5)
    policy = make_node(stepped=True)
    policy.folder.request_stop("stopped")
    policy.tick(None)
    assert policy.ranks.running() and len(of_type(policy.folder, "stop_requested")) == 1
    time.sleep(0.6)
    policy.tick(None)
    assert not policy.ranks.running() and policy.killed_with == "SIGTERM"
    assert policy.description("stopped").startswith("stopped on request, but the ranks did not stop within 0 s: killed with SIGTERM")


def two_node_cluster(rank: int, port: int) -> Dict[str, Any]:
    return {"nodes": ["na", "nb"], "node_rank": rank, "master_addr": "127.0.0.1", "master_port": 1, "control_port": port, "token": "t"}


def test_across_nodes_node_0_picks_the_step_and_the_follower_writes_it_for_its_ranks(make_node):
    port = free_port()
    leader, follower = make_node("na", cluster=two_node_cluster(0, port)), make_node("nb", cluster=two_node_cluster(1, port))
    wait_until(lambda: leader.peers.connected() == ["nb"])
    follower.request("stopped")  # asked of the follower's agent: node 0 decides for every node
    follower.tick(1.0)
    wait_until(lambda: leader._wanted == "stopped")
    leader.tick(1.0)
    step = stop_step(10, None, 100)
    assert json.loads(leader.folder.stop_at.read_text())["step"] == step
    wait_until(lambda: follower.folder.stop_at.exists())  # written on the peers' thread, before the loop's tick
    assert json.loads(follower.folder.stop_at.read_text()) == {"step": step, "reason": "stopped"}
    follower.tick(1.0)
    for policy in (leader, follower):
        (asked,) = of_type(policy.folder, "stop_requested")
        assert asked["stop_at"] == step and asked["reason"] == "stopped" and policy.end_reason() == "stopped"


def test_across_nodes_the_budget_counts_every_nodes_spend(make_node):
    port = free_port()
    leader = make_node("na", cluster=two_node_cluster(0, port), budget_usd=5.0)
    follower = make_node("nb", cluster=two_node_cluster(1, port))
    wait_until(lambda: leader.peers.connected() == ["nb"])
    follower.tick(2.0)
    wait_until(lambda: leader.peer_usd.get("nb") == 2.0)
    assert leader.run_usd(2.9) == pytest.approx(4.9)
    leader.tick(2.9)
    assert leader.end_reason() is None
    leader.tick(3.0)  # neither node alone is at $5: together they are
    assert leader.end_reason() == "budget_exceeded"
    wait_until(lambda: follower.end_reason() == "budget_exceeded")


def test_a_node_that_ended_failed_ends_the_ranks_of_the_others(make_node):
    port = free_port()
    leader, follower = make_node("na", cluster=two_node_cluster(0, port)), make_node("nb", cluster=two_node_cluster(1, port))
    wait_until(lambda: leader.peers.connected() == ["nb"])
    leader.finish("failed", "rank 0 crashed")
    wait_until(lambda: "na" in follower.peer_ends)
    follower.tick(1.0)
    assert not follower.ranks.running() and follower.failure == "node na ended failed: rank 0 crashed"


def test_a_follower_whose_node_0_never_comes_still_stops_on_a_signal(make_node):
    follower = make_node("nb", cluster=two_node_cluster(1, free_port()))  # nobody listens there
    follower.request("stopped", signal_name="SIGTERM")
    follower.tick(1.0)
    assert not follower.ranks.running() and follower.end_reason() == "stopped" and follower.stopping()


# -- one read of events.jsonl for every side service ---------------------------------------------------


def test_the_feed_reads_the_file_once_a_poll_whatever_the_number_of_subscribers(tmp_path, monkeypatch):
    reads = []
    real = feed_module.read_events
    monkeypatch.setattr(feed_module, "read_events", lambda path, offset=0: reads.append(offset) or real(path, offset))
    writer = EventWriter(tmp_path / "events.jsonl", "r1")
    writer.emit("run_start", spec={})
    writer.emit("step", step=1)
    feed = EventFeed(tmp_path / "events.jsonl")
    got: Dict[str, List[List[str]]] = {"a": [], "b": [], "c": [], "new": []}
    for name in "abc":
        feed.subscribe(lambda events, name=name: got[name].append([e["type"] for e in events]))
    feed.subscribe(lambda events: got["new"].append([e["type"] for e in events]), history=False)  # a resumed agent's observer
    feed.poll()
    feed.poll()  # nothing new: nobody is called
    writer.emit("step", step=2)
    writer.emit("run_end", status="succeeded")
    feed.poll()
    assert len(reads) == 3 and feed.reads == 3
    for name in "abc":
        assert got[name] == [["run_start", "step"], ["step", "run_end"]]
    assert got["new"] == [[], ["step", "run_end"]]  # told it has caught up, then only what is new


def test_a_subscriber_that_raises_does_not_stop_the_others(tmp_path):
    EventWriter(tmp_path / "events.jsonl", "r1").emit("step", step=1)
    feed = EventFeed(tmp_path / "events.jsonl")
    seen: List[int] = []
    feed.subscribe(lambda events: 1 / 0)
    feed.subscribe(lambda events: seen.extend(e["step"] for e in events))
    feed.poll()
    assert seen == [1]


def test_the_observer_keeps_this_attempts_steps_pids_and_first_error():
    observer = RunObserver("na")
    observer.take([
        {"type": "worker_start", "rank": 0, "pid": 11, "node": "na"},
        {"type": "worker_start", "rank": 1, "pid": 22, "node": "nb"},  # another node's rank
        {"type": "step", "step": 1, "step_time_s": 0.5},
        {"type": "step", "step": 2, "step_time_s": 0.25},
        {"type": "worker_error", "rank": 0, "error": "first"},
        {"type": "worker_error", "rank": 0, "error": "echo"},
    ])
    assert (observer.last_step, observer.fastest_step_s, observer.stepped) == (2, 0.25, True)
    assert observer.rank_pids == {0: 11} and observer.rank_errors == {0: "first"} and observer.worker_error == "rank 0: first"
    observer.next_attempt(from_step=1)
    assert (observer.last_step, observer.stepped, observer.rank_pids, observer.rank_errors, observer.worker_error) == (1, False, {}, {}, None)


class FakeTracker:
    """Stands in for MLflow or W&B (their own tests use real servers, tests/test_trackers.py): records the calls."""

    def __init__(self) -> None:
        self.metrics: Dict[int, Dict[str, float]] = {}
        self.finished = None

    def start(self, run_name, tags, previous_run_id):
        return {"tracker_run_id": "t1", "url": None, "experiment": "0"}

    def log_params(self, params): pass

    def set_tags(self, tags): pass

    def log_artifact(self, path, name): pass

    def log_metrics(self, metrics, step):
        self.metrics.setdefault(step, {}).update(metrics)

    def finish(self, status):
        self.finished = status


def test_trackers_take_the_run_from_the_agents_feed_without_reading_the_file(tmp_path, monkeypatch):
    folder = RunFolder(tmp_path / "run").create()
    writer = EventWriter(folder.events, "r1")
    writer.emit("run_start", spec={})
    writer.emit("step", step=1, loss=2.0)
    feed = EventFeed(folder.events)
    backends = [FakeTracker(), FakeTracker()]
    threads = [TrackerThread(f"fake{i}", folder, "r1", "local", {"name": "n"}, feed, make=lambda name, path, b=b: b) for i, b in enumerate(backends)]
    monkeypatch.setattr("gaudi_nb.events.read_events", lambda *a, **k: pytest.fail("a tracker read the events file itself"))
    feed.poll()  # the agent's first read: the history
    for thread in threads:
        thread.start()
    writer.emit("step", step=2, loss=1.5)
    writer.emit("run_end", status="succeeded")
    feed.poll()  # the agent's tick after run_end
    for thread in threads:
        thread.close(10)
    for backend in backends:
        assert backend.metrics[1]["loss"] == 2.0 and backend.metrics[2]["loss"] == 1.5 and backend.finished == "succeeded"
    assert feed.reads == 2


# -- a real agent, told to stop by a signal while its ranks wait in rendezvous ------------------------


SCRIPT = "from gaudi_nb.worker.script import report\nfor step in range(1, 1000):\n    report(step=step, loss=1.0)\n"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("node_rank", [0, 1], ids=["node 0 waits for node 1", "node 1 waits for node 0"])
def test_sigterm_ends_an_agent_whose_ranks_wait_for_a_node_that_never_comes(tmp_path, monkeypatch, node_rank):
    folder = RunFolder(tmp_path / "run").create()
    folder.spec.write_text(RunSpec(script=str(folder.script), devices=1, nodes=2, max_steps=100, target="na,nb").model_dump_json())
    folder.script.write_text(SCRIPT)
    cluster = {"nodes": ["na", "nb"], "node_rank": node_rank, "master_addr": "127.0.0.1", "master_port": free_port(), "control_port": free_port(),
               "token": "t", "hosts": ["127.0.0.1", "127.0.0.1"]}
    name = cluster["nodes"][node_rank]
    folder.run.write_text(json.dumps({"run_id": "r1", "node": name, "target": "na,nb", "cluster": cluster}))
    monkeypatch.setenv("GAUDI_NB_METRICS_PORT", "off")
    agent = commands.start_agent(folder)
    wait_until(lambda: (folder.path / "launcher.pid").exists(), timeout=60)
    launcher = int((folder.path / "launcher.pid").read_text())
    time.sleep(3)  # torchrun is up and waiting for the other node
    assert _alive(agent) and _alive(launcher) and not of_type(folder, "run_end")
    signalled = time.monotonic()
    os.kill(agent, signal.SIGTERM)
    wait_until(lambda: not _alive(agent), timeout=30, poll_s=0.2)
    took = time.monotonic() - signalled
    (end,) = of_type(folder, "run_end")
    assert end["status"] == "stopped" and "SIGTERM" in end["reason"], end
    assert took <= 20, f"the agent took {took:.1f} s"
    wait_until(lambda: not _alive(launcher), timeout=5)
    print(f"\nSIGTERM to node {node_rank}'s agent in rendezvous: run_end and exit {took:.1f} s later")


def test_a_tracker_that_cannot_start_is_left_behind_and_keeps_nothing(tmp_path):
    folder = RunFolder(tmp_path / "run").create()
    writer = EventWriter(folder.events, "r1")
    feed = EventFeed(folder.events)

    def refuse(name, path):
        raise ConnectionError("tracker down")

    thread = TrackerThread("down", folder, "r1", "local", {}, feed, make=refuse)
    feed.poll()
    thread.start()
    thread.join(10)
    for step in range(1, 50):
        writer.emit("step", step=step)
        feed.poll()
    assert not thread.is_alive() and thread.inbox.take() == []  # nothing queued for a reader that is gone
    (warning,) = of_type(folder, "log")
    assert "cannot start a tracker run (ConnectionError: tracker down)" in warning["message"]


POLITE = """import time
from gaudi_nb.worker.script import checkpoint_dir, checkpoint_saved, report, should_stop
for step in range(1, 10000):
    time.sleep(0.2)
    report(step=step, loss=1.0)
    if should_stop():
        (checkpoint_dir(step) / "state.txt").write_text(str(step))
        checkpoint_saved(step, reason="stopped")
        break
"""


@pytest.mark.slow
def test_sigterm_to_an_agent_whose_ranks_step_is_a_clean_stop_with_a_checkpoint(tmp_path, monkeypatch):
    folder = RunFolder(tmp_path / "run").create()
    folder.spec.write_text(RunSpec(script=str(folder.script), devices=1, max_steps=10000).model_dump_json())
    folder.script.write_text(POLITE)
    folder.run.write_text(json.dumps({"run_id": "r1", "node": "local", "target": "local"}))
    monkeypatch.setenv("GAUDI_NB_METRICS_PORT", "off")
    agent = commands.start_agent(folder)
    wait_until(lambda: len(of_type(folder, "step")) >= 2, timeout=120, poll_s=0.2)
    signalled = time.monotonic()
    os.kill(agent, signal.SIGTERM)
    wait_until(lambda: not _alive(agent), timeout=30, poll_s=0.2)
    (end,) = of_type(folder, "run_end")
    assert end["status"] == "stopped" and end["reason"] == "stopped on request: stopped after a checkpoint", end
    assert folder.last_checkpoint() is not None and folder.last_checkpoint().step == end["steps_completed"]
    print(f"\nSIGTERM to a stepping run's agent: stopped with a checkpoint {time.monotonic() - signalled:.1f} s later")
