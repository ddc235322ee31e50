"""Autostop, the daemon on a provisioned machine: it stops or terminates its own machine when idle or over budget (python -m gaudi_nb.agent.autostop)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

from ..cost import billing
from ..errors import GaudiNbError, SpecError
from ..formatting import money, rate
from ..private import write_atomic

ACTIONS = ("stop", "terminate")
AUTOSTOP_DIR = "autostop"  # under the node's GAUDI_NB_HOME
MARKER = "gaudi_nb.agent.autostop"  # in the process's command line: a reused pid is not autostop
# Where the provider can tag a machine, the reason goes on it too: a terminated machine's disk
# (and its last_action.json) is gone, its tags are still listed for a while.
TAG_AUTOSTOP = "gaudi_nb:autostop"
# A run folder without an agent (a batch notebook run in its client, or a run whose client is
# still copying its inputs) counts as active while it has no run_end and wrote something this recently.
AGENTLESS_QUIET_S = 600.0


# -- configuration ---------------------------------------------------------------------


@dataclass
class AutostopConfig:
    """What autostop on one machine watches for; written to <home>/autostop/config.json by start_on_node."""

    provider: str  # "aws" | "ibm": the registry name in nodes.providers
    region: str
    instance_id: str  # this machine, as the provider names it
    launched_at: float  # epoch seconds: the start of the machine's current running interval
    billed_before_s: float = 0.0  # the seconds it ran before that (it was stopped and started again): spend counts them too
    action: str = "stop"  # "stop" (disk kept, compute not billed) or "terminate" (everything gone)
    idle_minutes: Optional[float] = None  # None: never stopped for being idle
    budget_usd: Optional[float] = None  # None: no budget
    price_per_hour: Optional[float] = None  # None (unknown): the budget cannot be enforced
    utilization_threshold_pct: float = 10.0  # accelerator utilization below this is "low"
    utilization_window_s: float = 300.0  # ... and must stay below it for this long
    check_interval_s: float = 30.0
    stop_grace_s: float = 300.0  # over budget: how long runs asked to stop get before the machine goes
    act_again_after_s: float = 600.0  # a machine still up this long after a successful call is asked again
    node: Optional[str] = None  # gaudi_nb's name for the machine (for the record)
    home: Optional[str] = None  # the node's GAUDI_NB_HOME (default: the config's folder's parent)
    telemetry_source: Optional[str] = None  # default: the first available, as the agent picks
    # Non-secret variables for the provider's SDK (AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, VPC_URL, ...).
    # Credentials belong to the machine (an instance role), not to this file.
    environment: Dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "AutostopConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise SpecError(f"unknown autostop setting(s) {', '.join(unknown)}: the settings are {', '.join(sorted(names))}")
        missing = [name for name in ("provider", "region", "instance_id", "launched_at") if data.get(name) in (None, "")]
        if missing:
            raise SpecError(f"autostop needs {', '.join(missing)}")
        config = cls(**data)
        if config.action not in ACTIONS:
            raise SpecError(f"autostop's action is '{config.action}': use stop (the disk is kept) or terminate (nothing is kept)")
        for name in ("idle_minutes", "budget_usd", "price_per_hour"):
            value = getattr(config, name)
            if value is not None and not (math.isfinite(float(value)) and float(value) >= 0):  # nan would never be reached
                raise SpecError(f"{name} is {value}: give a number of 0 or more, or leave it out")
        if not config.check_interval_s > 0:  # nan too
            raise SpecError(f"check_interval_s is {config.check_interval_s}: give a positive number of seconds")
        return config

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def autostop_dir(home: "str | Path") -> Path:
    return Path(home) / AUTOSTOP_DIR


def config_path(home: "str | Path") -> Path:
    return autostop_dir(home) / "config.json"


def load_config(path: "str | Path") -> AutostopConfig:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SpecError(f"cannot read autostop's config {path} ({exc}): start it again with start_on_node") from None
    config = AutostopConfig.from_dict(data)
    if not config.home:
        config.home = str(path.resolve().parent.parent)
    return config


# -- the pure part: what autostop knows, and what it decides ------------------------------


@dataclass
class AutostopState:
    """What the loop has seen so far; decide() reads only this and the time."""

    config: AutostopConfig
    started_at: float
    active_runs: List[str] = field(default_factory=list)
    last_run_at: Optional[float] = None  # the last tick at which a run was active
    samples: List[Tuple[float, Optional[float]]] = field(default_factory=list)  # (t, utilization %; None: unreadable)
    runs_asked_to_stop_at: Optional[float] = None
    acted_at: Optional[float] = None  # the last successful provider call
    # A machine stopped for its budget and started again by someone is still over budget; it gets
    # stop_grace_s to have its budget raised (config.json is read again at every check) before it goes again.
    budget_hold_until: Optional[float] = None


def utilization_of(sample: Any) -> Optional[float]:
    """The busiest accelerator's utilization in a telemetry Sample; on a host without one, the host's CPU.

    None when the source reported nothing to read.
    """
    known = [float(d.utilization_pct) for d in sample.devices if d.kind in ("hpu", "cuda") and d.utilization_pct is not None]
    if known:
        return max(known)
    if any(d.kind in ("hpu", "cuda") for d in sample.devices):
        return None  # cards seen, utilization unreadable
    return float(sample.host.cpu_percent) if sample.host is not None else None


def billed_s(config: AutostopConfig, now: float) -> float:
    """The seconds this machine has been billed: the time it ran before, and since its last start."""
    return float(config.billed_before_s) + max(0.0, now - float(config.launched_at))


def spend_usd(config: AutostopConfig, now: float) -> Optional[float]:
    """The node's spend at its hourly price (billing's rule, as every view counts it); None where the price is unknown."""
    return billing.cost_so_far(billed_s(config, now), config.price_per_hour)


def idle_rule(config: AutostopConfig) -> "billing.IdleRule":
    """billing's one idle rule, with this machine's thresholds from its settings."""
    return billing.IdleRule(utilization_below_pct=float(config.utilization_threshold_pct), window_s=float(config.utilization_window_s))


def over_budget(state: AutostopState, now: float) -> bool:
    spent = spend_usd(state.config, now)
    return state.config.budget_usd is not None and spent is not None and spent >= float(state.config.budget_usd)


def budget_due(state: AutostopState, now: float) -> bool:
    """Over budget and not in the hold a machine gets when started again after a budget stop."""
    return over_budget(state, now) and not (state.budget_hold_until is not None and now < state.budget_hold_until)


def idle_for_s(state: AutostopState, now: float) -> float:
    """Seconds without an active run (counted from autostop's start, so a reboot restarts the clock)."""
    if state.active_runs:
        return 0.0
    return max(0.0, now - max(state.started_at, state.last_run_at or state.started_at))


def machine_idle(state: AutostopState, now: float) -> bool:
    """billing.is_idle over what autostop has sampled since it started (a reboot starts the window again)."""
    return billing.is_idle(state.samples, now, active_runs=len(state.active_runs), watched_since=state.started_at, rule=idle_rule(state.config))


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def decide(state: AutostopState, now: float) -> Optional[str]:
    """Why the machine should go now ("budget: ..." or "idle: ..."), or None to keep it.

    A run whose agent is alive is busy whatever the cards do, so graph-compilation warm-up
    before the first step (cards quiet, agent alive) is never idle.
    """
    config = state.config
    if state.acted_at is not None and now - state.acted_at < config.act_again_after_s:
        return None  # asked already; the machine is going down
    if budget_due(state, now):
        why = (
            f"budget: the node has spent {money(spend_usd(config, now))} of its {money(config.budget_usd)} budget "
            f"({billed_s(config, now) / 3600:.2f} h at {rate(config.price_per_hour)})"
        )
        if not state.active_runs:
            return why
        asked = state.runs_asked_to_stop_at
        if asked is not None and now - asked >= config.stop_grace_s:
            return f"{why}; {len(state.active_runs)} run(s) still going {_minutes(config.stop_grace_s)} after being asked to stop ({', '.join(state.active_runs)})"
        return None  # the runs save a checkpoint and stop first
    if config.idle_minutes is None or state.active_runs:
        return None  # a run holds the machine: its agent ends it (warm-up looks idle to the cards)
    idle = idle_for_s(state, now)
    if idle >= float(config.idle_minutes) * 60 and machine_idle(state, now):
        return (
            f"idle: no run for {_minutes(idle)} (idle_minutes {float(config.idle_minutes):g}) and accelerator "
            f"utilization below {float(config.utilization_threshold_pct):g}% over the last {_minutes(config.utilization_window_s)}"
        )
    return None


# -- what the node has: runs and utilization ---------------------------------------------------


def _newest_mtime(folder: Path) -> float:
    times = []
    for path in (folder, folder / "events.jsonl", folder / "run.json", folder / "spec.json"):
        try:
            times.append(path.stat().st_mtime)
        except OSError:
            pass
    return max(times, default=0.0)


def active_runs(home: "str | Path", now: Optional[float] = None) -> List[str]:
    """The runs under <home>/runs that are going (their folders' names there: rundir.node_run_folders): their agent is alive (warm-up included),
    or they have no agent yet, no run_end and wrote something in the last AGENTLESS_QUIET_S."""
    from ..events import ended_in_file
    from ..rundir import node_run_folders
    from .liveness import agent_alive

    now = now or time.time()
    found: List[str] = []
    for name, folder in node_run_folders(Path(home) / "runs"):  # a run across nodes: this node's own folder
        if folder.agent_process_id() is not None:
            if agent_alive(folder):
                found.append(name)
        elif not ended_in_file(folder.events) and now - _newest_mtime(folder.path) < AGENTLESS_QUIET_S:
            found.append(name)
    return found


class Utilization:
    """The telemetry source the agent would pick (HLML, hl-smi, NVML, else host), read once a tick."""

    def __init__(self, prefer: Optional[str] = None) -> None:
        self.source: Any = None
        self.error: Optional[str] = None
        try:
            from ..telemetry.base import pick_source

            self.source = pick_source(prefer=prefer)
        except Exception as exc:  # no source: the runs alone decide
            self.error = f"no telemetry source: {exc}"

    @property
    def name(self) -> str:
        return getattr(self.source, "name", "none")

    def read(self) -> Optional[float]:
        if self.source is None:
            return None
        try:
            value = utilization_of(self.source.sample())
            self.error = None
            return value
        except Exception as exc:
            self.error = f"telemetry ({self.name}) failed: {exc}"
            return None


# -- files the client reads ----------------------------------------------------------------


def write_json(path: Path, data: Dict[str, Any]) -> None:
    """Atomically, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data, indent=1) + "\n")


def read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_last_action(home: "str | Path") -> Optional[Dict[str, Any]]:
    """What autostop last did (or tried) to this machine and why; None if it never acted.

    Keys: kind ("idle" | "budget"), reason, action ("stop" | "terminate"), t (epoch), when (UTC),
    spend_usd, provider, region, instance_id, node, status ("acting", "requested" or "failed"), error.
    """
    return read_json(autostop_dir(home) / "last_action.json")


def read_status(home: "str | Path") -> Optional[Dict[str, Any]]:
    """Autostop's latest tick (written every check): idle time, spend, active runs, utilization, pid."""
    return read_json(autostop_dir(home) / "status.json")


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


# -- the loop ----------------------------------------------------------------------------------


class Autostop:
    """One node's loop: look at runs and cards, decide, act through the provider; never crash."""

    def __init__(self, config: AutostopConfig, now: Optional[float] = None, config_file: Optional[Path] = None) -> None:
        self.config = config
        self.home = Path(config.home or os.environ.get("GAUDI_NB_HOME") or "~/.gaudi_nb").expanduser()
        self.dir = autostop_dir(self.home)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state = AutostopState(config=config, started_at=now or time.time())
        self.utilization = Utilization(config.telemetry_source)
        self._said: Dict[str, str] = {}  # a message said once per topic until it changes
        self._asked: Set[str] = set()  # runs asked to stop for the budget (one started later is asked too)
        self.config_file = config_file
        self._config_mtime = self._mtime()
        last = read_last_action(self.home)
        if last and last.get("kind") == "budget" and last.get("status") == "requested":
            self.state.budget_hold_until = self.state.started_at + float(config.stop_grace_s)
            self.log(
                f"this machine was stopped for its budget at {last.get('when')} and has been started again: it goes again in "
                f"{_minutes(config.stop_grace_s)} unless budget_usd in {self.config_file or 'config.json'} is raised"
            )

    def _mtime(self) -> Optional[float]:
        try:
            return self.config_file.stat().st_mtime if self.config_file else None
        except OSError:
            return None

    def _reload(self) -> None:
        """Settings changed in config.json apply from the next check (a raised budget, other idle minutes)."""
        mtime = self._mtime()
        if mtime is None or mtime == self._config_mtime or self.config_file is None:
            return
        self._config_mtime = mtime
        try:
            config = load_config(self.config_file)
        except GaudiNbError as exc:
            self.log(f"kept the previous settings: {exc}")
            return
        os.environ.update({str(k): str(v) for k, v in (config.environment or {}).items()})
        self.config = self.state.config = config
        self.log(f"settings read again from {self.config_file}: {config.action} after {config.idle_minutes} idle min, budget {config.budget_usd}")

    def log(self, message: str) -> None:
        with open(self.dir / "autostop.log", "a") as fh:
            fh.write(f"{_utc(time.time())} {message}\n")

    def _say_once(self, topic: str, message: Optional[str]) -> None:
        if message and self._said.get(topic) != message:
            self.log(message)
        self._said[topic] = message or ""

    def tick(self, now: Optional[float] = None) -> Optional[str]:
        """One check; returns the reason it acted for, if it did."""
        now = now or time.time()
        self._reload()
        state, config = self.state, self.config
        state.active_runs = active_runs(self.home, now)
        if state.active_runs:
            state.last_run_at = now
        state.samples.append((now, self.utilization.read()))
        keep_from = now - float(config.utilization_window_s) - 2 * float(config.check_interval_s)
        state.samples = [s for s in state.samples if s[0] >= keep_from]
        self._say_once("telemetry", self.utilization.error)
        if config.budget_usd is not None and config.price_per_hour is None:
            self._say_once("price", f"budget ${config.budget_usd:g} is not enforced: this machine's price per hour is unknown (give price_per_hour)")
        if budget_due(state, now) and set(state.active_runs) - self._asked:
            self._ask_runs_to_stop(now)
        reason = decide(state, now)
        if reason:
            self.act(reason, now)
        self._write_status(now, reason)
        return reason

    def _ask_runs_to_stop(self, now: float) -> None:
        from ..rundir import RunFolder

        new = [run_id for run_id in self.state.active_runs if run_id not in self._asked]
        for run_id in new:
            self._asked.add(run_id)
            try:
                # the agent reads the reason as the run's final status: the node's budget ends it as budget_exceeded
                RunFolder(self.home / "runs" / run_id).request_stop("budget_exceeded")
            except OSError as exc:
                self.log(f"could not ask run {run_id} to stop: {exc}")
        if self.state.runs_asked_to_stop_at is None:
            self.state.runs_asked_to_stop_at = now  # the grace counts from the first request
        self.log(
            f"the node's budget of {money(self.config.budget_usd)} is spent ({money(spend_usd(self.config, now))}); asked {len(new)} run(s) "
            f"to stop after a checkpoint ({', '.join(new)}), {self.config.stop_grace_s:g} s grace before the {self.config.action}"
        )

    def act(self, reason: str, now: float) -> bool:
        """Record why, then stop or terminate this machine through its provider; True if the call succeeded."""
        config = self.config
        record: Dict[str, Any] = {
            "kind": reason.partition(":")[0],
            "reason": reason,
            "action": config.action,
            "t": now,
            "when": _utc(now),
            "spend_usd": spend_usd(config, now),
            "provider": config.provider,
            "region": config.region,
            "instance_id": config.instance_id,
            "node": config.node,
            "status": "acting",
        }
        # Written before the call: a stop that succeeds ends this process with the machine.
        self._record(record)
        self.log(f"{config.action} {config.instance_id} ({config.provider} {config.region}): {reason}")
        try:
            # The cloud's API, as the client's provisioning reaches it: the one client-side package the
            # node side imports (nodes/__init__ imports nothing; the SDK is the machine's own extra).
            from ..nodes.providers import provider

            cloud = provider(config.provider, config.region)
            tag = getattr(cloud, "tag_instances", None)
            if callable(tag):
                try:
                    tag([config.instance_id], {TAG_AUTOSTOP: reason[:255]})
                except Exception as exc:  # the tag is a courtesy; the stop is what matters
                    self.log(f"could not tag {config.instance_id} with the reason: {exc}")
            if config.action == "terminate":
                cloud.terminate_instances([config.instance_id])
            else:
                cloud.stop_instances([config.instance_id])
        except Exception as exc:  # logged and retried next tick: the loop must outlive a flaky API
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:500])
            self._record(record)
            self.log(f"{config.action} failed, retrying next check: {record['error']}")
            return False
        self.state.acted_at = now
        record["status"] = "requested"
        self._record(record)
        self.log(f"{config.action} requested for {config.instance_id}")
        return True

    def _record(self, record: Dict[str, Any]) -> None:
        write_json(self.dir / "last_action.json", record)
        with open(self.dir / "actions.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def _write_status(self, now: float, reason: Optional[str]) -> None:
        state = self.state
        last = state.samples[-1][1] if state.samples else None
        write_json(
            self.dir / "status.json",
            {
                "pid": os.getpid(),
                "t": now,
                "started_at": state.started_at,
                "active_runs": state.active_runs,
                "idle_s": idle_for_s(state, now),
                "utilization_pct": last,
                "idle": machine_idle(state, now),
                "telemetry_source": self.utilization.name,
                "spend_usd": spend_usd(self.config, now),
                "budget_usd": self.config.budget_usd,
                "acting_for": reason,
                "acted_at": state.acted_at,
            },
        )

    def run_forever(self) -> None:
        self.log(
            f"watching {self.config.instance_id} ({self.config.provider} {self.config.region}, pid {os.getpid()}): "
            f"{self.config.action} after {self.config.idle_minutes} idle min, budget {self.config.budget_usd}, "
            f"telemetry {self.utilization.name}, every {self.config.check_interval_s:g} s"
        )
        while True:
            started = time.monotonic()
            try:
                self.tick()
            except Exception as exc:  # never crash: an unwatched machine burns money
                self.log(f"check failed ({type(exc).__name__}: {exc}); trying again next check")
            time.sleep(max(0.0, float(self.config.check_interval_s) - (time.monotonic() - started)))


if __name__ == "__main__":
    # The command line (run, start, status, last-action, stop) and the process it manages live in
    # autostop_service; this module stays the daemon's logic.
    from .autostop_service import command_line

    command_line()
