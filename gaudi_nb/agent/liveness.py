"""Whether a run's agent is alive, and what to do with a run whose agent is gone (node-side: targets call it)."""
from __future__ import annotations

import json
import os
import signal
import time
from typing import Any, Dict, List, Optional

import psutil

from ..events import EventWriter, Marks, has_ended, read_marks, this_attempt
from ..private import write_atomic
from ..rundir import RunFolder, heartbeat_timeout_s


def process_alive(pid: Optional[int], marker: str) -> bool:
    """A live (not zombie) process whose command line contains marker: a reused pid is not our process."""
    if not pid:
        return False
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and marker in " ".join(process.cmdline())
    except psutil.Error:
        return False


def agent_alive(folder: RunFolder) -> bool:
    return process_alive(folder.agent_process_id(), "gaudi_nb.agent")


def is_lost(folder: RunFolder, now: Optional[float] = None) -> bool:
    """The agent has not beaten for the heartbeat timeout and its process is gone.

    Both conditions: a slow agent (busy killing a hung launcher) is alive, and an agent
    that just wrote run_end and exited has a fresh heartbeat while the reader catches up.
    A folder without an agent (a batch run executed in its client) is never lost here.
    """
    last = folder.last_beat()
    if last is None or folder.agent_process_id() is None:
        return False
    if (now or time.time()) - last < heartbeat_timeout_s():
        return False
    return not agent_alive(folder)


def rank_pids(events: List[Dict[str, Any]]) -> List[int]:
    return sorted({int(e["pid"]) for e in events if e.get("type") == "worker_start" and e.get("pid")})


def kill_leftovers(folder: RunFolder, events: List[Dict[str, Any]], grace_s: float = 5.0) -> int:
    """Kill the launcher's process group and every rank still alive; returns how many processes were alive."""
    launcher = None
    try:
        launcher = int((folder.path / "launcher.pid").read_text())
    except (OSError, ValueError):
        pass
    alive = [pid for pid in rank_pids(events) if process_alive(pid, "gaudi_nb.worker")]
    if process_alive(launcher, str(folder.path)):
        alive.append(launcher)  # type: ignore[arg-type]
    if not alive:
        return 0
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in alive:
            try:
                os.killpg(pid, sig) if pid == launcher else os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(process_alive(pid, "gaudi_nb") or process_alive(pid, str(folder.path)) for pid in alive):
            time.sleep(0.2)
    return len(alive)


def _last(events: List[Dict[str, Any]], kind: str) -> Dict[str, Any]:
    return next((e for e in reversed(events) if e.get("type") == kind), {})


def end_run(folder: RunFolder, status: str, reason: str) -> bool:
    """Write the run_end that a dead agent could not, once (an O_EXCL marker), after killing what it left.

    Returns False if the run already has a run_end (from its agent or another client).
    """
    marks = read_marks(folder.events)
    if has_ended(marks.events):
        return False
    marker = folder.control / f"ended.{status}"
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
    except FileExistsError:
        return False
    try:
        _write_end(folder, marks, status, reason)
    except BaseException:
        # the marker says a run_end is written: one that failed (a full disk, a kill) gives it back, so the
        # next check ends the run instead of leaving it `running` for good
        marker.unlink(missing_ok=True)
        raise
    return True


def _write_end(folder: RunFolder, marks: Marks, status: str, reason: str) -> None:
    """Kill what the run left, then append a client's run_end with the steps and spend its events hold."""
    killed = kill_leftovers(folder, marks.events)
    if killed:
        reason += f"; {killed} rank process(es) still alive were killed"
    run = folder.read_run()
    writer = EventWriter(folder.events, run["run_id"], node=run.get("node", "local"))
    writer.emit("run_end", status=status, exit_code=None, reason=reason, steps_completed=marks.highest_step, usd=marks.spent(), ended_by="client")
    writer.close()


def fail_unstarted(folder: RunFolder, run: Dict[str, Any], reason: str) -> None:
    """A run whose launch raised ends failed in its local folder (given a run.json if launch died before writing one)."""
    folder.control.mkdir(parents=True, exist_ok=True)
    if not folder.run.exists():
        write_atomic(folder.run, json.dumps({**run, "created_at": time.time()}))
    end_run(folder, "failed", reason)


def mark_if_lost(folder: RunFolder) -> bool:
    """If the run's agent is gone, end the run as lost; True if this call did."""
    if not is_lost(folder):
        return False
    last = folder.last_beat() or 0.0
    pid = folder.agent_process_id()
    when = time.strftime("%H:%M:%S", time.localtime(last))
    return end_run(folder, "lost", f"its agent (pid {pid}) stopped beating at {when} and its process is gone; nobody metered the run after that")


def end_lost(folder: RunFolder) -> bool:
    """`gaudi-nb stop` on a lost run: it ends as stopped, and any rank left is killed."""
    marks = read_marks(folder.events)
    final = _last(this_attempt(marks.events), "run_end")
    if final and final.get("status") != "lost":
        return False
    if final:  # already recorded as lost: record the stop after it (followers stopped at the first run_end)
        _write_end(folder, marks, "stopped", "stopped on request after its agent was lost")
        return True
    return end_run(folder, "stopped", "stopped on request after its agent was lost")
