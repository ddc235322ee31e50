"""When and how a run stops: one policy object for a run on one node, one for a node of a run across nodes.

One node: a stop (client, budget, signal) is a file in the run's control/ folder; rank 0 reads it and
picks `step + 2`, its other ranks read that decision from the same folder within a step.
Several nodes: node 0's agent decides the step every rank stops after (stop_step) and sends it to
the other agents over their connection (peers.py); the budget counts every node's spend.

Either way a stop is a checkpoint and then the end: ranks that do not get there within
GAUDI_NB_STOP_GRACE_S are ended. A signal to the agent (SIGTERM: the machine or its scheduler is
going away) asks the same clean stop, but ends in bounded time whatever the ranks are doing: ranks
that have not reached a step (waiting in rendezvous for a node that never comes, loading) are ended
at once, others get GAUDI_NB_SIGNAL_GRACE_S to reach their checkpoint.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple

from ..events import EventWriter
from ..launch import LaunchPlan
from ..private import write_atomic
from ..rundir import RunFolder
from ..spec import RunSpec
from .attempts import stop_description
from .peers import Peers
from .placement import cluster_plan, one_node_plan, route_to
from .ranks import RankGroup

# After a stop request the ranks finish two steps and save a checkpoint; a run that
# takes longer than this is terminated (a hung rank must not keep spending money).
STOP_GRACE_S = float(os.environ.get("GAUDI_NB_STOP_GRACE_S", "300"))
# A signal to the agent: under Kubernetes' default 30 s between SIGTERM and SIGKILL, with room for the end.
SIGNAL_GRACE_S = float(os.environ.get("GAUDI_NB_SIGNAL_GRACE_S", "15"))
SIGNAL_KILL_WAIT_S = 5.0  # after a signal, how long the launcher gets between SIGTERM and SIGKILL
# Several nodes: node 0 picks a stop step this many seconds of steps ahead of rank 0, so that the
# step reaches every node's ranks before they get there (see stop_step).
STOP_MARGIN_S = float(os.environ.get("GAUDI_NB_STOP_MARGIN_S", "1"))
ENDED_WELL = ("succeeded", "stopped", "budget_exceeded")
STOP_NODES = "stop_nodes.json"  # in control/ of node 0: a client asks every node of the run to stop (targets/ssh.py)


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


def stop_asked(folder: RunFolder) -> Optional[str]:
    """Node 0 of a run across nodes: the reason of a stop a client or this folder asked for, if any."""
    try:
        return str(json.loads((folder.control / STOP_NODES).read_text()).get("reason") or "stopped")
    except (OSError, ValueError):
        pass
    return folder.stop_reason()


def stop_why(folder: RunFolder) -> Optional[str]:
    """What asked the stop where the request says (Slurm's time-limit warning); None for a person's stop or the budget."""
    for path in (folder.stop_request, folder.control / STOP_NODES):
        try:
            why = json.loads(path.read_text()).get("why")
        except (OSError, ValueError, AttributeError):
            continue
        return str(why) if why else None
    return None


class Progress(Protocol):
    """What a stop policy reads of the run's progress (the agent's observer provides it)."""

    last_step: int
    fastest_step_s: Optional[float]
    stepped: bool  # a step event of this attempt was seen


class StopPolicy:
    """The rules shared by both policies: the stop request from a signal, noting a stop, the grace."""

    nodes_metered = 1
    restarts_apply = False

    def __init__(self, folder: RunFolder, events: EventWriter, spec: RunSpec, progress: Progress, ranks: RankGroup) -> None:
        self.folder = folder
        self.events = events
        self.spec = spec
        self.progress = progress
        self.ranks = ranks
        self.requested_at: Optional[float] = None  # when this agent wrote its stop_requested
        self.killed_with: Optional[str] = None  # the signal that ended ranks which did not stop in time
        self.failure: Optional[str] = None  # another node's end that ended this one
        self._wanted: Optional[str] = None  # asked of this agent (signal, another node); acted on in tick()
        self._signalled: Optional[Tuple[str, float]] = None  # (signal name, when)
        self._ended_for_signal = False

    # -- what the loop calls -------------------------------------------------------------
    def request(self, reason: str, signal_name: Optional[str] = None) -> None:
        """Ask for a stop; safe in a signal handler: it only records the wish, tick() acts on it."""
        self._wanted = self._wanted or reason
        if signal_name is not None and self._signalled is None:
            self._signalled = (signal_name, time.monotonic())

    def start(self) -> None:
        """Before the ranks start."""

    def plan(self, worker: List[str], *, accelerator: str, launcher: str) -> Tuple[Optional[LaunchPlan], Dict[str, Any]]:
        """This node's launch plan (None: another node starts its ranks) and where it stands, for run_start."""
        raise NotImplementedError

    def tick(self, cost: Optional[float]) -> None:
        """Once a loop: decide, note a stop asked in the folder, end ranks that had their time."""
        self._decide(cost)
        if self.requested_at is None and self.folder.stop_reason():
            self.note(self.folder.stop_reason() or "stopped")
        self._enforce_grace()

    def ended_elsewhere(self) -> Optional[int]:
        """The exit code that stands for this node's ranks where another node started them; None while they run."""
        return 1

    def end_reason(self) -> Optional[str]:
        """The stop that ended the run (its final status), or None."""
        signalled = self._wanted if self._signalled is not None else None
        return self.folder.stop_reason() or self._agreed() or signalled

    def stopping(self) -> bool:
        """A stop was asked or enforced: an attempt that ends now did not crash."""
        return bool(self.requested_at is not None or self.folder.stop_reason() or self._agreed() or self.killed_with or self._signalled)

    @property
    def signalled(self) -> Optional[str]:
        """The signal that asked this agent to stop, if one did."""
        return self._signalled[0] if self._signalled is not None else None

    def description(self, stop: str) -> str:
        signalled = self._signalled[0] if self._ended_for_signal and self._signalled else None
        return stop_description(stop, self.killed_with, STOP_GRACE_S, signalled, why=stop_why(self.folder))

    def finish(self, status: str, reason: Optional[str]) -> None:
        """After run_end."""

    # -- shared parts ------------------------------------------------------------------------
    def _decide(self, cost: Optional[float]) -> None:
        raise NotImplementedError

    def _agreed(self) -> Optional[str]:
        return None

    def _over_budget(self, usd: Optional[float]) -> bool:
        return self.spec.budget_usd is not None and usd is not None and usd >= self.spec.budget_usd

    def note(self, reason: str, stop_at: Optional[int] = None) -> None:
        if self.requested_at is None:
            self.requested_at = time.time()
            self.events.emit("stop_requested", reason=reason, at_step=self.progress.last_step, **({"stop_at": stop_at} if stop_at is not None else {}))

    def _enforce_grace(self) -> None:
        if not self.ranks.running():
            return
        if self._signalled is not None:
            name, since = self._signalled
            waited = time.monotonic() - since
            if self.progress.stepped and waited < SIGNAL_GRACE_S:
                return
            why = "no rank had reached a step" if not self.progress.stepped else f"the ranks did not stop within {SIGNAL_GRACE_S:.0f} s"
            self.events.emit("log", level="warning", message=f"the agent got {name} and {why}: ending the ranks")
            self._ended_for_signal = True
            self.killed_with = self.ranks.kill(term_wait_s=SIGNAL_KILL_WAIT_S)
        elif self.requested_at is not None and time.time() - self.requested_at > STOP_GRACE_S:
            self.events.emit("log", level="warning", message=f"ranks did not stop within {STOP_GRACE_S:.0f} s of the request: terminating them")
            self.killed_with = self.ranks.kill()


class OneNodeStop(StopPolicy):
    """A run on one node: the stop is a file in this run's folder; the budget is this node's spend."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.nodes_metered = self.spec.nodes  # a cluster-started job's node meters every node (one agent per pod)
        self.restarts_apply = self.spec.nodes == 1

    def plan(self, worker: List[str], *, accelerator: str, launcher: str) -> Tuple[Optional[LaunchPlan], Dict[str, Any]]:
        return one_node_plan(self.spec, worker, accelerator=accelerator, launcher=launcher), {}

    def _decide(self, cost: Optional[float]) -> None:
        if self._wanted is None and self._over_budget(cost):
            self._wanted = "budget_exceeded"
        if self._wanted is not None and self.requested_at is None:
            self.folder.request_stop(self._wanted)
            self.note(self.folder.stop_reason() or self._wanted)


class SeveralNodesStop(StopPolicy):
    """One node of a run across nodes: node 0's agent decides every stop and its step; the others
    forward what they are asked, report their spend, and write the step node 0 sends them."""

    def __init__(self, *args: Any, node: str, cluster: Dict[str, Any], refresh: Callable[[], Any]) -> None:
        super().__init__(*args)
        self.node = node
        self.cluster = cluster
        self.refresh = refresh  # reads the newest events before the step is picked
        self.peers = Peers(node, cluster, self._on_message)
        self.agreed: Optional[str] = None  # the reason of the stop every node agreed on
        self.peer_usd: Dict[str, Optional[float]] = {}
        self.peer_ends: Dict[str, Tuple[str, str]] = {}
        self._peer_stop: Optional[Tuple[int, str]] = None  # (step, reason) from node 0, not yet written as an event
        self._forwarded = False

    def start(self) -> None:
        warning = self.peers.start()
        if warning:
            self.events.emit("log", level="warning", message=warning)

    def plan(self, worker: List[str], *, accelerator: str, launcher: str) -> Tuple[Optional[LaunchPlan], Dict[str, Any]]:
        local_addr, ifname = route_to(str(self.cluster["master_addr"]))
        plan = cluster_plan(self.spec, self.cluster, worker, python=sys.executable, accelerator=accelerator, launcher=launcher, local_addr=local_addr, ifname=ifname)
        c = self.cluster
        return plan, {"node_rank": c["node_rank"], "nodes": c["nodes"], "master_addr": c["master_addr"], "local_addr": local_addr, "ifname": ifname}

    def ended_elsewhere(self) -> Optional[int]:
        """DeepSpeed: node 0's launcher started this node's ranks, so node 0's end stands for them."""
        end = self.peer_ends.get(self.peers.leader_name)
        if end is not None:
            return 0 if end[0] == "succeeded" else 1
        return 0 if self._signalled is not None else None

    def _agreed(self) -> Optional[str]:
        return self.agreed

    def finish(self, status: str, reason: Optional[str]) -> None:
        # node 0 tells every node (one that reconnects later too); the others tell node 0
        self.peers.send({"end": status, "reason": reason}, sticky=True)
        time.sleep(0.2)
        self.peers.close()

    # -- on the peers' threads -------------------------------------------------------------
    def _on_message(self, name: str, message: Dict[str, Any]) -> None:
        """Keep what arrived; the loop acts on it (one exception below)."""
        if "usd" in message:
            self.peer_usd[name] = message["usd"]
        if "stop" in message:
            self._wanted = self._wanted or str(message["stop"])
        if "stop_at" in message and self._peer_stop is None:
            step, reason = int(message["stop_at"]), str(message.get("reason") or "stopped")
            # written here, not in the loop: the ranks of this node must read it before they reach the step
            self._write_stop_at(step, reason)
            self.agreed = reason
            self._peer_stop = (step, reason)
        if "end" in message:
            self.peer_ends[name] = (str(message["end"]), str(message.get("reason") or ""))

    def _write_stop_at(self, step: int, reason: str) -> None:
        self.folder.control.mkdir(parents=True, exist_ok=True)
        write_atomic(self.folder.stop_at, json.dumps({"step": step, "reason": reason}))

    # -- in the loop ----------------------------------------------------------------------------
    def _decide(self, cost: Optional[float]) -> None:
        if self.peers.is_leader:
            asked = self._wanted or stop_asked(self.folder)
            if asked is None and self._over_budget(self.run_usd(cost)):
                asked = "budget_exceeded"
            if asked is not None and self.agreed is None:
                self._stop_every_node(asked)
        else:
            self.peers.send({"usd": cost})
            wanted = self._wanted or self.folder.stop_reason()  # node 0 decides for every node
            if wanted is not None and not self._forwarded and self.peers.connected():
                self.peers.send({"stop": wanted})
                self._forwarded = True
            if self._peer_stop is not None:
                self.note(self._peer_stop[1], stop_at=self._peer_stop[0])
        self._follow_peer_failure()

    def _follow_peer_failure(self) -> None:
        if self.failure is not None:
            return
        for name, (status, reason) in list(self.peer_ends.items()):
            if status not in ENDED_WELL:
                # its ranks are gone: ours would wait for them in the next collective
                self.failure = f"node {name} ended {status}: {reason}"
                self.events.emit("log", level="error", message=f"{self.failure}; ending the ranks on this node")
                self.ranks.kill()
                return

    def run_usd(self, cost: Optional[float]) -> Optional[float]:
        """The run's spend so far: this node's and each other node's latest (one not heard from yet counts at this node's)."""
        if cost is None:
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
        self.refresh()
        if self.folder.stop_request.exists():
            # a stop asked in this folder (gaudi-nb of another version, a hand-written file): rank 0
            # decides step + 2 itself at its next step end, and that decision is the one to send
            try:
                step = int(json.loads(self.folder.stop_at.read_text())["step"])
            except (OSError, ValueError, KeyError):
                return  # not decided yet: the next tick sends it
        else:
            step = stop_step(self.progress.last_step, self.progress.fastest_step_s, self.spec.max_steps)
            self._write_stop_at(step, reason)
        self.agreed = reason
        self.peers.send({"stop_at": step, "reason": reason}, sticky=True)
        self.note(reason, stop_at=step)


def make_policy(folder: RunFolder, events: EventWriter, spec: RunSpec, progress: Progress, ranks: RankGroup, *, node: str,
                cluster: Optional[Dict[str, Any]], refresh: Callable[[], Any]) -> StopPolicy:
    """The policy for run.json's `cluster` (None: one node)."""
    if cluster is None:
        return OneNodeStop(folder, events, spec, progress, ranks)
    return SeveralNodesStop(folder, events, spec, progress, ranks, node=node, cluster=cluster, refresh=refresh)
