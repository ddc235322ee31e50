"""The rank group of one attempt: the launcher (torchrun, mpirun, deepspeed) and the ranks under it,
started in their own process group so that they can be ended whole, and whatever they leave behind."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from typing import Any, Dict, Mapping, Optional

import psutil

from ..launch import LaunchPlan
from ..rundir import ATTEMPT_ENV, RESUME_FROM_ENV, RunFolder, agent_environment
from .attempts import ATTEMPT_MARK
from .liveness import process_alive


class RankGroup:
    """One launcher process at a time; `process` is None before the first start (and on a node whose
    ranks another node's launcher starts)."""

    def __init__(self, folder: RunFolder) -> None:
        self.folder = folder
        self.process: Optional[subprocess.Popen] = None

    def start(self, plan: LaunchPlan, attempt: int, resume_from: Optional[str], environ: Optional[Mapping[str, str]] = None) -> None:
        env = {**(os.environ if environ is None else environ), **plan.env, "PYTHONUNBUFFERED": "1", **agent_environment(), ATTEMPT_ENV: str(attempt)}
        env.pop(RESUME_FROM_ENV, None)
        if resume_from:
            env[RESUME_FROM_ENV] = resume_from
        with open(self.folder.train_log, "ab") as log:
            if attempt > 1:
                log.write(f"{ATTEMPT_MARK}{attempt}, from {resume_from or 'step 0'} ---\n".encode())
                log.flush()
            self.process = subprocess.Popen(
                plan.argv,
                # the ranks watch this pid and stop when the agent is gone (see worker/agent_watch.py)
                env=env,
                cwd=self.folder.path,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so a hung run can be killed whole
            )
        (self.folder.path / "launcher.pid").write_text(str(self.process.pid))

    def poll(self) -> Optional[int]:
        """The launcher's exit code once it has ended; None while it runs (or was never started)."""
        return None if self.process is None else self.process.poll()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait(self, seconds: float) -> None:
        """Sleep for `seconds`, cut short when the launcher exits: the run ends the moment its ranks do."""
        if self.process is None:
            time.sleep(seconds)
            return
        try:
            self.process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            pass

    def kill(self, term_wait_s: float = 30.0) -> Optional[str]:
        """SIGTERM the launcher's process group, SIGKILL it if it lingers; returns the signal that ended it."""
        if self.process is None or self.process.poll() is not None:
            return None
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=term_wait_s)
            return "SIGTERM"
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=30)
            return "SIGKILL"
        except ProcessLookupError:
            return None

    def kill_leftovers(self, rank_pids: Mapping[int, int]) -> None:
        """The launcher usually ends its other ranks itself; whatever survived it must not hold devices or ports."""
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        alive = [pid for pid in rank_pids.values() if process_alive(pid, "gaudi_nb.worker")]
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(process_alive(pid, "gaudi_nb.worker") for pid in alive):
            time.sleep(0.1)

    def rank_pids(self) -> Dict[int, int]:
        """The worker processes under the launcher, by local rank (the launcher itself where it is the one rank)."""
        if self.process is None:
            return {}
        try:
            launcher = psutil.Process(self.process.pid)
            children = [launcher, *launcher.children(recursive=True)]
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

    def follow_pids(self, loop: Any, expected: int) -> None:
        """Ranks appear a few seconds after the launcher (after each restart too); the host telemetry source needs their pids."""
        process = self.process

        def refresh_pids() -> None:
            while process is not None and process.poll() is None:
                pids = self.rank_pids()
                if pids:
                    loop.set_pids(pids)
                if len(pids) >= expected:
                    return
                time.sleep(0.5)

        threading.Thread(target=refresh_pids, daemon=True).start()
