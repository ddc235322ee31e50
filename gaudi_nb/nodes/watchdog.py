"""Autostop on the node: a watchdog that stops or terminates its own machine when idle or over budget (python -m gaudi_nb.nodes.watchdog)."""
from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import json
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

from ..cost import billing
from ..errors import GaudiNbError, SpecError
from ..formatting import money, rate

ACTIONS = ("stop", "terminate")
WATCHDOG_DIR = "watchdog"  # under the node's GAUDI_NB_HOME
UNIT = "gaudi-nb-watchdog.service"
CRON_MARKER = "# gaudi_nb watchdog"
MARKER = "gaudi_nb.nodes.watchdog"  # in the process's command line: a reused pid is not the watchdog
# Where the provider can tag a machine, the reason goes on it too: a terminated machine's disk
# (and its last_action.json) is gone, its tags are still listed for a while.
TAG_AUTOSTOP = "gaudi_nb:autostop"
# A run folder without an agent (a batch notebook run in its client, or a run whose client is
# still copying its inputs) counts as active while it has no run_end and wrote something this recently.
AGENTLESS_QUIET_S = 600.0


# -- configuration ---------------------------------------------------------------------


@dataclass
class WatchdogConfig:
    """What the watchdog on one machine watches for; written to <home>/watchdog/config.json by start_on_node."""

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
    def from_dict(cls, data: Dict[str, Any]) -> "WatchdogConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise SpecError(f"unknown watchdog setting(s) {', '.join(unknown)}: the settings are {', '.join(sorted(names))}")
        missing = [name for name in ("provider", "region", "instance_id", "launched_at") if data.get(name) in (None, "")]
        if missing:
            raise SpecError(f"the watchdog needs {', '.join(missing)}")
        config = cls(**data)
        if config.action not in ACTIONS:
            raise SpecError(f"the watchdog's action is '{config.action}': use stop (the disk is kept) or terminate (nothing is kept)")
        for name in ("idle_minutes", "budget_usd", "price_per_hour"):
            value = getattr(config, name)
            if value is not None and float(value) < 0:
                raise SpecError(f"{name} is {value}: give a number of 0 or more, or leave it out")
        if config.check_interval_s <= 0:
            raise SpecError(f"check_interval_s is {config.check_interval_s}: give a positive number of seconds")
        return config

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def watchdog_dir(home: "str | Path") -> Path:
    return Path(home) / WATCHDOG_DIR


def config_path(home: "str | Path") -> Path:
    return watchdog_dir(home) / "config.json"


def load_config(path: "str | Path") -> WatchdogConfig:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SpecError(f"cannot read the watchdog's config {path} ({exc}): start it again with start_on_node") from None
    config = WatchdogConfig.from_dict(data)
    if not config.home:
        config.home = str(path.resolve().parent.parent)
    return config


# -- the pure part: what the watchdog knows, and what it decides ------------------------------


@dataclass
class WatchdogState:
    """What the loop has seen so far; decide() reads only this and the time."""

    config: WatchdogConfig
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


def billed_s(config: WatchdogConfig, now: float) -> float:
    """The seconds this machine has been billed: the time it ran before, and since its last start."""
    return float(config.billed_before_s) + max(0.0, now - float(config.launched_at))


def spend_usd(config: WatchdogConfig, now: float) -> Optional[float]:
    """The node's spend at its hourly price (billing's rule, as every view counts it); None where the price is unknown."""
    return billing.cost_so_far(billed_s(config, now), config.price_per_hour)


def idle_rule(config: WatchdogConfig) -> "billing.IdleRule":
    """billing's one idle rule, with this machine's thresholds from its settings."""
    return billing.IdleRule(utilization_below_pct=float(config.utilization_threshold_pct), window_s=float(config.utilization_window_s))


def over_budget(state: WatchdogState, now: float) -> bool:
    spent = spend_usd(state.config, now)
    return state.config.budget_usd is not None and spent is not None and spent >= float(state.config.budget_usd)


def budget_due(state: WatchdogState, now: float) -> bool:
    """Over budget and not in the hold a machine gets when started again after a budget stop."""
    return over_budget(state, now) and not (state.budget_hold_until is not None and now < state.budget_hold_until)


def idle_for_s(state: WatchdogState, now: float) -> float:
    """Seconds without an active run (counted from the watchdog's start, so a reboot restarts the clock)."""
    if state.active_runs:
        return 0.0
    return max(0.0, now - max(state.started_at, state.last_run_at or state.started_at))


def machine_idle(state: WatchdogState, now: float) -> bool:
    """billing.is_idle over what this watchdog has sampled since it started (a reboot starts the window again)."""
    return billing.is_idle(state.samples, now, active_runs=len(state.active_runs), watched_since=state.started_at, rule=idle_rule(state.config))


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def decide(state: WatchdogState, now: float) -> Optional[str]:
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
    from ..agent.liveness import agent_alive
    from ..events import ended_in_file
    from ..rundir import node_run_folders

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


def _write_json(path: Path, data: Dict[str, Any]) -> None:
    """Atomically, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> Optional[Dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_last_action(home: "str | Path") -> Optional[Dict[str, Any]]:
    """What the watchdog last did (or tried) to this machine and why; None if it never acted.

    Keys: kind ("idle" | "budget"), reason, action ("stop" | "terminate"), t (epoch), when (UTC),
    spend_usd, provider, region, instance_id, node, status ("acting", "requested" or "failed"), error.
    """
    return _read_json(watchdog_dir(home) / "last_action.json")


def read_status(home: "str | Path") -> Optional[Dict[str, Any]]:
    """The watchdog's latest tick (written every check): idle time, spend, active runs, utilization, pid."""
    return _read_json(watchdog_dir(home) / "status.json")


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


# -- the loop ----------------------------------------------------------------------------------


class Watchdog:
    """One node's loop: look at runs and cards, decide, act through the provider; never crash."""

    def __init__(self, config: WatchdogConfig, now: Optional[float] = None, config_file: Optional[Path] = None) -> None:
        self.config = config
        self.home = Path(config.home or os.environ.get("GAUDI_NB_HOME") or "~/.gaudi_nb").expanduser()
        self.dir = watchdog_dir(self.home)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state = WatchdogState(config=config, started_at=now or time.time())
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
        with open(self.dir / "watchdog.log", "a") as fh:
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
            from .providers import provider

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
        _write_json(self.dir / "last_action.json", record)
        with open(self.dir / "actions.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def _write_status(self, now: float, reason: Optional[str]) -> None:
        state = self.state
        last = state.samples[-1][1] if state.samples else None
        _write_json(
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


def _take_lock(directory: Path, name: str, blocking: bool) -> Optional[Any]:
    directory.mkdir(parents=True, exist_ok=True)
    handle = open(directory / name, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except OSError:
        handle.close()
        return None
    return handle


def run(path: "str | Path") -> int:
    """The node-side loop (`run --config PATH`); one per home (a lock), until killed."""
    config = load_config(path)
    os.environ.update({str(k): str(v) for k, v in (config.environment or {}).items()})
    home = Path(config.home or ".")
    lock = _take_lock(watchdog_dir(home), "run.lock", blocking=False)
    if lock is None:
        sys.stderr.write(f"a watchdog already runs for {home}; not starting another\n")
        return 0
    _write_json(watchdog_dir(home) / "watchdog.pid", {"pid": os.getpid(), "config_sha256": _sha(Path(path)), "started_at": time.time(), "python": sys.executable})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    Watchdog(config, config_file=Path(path)).run_forever()
    return 0


def _sha(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


# -- starting it on the node: detached now, and again after a reboot ---------------------------------


def _running(home: Path) -> Optional[Dict[str, Any]]:
    from ..agent.liveness import process_alive

    info = _read_json(watchdog_dir(home) / "watchdog.pid")
    if info and process_alive(int(info.get("pid") or 0), MARKER):
        return info
    return None


def _end(pid: int, grace_s: float = 5.0) -> None:
    from ..agent.liveness import process_alive

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except OSError:
            return
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and process_alive(pid, MARKER):
            time.sleep(0.1)
        if not process_alive(pid, MARKER):
            return


def _run_argv(python: str, path: Path) -> List[str]:
    return [python, "-m", MARKER, "run", "--config", str(path)]


def _quiet(argv: List[str], **options: Any) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, **options)


def _systemd_is_init() -> bool:
    try:
        return Path("/proc/1/comm").read_text().strip() == "systemd" and shutil.which("systemctl") is not None
    except OSError:
        return False


def systemd_unit(python: str, path: Path, home: Path, *, user_unit: bool) -> str:
    """The unit that starts the watchdog at boot and again if it ever exits with an error."""
    command = " ".join(shlex.quote(p) for p in _run_argv(python, path))
    return (
        "[Unit]\n"
        "Description=gaudi_nb watchdog: stops this machine when idle or over budget\n"
        "After=network-online.target\n"
        "Wants=network-online.target\n\n"
        "[Service]\n"
        f"Environment=GAUDI_NB_HOME={home}\n"
        f"WorkingDirectory={watchdog_dir(home)}\n"
        f"ExecStart={command}\n"
        "Restart=on-failure\n"
        "RestartSec=10\n\n"
        "[Install]\n"
        f"WantedBy={'default.target' if user_unit else 'multi-user.target'}\n"
    )


def cron_line(python: str, path: Path, home: Path) -> str:
    """An @reboot line for the user's crontab; the marker names the home, so one line per home is kept."""
    folder = watchdog_dir(home)
    command = " ".join(shlex.quote(p) for p in _run_argv(python, path))
    return f"@reboot cd {shlex.quote(str(folder))} && GAUDI_NB_HOME={shlex.quote(str(home))} {command} >> {shlex.quote(str(folder / 'watchdog.log'))} 2>&1 {CRON_MARKER} {home}"


def with_cron_line(crontab: str, line: str, home: Path) -> str:
    """The crontab with this home's watchdog line replaced (other lines kept as they are)."""
    kept = [row for row in crontab.splitlines() if not row.rstrip().endswith(f"{CRON_MARKER} {home}")]
    return "\n".join([*kept, line]) + "\n"


def _install_systemd(python: str, path: Path, home: Path) -> Tuple[Optional[str], str]:
    """(how, note): "systemd" once the unit is enabled, else None and why not."""
    root = os.geteuid() == 0
    scope: List[str] = [] if root else ["--user"]
    if root:
        unit_path = Path("/etc/systemd/system") / UNIT
    else:
        user = pwd.getpwuid(os.getuid()).pw_name
        linger = _quiet(["loginctl", "show-user", user, "--property=Linger"]) if shutil.which("loginctl") else None
        if linger is None or "Linger=yes" not in linger.stdout:
            # a user's units start at boot only with lingering on; a user may be allowed to turn it on
            if shutil.which("loginctl") is None or _quiet(["loginctl", "enable-linger", user]).returncode != 0:
                return None, "systemd runs, but user units do not start at boot here (loginctl enable-linger was refused)"
        unit_path = Path("~/.config/systemd/user").expanduser() / UNIT
    try:
        unit_path.parent.mkdir(parents=True, exist_ok=True)
        unit_path.write_text(systemd_unit(python, path, home, user_unit=not root))
    except OSError as exc:
        return None, f"cannot write the systemd unit {unit_path} ({exc})"
    for argv in (["systemctl", *scope, "daemon-reload"], ["systemctl", *scope, "enable", UNIT]):
        done = _quiet(argv)
        if done.returncode != 0:
            return None, f"{' '.join(argv)} failed ({(done.stderr or done.stdout).strip()[:200]})"
    return "systemd", f"systemd unit {unit_path} (enabled)"


def _install_cron(python: str, path: Path, home: Path) -> Tuple[Optional[str], str]:
    if shutil.which("crontab") is None:
        return None, "no crontab on this node"
    listed = _quiet(["crontab", "-l"])
    current = listed.stdout if listed.returncode == 0 else ""  # exit 1: no crontab yet
    done = _quiet(["crontab", "-"], input=with_cron_line(current, cron_line(python, path, home), home))
    if done.returncode != 0:
        return None, f"crontab refused the @reboot line ({(done.stderr or done.stdout).strip()[:200]})"
    return "crontab", "an @reboot line in the user's crontab"


def _start_detached(python: str, path: Path, home: Path) -> int:
    folder = watchdog_dir(home)
    with open(folder / "watchdog.log", "ab") as log:
        process = subprocess.Popen(
            _run_argv(python, path),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session: the SSH session's end does not reach it
            close_fds=True,
            # python -m puts the working folder first on the import path: a folder holding a
            # `gaudi_nb` directory (a checkout) must not replace the installed package
            cwd=str(folder),
            env={**os.environ, "GAUDI_NB_HOME": str(home)},
        )
    return process.pid


def _wait_for_pid(home: Path, timeout_s: float = 15.0, not_pid: Optional[int] = None) -> Optional[Dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = _running(home)
        if info and info.get("pid") != not_pid:
            return info
        time.sleep(0.1)
    return None


def start(path: "str | Path", *, python: Optional[str] = None, reboot: bool = True) -> Dict[str, Any]:
    """Node side of start_on_node: start the watchdog for the config at `path`, and make it start at boot.

    Idempotent: a watchdog already running with the same config and Python is kept; one with
    another config is replaced. Returns {pid, started: "started" | "kept" | "replaced",
    survives_reboot, how ("systemd" | "crontab" | None), note, log}.
    """
    path = Path(path).resolve()
    config = load_config(path)
    home = Path(config.home or path.parent.parent)
    python = python or sys.executable
    lock = _take_lock(watchdog_dir(home), "start.lock", blocking=True)  # two starts at once: one after the other
    try:
        how, note = (None, "not asked to survive a reboot")
        if reboot:
            how, note = _install_systemd(python, path, home) if _systemd_is_init() else (None, "systemd is not PID 1")
            if how is None:
                cron_how, cron_note = _install_cron(python, path, home)
                how, note = cron_how, (cron_note if cron_how else f"{note}; {cron_note}")
            if how is None:
                note += f": the watchdog will not start again after a reboot (start it again with {MARKER} start --config {path})"
        current = _running(home)
        started = "started"
        if current is not None:
            if current.get("config_sha256") == _sha(path) and current.get("python") == python:
                return _answer(current, "kept", how, note, home)
            _end(int(current["pid"]))
            started = "replaced"
        if how == "systemd":
            scope = [] if os.geteuid() == 0 else ["--user"]
            done = _quiet(["systemctl", *scope, "restart", UNIT])
            if done.returncode != 0:
                note += f"; systemctl restart failed ({done.stderr.strip()[:200]}), started detached instead"
                _start_detached(python, path, home)
        else:
            _start_detached(python, path, home)
        info = _wait_for_pid(home)
        if info is None:
            raise GaudiNbError(f"the watchdog did not start on this node: see {watchdog_dir(home) / 'watchdog.log'}")
        return _answer(info, started, how, note, home)
    finally:
        if lock is not None:
            lock.close()


def _answer(info: Dict[str, Any], started: str, how: Optional[str], note: str, home: Path) -> Dict[str, Any]:
    return {"pid": info.get("pid"), "started": started, "survives_reboot": how is not None, "how": how, "note": note, "log": str(watchdog_dir(home) / "watchdog.log")}


def stop(home: "str | Path") -> Dict[str, Any]:
    """End the running watchdog (it starts again at boot if start installed that)."""
    info = _running(Path(home))
    if info is None:
        return {"stopped": False}
    _end(int(info["pid"]))
    return {"stopped": True, "pid": info["pid"]}


# -- the client side: start it on a node over SSH ---------------------------------------------


def start_on_node(record: Dict[str, Any], config: "WatchdogConfig | Dict[str, Any]", *, reboot: bool = True, timeout_s: float = 120.0) -> Dict[str, Any]:
    """Write the watchdog's config on the node and start it there, detached and again at every boot.

    `record`: the node's store record (user, host, port, identity_file, jump, python, home).
    `config`: a WatchdogConfig or its dict (provider, region, instance_id, launched_at, action,
    idle_minutes, budget_usd, price_per_hour, ...); `home` defaults to the record's.
    `reboot`: also make it start at boot (a systemd unit, else an @reboot crontab line).
    Returns the node's answer: {pid, started, survives_reboot, how, note, log}.
    """
    from .link import links

    data = config.to_dict() if isinstance(config, WatchdogConfig) else dict(config)
    home = data.get("home") or record.get("home")
    if not home:
        raise SpecError(f"node {record.get('name')} has no home in its record: attach it again")
    data["home"] = home
    data.setdefault("node", record.get("name"))
    WatchdogConfig.from_dict(data)  # a bad setting stops here, not on the node
    target = config_path(home)
    command = " ".join(
        [f"GAUDI_NB_HOME={shlex.quote(home)}", shlex.quote(record.get("python") or "python3"), "-m", MARKER, "start", "--config", shlex.quote(str(target)), "--config-stdin", *([] if reboot else ["--no-reboot"])]
    )
    text = json.dumps(data, indent=1)
    status, stdout, stderr = links().run(record, command, timeout=timeout_s, input=text)
    lines = [line for line in stdout.splitlines() if line.strip().startswith("{")]
    if status != 0 or not lines:
        last = next((line for line in reversed((stderr or stdout).splitlines()) if line.strip()), f"exit status {status}")
        raise GaudiNbError(f"the watchdog could not be started on node {record.get('name')}: {last.strip()[:300]}")
    answer: Dict[str, Any] = json.loads(lines[-1])
    return answer


# -- command line (run on the node) -------------------------------------------------------------


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MARKER}", description="The node's watchdog: stop or terminate this machine when idle or over budget.")
    commands = parser.add_subparsers(dest="command", required=True)
    loop = commands.add_parser("run", help="watch in the foreground (what start runs detached)")
    loop.add_argument("--config", required=True, type=Path)
    begin = commands.add_parser("start", help="start the watchdog detached and at every boot; prints one JSON line")
    begin.add_argument("--config", required=True, type=Path)
    begin.add_argument("--config-stdin", action="store_true", help="write the config read from stdin to --config first")
    begin.add_argument("--no-reboot", action="store_true", help="do not install a systemd unit or crontab line")
    for name, text in (("status", "the latest check, one JSON line"), ("last-action", "what it last did and why, one JSON line"), ("stop", "end the running watchdog")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--home", type=Path, default=None, help="the node's GAUDI_NB_HOME (default: $GAUDI_NB_HOME)")
    args = parser.parse_args(argv)

    if args.command == "run":
        return run(args.config)
    if args.command == "start":
        if args.config_stdin:
            data = json.loads(sys.stdin.read())
            WatchdogConfig.from_dict(data)
            _write_json(args.config, data)
        answer: Any = start(args.config, reboot=not args.no_reboot)
    else:
        home = (args.home or Path(os.environ.get("GAUDI_NB_HOME", "~/.gaudi_nb"))).expanduser()
        if args.command == "status":
            answer = {**(read_status(home) or {}), "running": _running(home) is not None}
        elif args.command == "last-action":
            answer = read_last_action(home)
        else:
            answer = stop(home)
    sys.stdout.write(json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except GaudiNbError as exc:
        sys.stderr.write(f"{exc}\n")
        sys.exit(2)
