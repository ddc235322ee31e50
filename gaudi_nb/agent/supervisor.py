"""The node agent: starts the launcher, samples telemetry, meters cost, enforces the budget, ends the run.

A run across several nodes has one agent per node (run.json's `cluster` says which node this is).
Each meters and samples its own node. Node 0's agent leads: the others keep one TCP connection to
it (`Peers`), report their spend over it, and receive from it the step every rank stops after;
so a stop or a budget stop ends every node at the same step, without the client.
"""
from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import psutil

from .. import accel
from ..cost import catalog, meter
from ..events import EventWriter, Tailer, read_events
from ..launch import LaunchPlan, build_launch, pick_launcher
from ..launch.cluster import cluster_launch_options
from ..rundir import ATTEMPT_ENV, RESUME_FROM_ENV, RunFolder
from ..spec import RunSpec
from ..worker.trainers import pick_trainer
from ..worker.watchdog import agent_environment
from .liveness import process_alive
from .observer import AgentObserver
from .trackers import Trackers

# After a stop request the ranks finish two steps and save a checkpoint; a run that
# takes longer than this is terminated (a hung rank must not keep spending money).
STOP_GRACE_S = float(os.environ.get("GAUDI_NB_STOP_GRACE_S", "300"))
LOG_TAIL_LINES = 20
# Several nodes: node 0 picks a stop step this many seconds of steps ahead of rank 0, so that the
# step reaches every node's ranks before they get there (see stop_step).
STOP_MARGIN_S = float(os.environ.get("GAUDI_NB_STOP_MARGIN_S", "1"))
ENDED_WELL = ("succeeded", "stopped", "budget_exceeded")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail_lines(path: Path, n: int = LOG_TAIL_LINES) -> List[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            lines = fh.read().decode(errors="replace").splitlines()
    except OSError:
        return []
    return [line for line in lines if line.strip()][-n:]


def failure_reason(lines: List[str], exit_code: int) -> str:
    """The most telling line of a failed run's log: the last exception, else the exit code."""
    for line in reversed(lines):
        text = line.split("]: ", 1)[-1].strip()  # torchrun prefixes rank lines with "[rankN]: "
        if ("Error" in text or "Exception" in text) and not text.startswith(("File ", "Traceback", "raise ")) and "ChildFailedError" not in text:
            return text[:300]
    return f"the launcher exited with code {exit_code}"


ATTEMPT_MARK = "--- gaudi_nb: attempt "  # the line the agent writes into train.log before each later attempt
_FAILED_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)")
_EXIT_CODE = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")


def crash_details(lines: List[str], exit_code: Optional[int]) -> Dict[str, Any]:
    """Which rank ended an attempt and how, from torchrun's failure summary ("Root Cause" block:
    rank, exitcode; a negative exit code is the signal)."""
    attempt = max((i for i, line in enumerate(lines) if line.startswith(ATTEMPT_MARK)), default=-1)
    lines = lines[attempt + 1:]  # an earlier attempt's summary says nothing about this one
    start = max((i for i, line in enumerate(lines) if "Root Cause" in line), default=-1)
    rank = code = None
    for line in lines[start + 1:]:
        text = line.split("]: ", 1)[-1]
        if rank is None and _FAILED_RANK.match(text):
            rank = int(_FAILED_RANK.match(text).group(1))  # type: ignore[union-attr]
        elif code is None and _EXIT_CODE.match(text):
            code = int(_EXIT_CODE.match(text).group(1))  # type: ignore[union-attr]
    name = None
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
    who = f"rank {rank}" if rank is not None else "a rank"
    if name is not None:
        reason = f"{who} was killed by {name}"
    elif code is not None:
        reason = f"{who} exited with code {code}"
    else:
        reason = f"the launcher exited with code {exit_code}"
    return {"rank": rank, "exit_code": code if code is not None else exit_code, "signal": name, "reason": reason}


# -- several nodes ------------------------------------------------------------------------------
# run.json of a run across nodes has "cluster": {"nodes": [names, node 0 first], "node_rank": k,
# "master_addr": node 0's address as the others reach it, "master_port", "control_port",
# "token" (shared by the nodes of this run only), "hosts": [each node's address]} (targets/ssh.py).


def route_to(address: str) -> Tuple[Optional[str], Optional[str]]:
    """(this node's own address on the way to `address`, the interface that holds it); Nones where unknown.

    A UDP connect sends nothing; it only asks the kernel which source address it would use,
    so on node 0 (whose own address is the master's) it names node 0's interface, not loopback.
    """
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((address, 9))
            local = str(probe.getsockname()[0])
    except OSError:
        return None, None
    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and a.address == local for a in addresses):
            return local, name
    return local, None


def cluster_plan(spec: RunSpec, cluster: Dict[str, Any], worker: List[str], *, python: str, accelerator: str, launcher: str, master_port: Optional[int] = None,
                 local_addr: Optional[str] = None, ifname: Optional[str] = None, environ: Optional[Mapping[str, str]] = None, **more: Any) -> Optional[LaunchPlan]:
    """This node's launch plan in a run across nodes; None where node 0's launcher starts this node's ranks
    (DeepSpeed, the multi-node form on Gaudi: node 0 reads the hostfile and starts every node over ssh).

    torchrun: static rendezvous at node 0's address (--node-rank, --master-addr), and on CPU
    GLOO_SOCKET_IFNAME set to the interface that reaches it (a host name that maps to 127.0.0.1
    would otherwise send gloo to loopback); NCCL_SOCKET_IFNAME as well on CUDA.
    """
    rank = int(cluster["node_rank"])
    if launcher == "deepspeed" and rank > 0:
        return None
    plan = build_launch(spec, worker, python=python, node_rank=rank, master_addr=str(cluster["master_addr"]), master_port=int(master_port or cluster["master_port"]),
                        hosts=list(cluster.get("hosts") or []) or None, local_addr=local_addr, ifname=ifname, accelerator=accelerator, launcher=launcher,
                        environ=environ, **more)
    inherited = os.environ if environ is None else environ
    if ifname and accelerator == "cuda":
        for name in ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"):
            if name not in inherited:  # a user's own choice stands
                plan.env[name] = ifname
    return plan


def stop_step(last_step: int, fastest_step_s: Optional[float], max_steps: int, margin_s: float = STOP_MARGIN_S) -> int:
    """The step every rank of a run across nodes stops after, chosen by node 0's agent.

    One node alone lets rank 0 decide `step + 2` (worker/callback.py): its other ranks read the
    decision from the same folder within a step. Across nodes node 0's agent decides from rank
    0's last step event (rank 0 may be a step further) and sends the step to the other agents
    (milliseconds over their open connection; a reconnect takes half a second), so it is put
    three steps and `margin_s` worth of the fastest recent step ahead; five steps before any step is seen.
    """
    ahead = 3 + math.ceil(margin_s / fastest_step_s) if fastest_step_s else 5
    return max(1, min(max_steps, last_step + ahead))


_sending = threading.Lock()  # one line at a time on any connection: the loop and the peers' threads both send


def _send(sock: socket.socket, message: Dict[str, Any]) -> bool:
    try:
        with _sending:
            sock.sendall((json.dumps(message) + "\n").encode())
        return True
    except OSError:
        return False


class Peers:
    """The agents of one run across nodes: node 0's listens at (master_addr, control_port), each other
    node's keeps one connection to it and reconnects. JSON lines; the first line of a connection
    is {"node", "token"}, and a wrong token is hung up on. Node 0 repeats its stop decision and its
    end to a node that (re)connects, so a short drop loses neither."""

    def __init__(self, node: str, cluster: Dict[str, Any], on_message: Callable[[str, Dict[str, Any]], None]) -> None:
        self.node = node
        self.leader_name = str(cluster["nodes"][0])
        self.is_leader = int(cluster["node_rank"]) == 0
        self.token = str(cluster["token"])
        self.address = (str(cluster["master_addr"]), int(cluster["control_port"]))
        self.on_message = on_message
        self._lock = threading.Lock()
        self._connections: Dict[str, socket.socket] = {}  # node 0: the others, by name; elsewhere: node 0
        self._sticky: List[Dict[str, Any]] = []  # node 0: what every (re)connecting node gets first
        self._server: Optional[socket.socket] = None
        self._closed = False

    def start(self) -> Optional[str]:
        """Listen (node 0) or start connecting; returns a warning when node 0 had to listen on every address."""
        warning = None
        if self.is_leader:
            try:
                self._server = socket.create_server(self.address)
            except OSError as exc:  # the address others reach node 0 by is not its own (NAT): listen on all
                self._server = socket.create_server(("", self.address[1]))
                warning = f"node 0 listens for the other nodes on port {self.address[1]} of every address ({self.address[0]}: {exc})"
            threading.Thread(target=self._accept, name="gaudi-nb-peers", daemon=True).start()
        else:
            threading.Thread(target=self._connect, name="gaudi-nb-peers", daemon=True).start()
        return warning

    def connected(self) -> List[str]:
        with self._lock:
            return sorted(self._connections)

    def send(self, message: Dict[str, Any], *, sticky: bool = False) -> None:
        """Node 0: to every other node (sticky: and to any that connects later); elsewhere: to node 0."""
        with self._lock:
            if sticky:
                self._sticky.append(message)
            connections = list(self._connections.values())
        for sock in connections:
            _send(sock, message)

    def close(self) -> None:
        self._closed = True
        with self._lock:
            connections = list(self._connections.values())
            self._connections.clear()
        for sock in connections + ([self._server] if self._server is not None else []):
            try:
                sock.close()
            except OSError:
                pass

    # -- node 0 -------------------------------------------------------------------------
    def _accept(self) -> None:
        assert self._server is not None
        while not self._closed:
            try:
                sock, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        name = None
        try:
            sock.settimeout(10)  # a connection that does not say who it is within 10 s is hung up on
            lines = sock.makefile("r", encoding="utf-8")
            hello = json.loads(lines.readline() or "{}")
            if not isinstance(hello, dict) or hello.get("token") != self.token or not hello.get("node"):
                return
            sock.settimeout(None)
            name = str(hello["node"])
            with self._lock:
                self._connections[name] = sock
                for message in self._sticky:
                    _send(sock, message)
            self._read(name, lines)
        except (OSError, ValueError):
            pass
        finally:
            with self._lock:
                if name is not None and self._connections.get(name) is sock:
                    del self._connections[name]
            sock.close()

    # -- the other nodes ---------------------------------------------------------------------
    def _connect(self) -> None:
        while not self._closed:
            sock = None
            try:
                sock = socket.create_connection(self.address, timeout=5)
                sock.settimeout(None)
                if _send(sock, {"node": self.node, "token": self.token}):
                    with self._lock:
                        self._connections[self.leader_name] = sock
                    self._read(self.leader_name, sock.makefile("r", encoding="utf-8"))
            except (OSError, ValueError):
                pass
            with self._lock:
                self._connections.pop(self.leader_name, None)
            if sock is not None:
                sock.close()
            time.sleep(0.5)

    def _read(self, name: str, lines: Any) -> None:
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict):
                self.on_message(name, message)


class Agent:
    def __init__(self, run_dir: Path) -> None:
        self.folder = RunFolder(Path(run_dir).resolve())
        self.run_dir = self.folder.path
        self.run = self.folder.read_run()
        self.run_id = self.run["run_id"]
        self.node = self.run.get("node", "local")
        self.spec = RunSpec.model_validate_json(self.folder.spec.read_text())
        self.price_per_hour, self.price_source = catalog.resolve_price_per_hour(self.spec.price_per_hour, self.spec.instance_type)
        self.events = EventWriter(self.folder.events, self.run_id, node=self.node)
        self.logs = self.folder.logs
        self.logs.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        self.process: Optional[subprocess.Popen] = None
        self.last_step = 0
        self.last_cost: Optional[float] = None
        self.worker_error: Optional[str] = None
        self.rank_errors: Dict[int, str] = {}  # this attempt's, by rank: a crash names the failed rank's own error
        self.stop_requested_at: Optional[float] = None
        self.killed_with: Optional[str] = None  # the signal that ended ranks which ignored a stop request
        self.exporter: Any = None
        self.telemetry: Any = None
        self.run_modules: Optional[str] = None  # HABANA_VISIBLE_MODULES of a partial-node Gaudi run
        self._tailer = Tailer(self.folder.events)
        self._observer = AgentObserver(self)  # what the tailer reads, through the one fold
        # several nodes (run.json's "cluster"; None for one node)
        self.cluster: Optional[Dict[str, Any]] = self.run.get("cluster")
        self.peers: Optional[Peers] = None
        self.cluster_stop: Optional[str] = None  # the reason of the stop every node agreed on
        self.fastest_step_s: Optional[float] = None  # of the last ten steps
        self._step_times: List[float] = []
        self._wanted_stop: Optional[str] = None  # asked of this agent (signal, another node): node 0 decides in its loop
        self._stop_forwarded = False
        self._peer_stop: Optional[Tuple[int, str]] = None  # (step, reason) from node 0, not yet written as an event
        self.peer_usd: Dict[str, Optional[float]] = {}
        self.peer_ends: Dict[str, Tuple[str, str]] = {}
        self.peer_failure: Optional[str] = None
        # attempts: a crashed rank restarts the ranks from the last complete checkpoint (--max-restarts)
        self.attempt = 1
        self.restarts_used = 0
        self.resume_from: Optional[str] = None  # the checkpoint folder this attempt's ranks continue from
        self.crash: Optional[Dict[str, Any]] = None  # how the last attempt ended, when a rank crashed
        self.rank_pids: Dict[int, int] = {}  # this attempt's ranks, from their worker_start events
        self.metered_before_s = 0.0  # a resumed run: the wall clock its earlier agents metered
        self.trackers: Optional[Trackers] = None  # --report-to: one tracker run per gaudi_nb run, logged by node 0's agent

    # -- lifecycle -------------------------------------------------------
    def run_to_end(self) -> str:
        """Supervise the run until it ends; whatever goes wrong, the run gets a run_end and its ranks are killed."""
        signal.signal(signal.SIGTERM, lambda *_: self._request_stop("stopped"))
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the terminal or kernel that started us may go away
        self.folder.agent_pid.write_text(str(os.getpid()))
        self.folder.beat()
        if self.cluster is None or int(self.cluster["node_rank"]) == 0:
            self.trackers = Trackers.start(self.spec, self.folder, self.run_id, self.node)
        try:
            exit_code = self._launch_and_supervise()
        except BaseException as exc:  # a bug, a missing launcher, a store that cannot be written
            traceback.print_exc()  # into logs/agent.log
            self._kill_ranks()
            return self._finish(None, error=f"the agent failed: {type(exc).__name__}: {exc}")
        finally:
            if self.telemetry is not None:
                self.telemetry.stop()
        return self._finish(exit_code)

    def _launch_and_supervise(self) -> int:
        accelerator = accel.detect_name()
        launcher = pick_launcher(self.spec, accelerator)
        # a user script (%%gaudi_train --script) runs through its own runner; fresh processes either way
        worker = ["-m", "gaudi_nb.worker.script" if self.spec.script else "gaudi_nb.worker", "--run-dir", str(self.run_dir)]
        placement: Dict[str, Any] = {}
        plan: Optional[LaunchPlan]
        resumed = self._resume_request()
        if resumed is not None:
            # the earlier attempts' events (their steps, errors and rank pids) are not this agent's to act on
            self._tailer = Tailer(self.folder.events, offset=self.folder.events.stat().st_size)

        def single_node_plan() -> LaunchPlan:
            # in a cluster-started job (Kubernetes operators) the pod's environment says where this node stands;
            # a fresh port for each attempt: the last attempt's rendezvous port may not be free yet
            where = {"master_port": free_port(), **cluster_launch_options(os.environ, self.spec.nodes)}
            return build_launch(self.spec, worker, python=sys.executable, accelerator=accelerator, launcher=launcher, **where)

        if self.cluster is not None:
            self._start_peers()
            local_addr, ifname = route_to(str(self.cluster["master_addr"]))
            plan = cluster_plan(self.spec, self.cluster, worker, python=sys.executable, accelerator=accelerator, launcher=launcher, local_addr=local_addr, ifname=ifname)
            placement = {"node_rank": self.cluster["node_rank"], "nodes": self.cluster["nodes"], "master_addr": self.cluster["master_addr"], "local_addr": local_addr, "ifname": ifname}
        else:
            plan = single_node_plan()
        if plan is not None:
            self.run_modules = plan.env.get("HABANA_VISIBLE_MODULES")
            for name, content in plan.files.items():
                (self.run_dir / name).write_text(content)
        self._start_exporter()
        if resumed is not None:
            # `gaudi-nb resume` wrote the restart event and chose the checkpoint; the run_start is the first agent's
            self.attempt = int(resumed.get("attempt") or 2)
            self.resume_from = resumed.get("checkpoint")
            self.last_step = int(resumed.get("from_step") or 0)
            self.metered_before_s = self._metered_so_far()
            self.events.emit("log", level="info", message=f"attempt {self.attempt}: agent pid {os.getpid()} resumes from {self.resume_from or 'step 0'}",
                             pid=os.getpid(), command=plan.describe() if plan is not None else None, metrics_port=getattr(self.exporter, "port", None))
        else:
            self.events.emit(
                "run_start",
                spec=self.spec.to_json_dict(),
                run_dir=str(self.run_dir),
                pid=os.getpid(),
                hostname=socket.gethostname(),
                accelerator=accelerator,
                trainer=pick_trainer(self.spec.trainer, accelerator),
                launcher=plan.launcher if plan is not None else launcher,
                command=plan.describe() if plan is not None else f"(this node's ranks are started by node 0's {launcher})",
                price_per_hour=self.price_per_hour,
                price_source=self.price_source,
                metrics_port=getattr(self.exporter, "port", None),
                **placement,
            )
        if (self.cluster is not None or self.spec.nodes > 1) and self.spec.max_restarts:
            self.events.emit("log", level="warning", message="--max-restarts applies to one-node runs in this version: a crashed rank ends this run across nodes as failed")
        if plan is None:
            self.telemetry = self._start_telemetry()
            return self._supervise()
        first = True
        while True:
            self._start_ranks(plan)
            if first:
                self.telemetry = self._start_telemetry()
                first = False
            elif self.telemetry is not None:
                self._follow_rank_pids(self.telemetry)
            exit_code = self._supervise()
            self.crash = self._crashed(exit_code)
            if self.crash is None or not self._may_restart():
                return exit_code
            self._restart(self.crash)
            plan = single_node_plan()

    def _start_ranks(self, plan: LaunchPlan) -> None:
        env = {**os.environ, **plan.env, "PYTHONUNBUFFERED": "1", **agent_environment(), ATTEMPT_ENV: str(self.attempt)}
        env.pop(RESUME_FROM_ENV, None)
        if self.resume_from:
            env[RESUME_FROM_ENV] = self.resume_from
        self.rank_pids = {}
        with open(self.folder.train_log, "ab") as log:
            if self.attempt > 1:
                log.write(f"{ATTEMPT_MARK}{self.attempt}, from {self.resume_from or 'step 0'} ---\n".encode())
                log.flush()
            self.process = subprocess.Popen(
                plan.argv,
                # the ranks watch this pid and stop when the agent is gone (see worker/watchdog.py)
                env=env,
                cwd=self.run_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so a hung run can be killed whole
            )
        (self.run_dir / "launcher.pid").write_text(str(self.process.pid))

    # -- attempts --------------------------------------------------------
    def _resume_request(self) -> Optional[Dict[str, Any]]:
        """What `gaudi-nb resume` asked of this agent (control/resume.json), or None for a fresh run."""
        try:
            request = json.loads(self.folder.resume_request.read_text())
        except (OSError, ValueError):
            return None
        return request if isinstance(request, dict) else None

    def _metered_so_far(self) -> float:
        """The wall clock this node's earlier agents metered: a resumed run's spend goes on from there."""
        events, _ = read_events(self.folder.events)
        costs = [e for e in events if e.get("type") == "cost" and e.get("node") == self.node and e.get("elapsed_s") is not None]
        return float(costs[-1]["elapsed_s"]) if costs else 0.0

    def _crashed(self, exit_code: int) -> Optional[Dict[str, Any]]:
        """How a rank crashed, or None when the attempt ended well or because it was asked to stop."""
        if exit_code == 0 or self.stop_requested_at is not None or self.folder.stop_reason() or self.cluster_stop or self.killed_with:
            return None
        crash = crash_details(tail_lines(self.folder.train_log, 200), exit_code)
        error = self.rank_errors.get(crash["rank"]) if crash["rank"] is not None else self.worker_error
        if error:  # the failed rank's own exception; the others' are echoes of it (a peer reset the connection)
            crash["reason"] += f": {error}"
        return crash

    def _may_restart(self) -> bool:
        # across nodes (ours, or a Kubernetes job's) every node's ranks would have to restart together: not in this version
        return self.cluster is None and self.spec.nodes == 1 and self.restarts_used < self.spec.max_restarts

    def _restart(self, crash: Dict[str, Any]) -> None:
        """End what is left of the attempt, then start the next one from the newest complete checkpoint."""
        self._kill_leftover_ranks()
        checkpoint = self.folder.last_checkpoint()
        self.folder.discard_unfinished_checkpoints()  # a half-written folder would confuse the Trainer's rotation
        self.restarts_used += 1
        self.attempt += 1
        from_step = checkpoint.step if checkpoint is not None else 0
        self.resume_from = str(checkpoint.path) if checkpoint is not None else None
        self.events.emit(
            "restart",
            attempt=self.attempt,
            cause="crash",
            from_step=from_step,
            checkpoint=self.resume_from,
            reason=crash["reason"],
            failed_rank=crash.get("rank"),
            exit_code=crash.get("exit_code"),
            signal=crash.get("signal"),
            restarts_left=self.spec.max_restarts - self.restarts_used,
        )
        self.last_step = from_step
        self.worker_error = None
        self.rank_errors = {}
        self._step_times = []

    def _kill_leftover_ranks(self) -> None:
        """The launcher usually ends its other ranks itself; whatever survived it must not hold devices or ports."""
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        alive = [pid for pid in self.rank_pids.values() if process_alive(pid, "gaudi_nb.worker")]
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(process_alive(pid, "gaudi_nb.worker") for pid in alive):
            time.sleep(0.1)

    def _supervise(self) -> int:
        while True:
            exit_code = self._poll()
            self._observe_events()
            cost = self._emit_cost()
            self.folder.beat()
            if exit_code is not None:
                return exit_code
            if self.cluster is not None:
                self._cluster_tick(cost)  # the budget counts every node's spend; node 0 decides
            elif self.spec.budget_usd is not None and cost is not None and cost >= self.spec.budget_usd:
                self._request_stop("budget_exceeded")
            if self.stop_requested_at is None and self.folder.stop_reason():
                self._note_stop(self.folder.stop_reason() or "stopped")
            if self.stop_requested_at is not None and time.time() - self.stop_requested_at > STOP_GRACE_S:
                self._terminate()
            self._wait_tick(1.0)

    def _wait_tick(self, seconds: float) -> None:
        """One second between ticks, cut short when the launcher exits: the run ends the moment its ranks do."""
        if self.process is None:
            time.sleep(seconds)
            return
        try:
            self.process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            pass

    def _finish(self, exit_code: Optional[int], error: Optional[str] = None) -> str:
        try:
            self._observe_events()
            cost = self._emit_cost()
        except Exception:  # the run_end below matters more than a last cost event
            cost = self.last_cost
        requested = self.folder.stop_reason() or self.cluster_stop
        lines = tail_lines(self.folder.train_log)
        fields: Dict[str, Any] = {"exit_code": exit_code, "steps_completed": self.last_step, "usd": cost}
        if error is not None:
            status = "failed"
            fields["reason"] = error
            fields["last_log_lines"] = lines
        elif requested in ("budget_exceeded", "stopped"):
            status = requested
            fields["reason"] = self._stop_description(requested)
        elif exit_code == 0:
            status = "succeeded"
        else:
            status = "failed"
            fields["reason"] = self.peer_failure or self.worker_error or failure_reason(lines, exit_code or 0)
            if self.crash is not None and self.spec.max_restarts and self.cluster is None and self.spec.nodes == 1:
                fields["reason"] = f"{self.crash['reason']}; no restarts left ({self.restarts_used} of --max-restarts {self.spec.max_restarts} used)"
            fields["last_log_lines"] = lines
        if self.attempt > 1:
            fields["attempt"] = self.attempt
        self.events.emit("run_end", status=status, **fields)
        self.events.close()
        if self.trackers is not None:
            self.trackers.close()  # the run has ended for every view; this only delays the agent's exit
        if self.peers is not None:
            # node 0 tells every node (one that reconnects later too); the others tell node 0
            self.peers.send({"end": status, "reason": fields.get("reason")}, sticky=True)
            time.sleep(0.2)
            self.peers.close()
        if self.exporter is not None:
            self.exporter.close()
        return status

    def _stop_description(self, requested: str) -> str:
        what = "budget reached" if requested == "budget_exceeded" else "stopped on request"
        if self.killed_with is not None:
            return f"{what}, but the ranks did not stop within {STOP_GRACE_S:.0f} s: killed with {self.killed_with}, no checkpoint at the stop"
        return f"{what}: stopped after a checkpoint"

    # -- parts -----------------------------------------------------------
    def _request_stop(self, reason: str) -> None:
        if self.cluster is not None:
            # across nodes node 0 picks the step, in its loop (a signal handler must not block on a socket)
            self._wanted_stop = self._wanted_stop or reason
            return
        self.folder.request_stop(reason)
        self._note_stop(self.folder.stop_reason() or reason)

    def _note_stop(self, reason: str, stop_at: Optional[int] = None) -> None:
        if self.stop_requested_at is None:
            self.stop_requested_at = time.time()
            self.events.emit("stop_requested", reason=reason, at_step=self.last_step, **({"stop_at": stop_at} if stop_at is not None else {}))

    def _terminate(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.events.emit("log", level="warning", message=f"ranks did not stop within {STOP_GRACE_S:.0f} s of the request: terminating them")
        self.killed_with = self._kill_ranks()

    def _kill_ranks(self) -> Optional[str]:
        """SIGTERM the launcher's process group, SIGKILL it if it lingers; returns the signal that ended it."""
        if self.process is None or self.process.poll() is not None:
            return None
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
            return "SIGTERM"
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
            return "SIGKILL"
        except ProcessLookupError:
            return None

    def _emit_cost(self) -> Optional[float]:
        elapsed = self.metered_before_s + time.time() - self.started
        nodes = 1 if self.cluster is not None else self.spec.nodes  # across nodes each agent meters its own node
        usd = meter.cost_so_far(elapsed, self.price_per_hour, nodes)
        self.last_cost = usd
        self.events.emit("cost", elapsed_s=elapsed, usd=usd, price_per_hour=self.price_per_hour, nodes=nodes, budget_usd=self.spec.budget_usd)
        return usd

    def _observe_events(self) -> None:
        self._observer.apply(self._tailer.poll())

    def _poll(self) -> Optional[int]:
        """The launcher's exit code once it has ended; on a node whose ranks node 0's launcher
        started (DeepSpeed), node 0's end stands for it."""
        if self.process is not None:
            return self.process.poll()
        if self.cluster is not None and self.peers is not None:
            end = self.peer_ends.get(self.peers.leader_name)
            if end is not None:
                return 0 if end[0] == "succeeded" else 1
            return None
        return 1

    # -- several nodes -----------------------------------------------------------------------
    def _start_peers(self) -> None:
        assert self.cluster is not None
        self.peers = Peers(self.node, self.cluster, self._on_peer_message)
        warning = self.peers.start()
        if warning:
            self.events.emit("log", level="warning", message=warning)

    def _on_peer_message(self, name: str, message: Dict[str, Any]) -> None:
        """On the peers' threads: keep what arrived; the main loop acts on it (one exception below)."""
        if "usd" in message:
            self.peer_usd[name] = message["usd"]
        if "stop" in message:
            self._wanted_stop = self._wanted_stop or str(message["stop"])
        if "stop_at" in message and self._peer_stop is None:
            step, reason = int(message["stop_at"]), str(message.get("reason") or "stopped")
            # written here, not in the loop: the ranks of this node must read it before they reach the step
            self._write_stop_at(step, reason)
            self.cluster_stop = reason
            self._peer_stop = (step, reason)
        if "end" in message:
            self.peer_ends[name] = (str(message["end"]), str(message.get("reason") or ""))

    def _write_stop_at(self, step: int, reason: str) -> None:
        self.folder.control.mkdir(parents=True, exist_ok=True)
        tmp = self.folder.stop_at.with_suffix(".agent.tmp")
        tmp.write_text(json.dumps({"step": step, "reason": reason}))
        os.replace(tmp, self.folder.stop_at)

    def _cluster_tick(self, cost: Optional[float]) -> None:
        assert self.cluster is not None and self.peers is not None
        if self.peers.is_leader:
            asked = self._wanted_stop or _stop_asked(self.folder)
            total = self._run_usd(cost)
            if asked is None and self.spec.budget_usd is not None and total is not None and total >= self.spec.budget_usd:
                asked = "budget_exceeded"
            if asked is not None and self.cluster_stop is None:
                self._stop_every_node(asked)
        else:
            self.peers.send({"usd": cost})
            wanted = self._wanted_stop or self.folder.stop_reason()  # node 0 decides for every node
            if wanted is not None and not self._stop_forwarded and self.peers.connected():
                self.peers.send({"stop": wanted})
                self._stop_forwarded = True
            if self._peer_stop is not None:
                self._note_stop(self._peer_stop[1], stop_at=self._peer_stop[0])
        if self.peer_failure is None:
            for name, (status, reason) in list(self.peer_ends.items()):
                if status not in ENDED_WELL:
                    # its ranks are gone: ours would wait for them in the next collective
                    self.peer_failure = f"node {name} ended {status}: {reason}"
                    self.events.emit("log", level="error", message=f"{self.peer_failure}; ending the ranks on this node")
                    self._kill_ranks()
                    break

    def _run_usd(self, cost: Optional[float]) -> Optional[float]:
        """The run's spend so far: this node's and each other node's latest (one not heard from yet counts at this node's)."""
        if cost is None or self.cluster is None:
            return cost
        total = cost
        for name in self.cluster["nodes"][1:]:
            usd = self.peer_usd.get(name, cost)
            if usd is None:
                return None
            total += float(usd)
        return total

    def _stop_every_node(self, reason: str) -> None:
        """Node 0: pick the step every rank stops after, write it here and send it to every node."""
        assert self.peers is not None
        self._observe_events()
        if self.folder.stop_request.exists():
            # a stop asked in this folder (gaudi-nb of another version, a hand-written file): rank 0
            # decides step + 2 itself at its next step end, and that decision is the one to send
            try:
                step = int(json.loads(self.folder.stop_at.read_text())["step"])
            except (OSError, ValueError, KeyError):
                return  # not decided yet: the next tick sends it
        else:
            step = stop_step(self.last_step, self.fastest_step_s, self.spec.max_steps)
            self._write_stop_at(step, reason)
        self.cluster_stop = reason
        self.peers.send({"stop_at": step, "reason": reason}, sticky=True)
        self._note_stop(reason, stop_at=step)

    def _rank_pids(self) -> Dict[int, int]:
        """The worker processes under the launcher, by local rank."""
        if self.process is None:
            return {}
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.Error:
            return {}
        pids: Dict[int, int] = {}
        for child in children:
            try:
                if "gaudi_nb.worker" not in " ".join(child.cmdline()):
                    continue
                env = child.environ()
                rank = env.get("LOCAL_RANK") or env.get("OMPI_COMM_WORLD_LOCAL_RANK")
                if rank is not None:
                    pids[int(rank)] = child.pid
            except psutil.Error:
                continue
        return pids

    def _start_telemetry(self) -> Any:
        from ..telemetry.base import pick_source
        from ..telemetry.loop import TelemetryLoop

        try:
            # a run on part of a Gaudi node watches its own cards only, labelled by module id
            source = pick_source(pids={}, modules=self.run_modules)
        except Exception as exc:  # telemetry must never stop a run
            self.events.emit("log", level="warning", message=f"no telemetry: {exc}")
            return None

        def on_sample(sample: Any) -> None:
            self.events.emit("telemetry", **sample.to_dict())

        def on_error(message: str) -> None:
            # once per distinct failure (the loop dedupes), not every second
            self.events.emit("log", level="warning", message=message)

        loop = TelemetryLoop(source, on_sample, interval_s=1.0, on_error=on_error)
        self._follow_rank_pids(loop)
        loop.start()
        return loop

    def _follow_rank_pids(self, loop: Any) -> None:
        """Ranks appear a few seconds after the launcher (after each restart too); the host source needs their pids."""
        process, expected = self.process, self.spec.devices

        def refresh_pids() -> None:
            while process is not None and process.poll() is None:
                pids = self._rank_pids()
                if pids:
                    loop.set_pids(pids)
                if len(pids) >= expected:
                    return
                time.sleep(0.5)

        threading.Thread(target=refresh_pids, daemon=True).start()

    def _start_exporter(self) -> None:
        """Prometheus /metrics on loopback (a free port unless GAUDI_NB_METRICS_PORT says; "off" disables it)."""
        port = os.environ.get("GAUDI_NB_METRICS_PORT", "0")
        if port == "off":
            return
        try:
            from ..telemetry.prometheus import MetricsExporter

            self.exporter = MetricsExporter(port=int(port), address=os.environ.get("GAUDI_NB_METRICS_HOST", "127.0.0.1"))
        except Exception as exc:  # a taken port must not stop the run
            self.events.emit("log", level="warning", message=f"Prometheus exporter not started: {exc}")


STOP_NODES = "stop_nodes.json"  # in control/ of node 0: a client asks every node of the run to stop (targets/ssh.py)


def _stop_asked(folder: RunFolder) -> Optional[str]:
    """Node 0 of a run across nodes: the reason of a stop a client or this folder asked for, if any."""
    try:
        return str(json.loads((folder.control / STOP_NODES).read_text()).get("reason") or "stopped")
    except (OSError, ValueError):
        pass
    return folder.stop_reason()
