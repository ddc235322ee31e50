"""The node agent: starts the launcher, samples telemetry, meters cost, enforces the budget, ends the run."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional

import psutil

from .. import accel
from ..cost import catalog, meter
from ..events import EventWriter, Tailer
from ..launch import build_launch, pick_launcher
from ..rundir import RunFolder
from ..spec import RunSpec
from ..worker.trainers import pick_trainer
from ..worker.watchdog import agent_environment

# After a stop request the ranks finish two steps and save a checkpoint; a run that
# takes longer than this is terminated (a hung rank must not keep spending money).
STOP_GRACE_S = float(os.environ.get("GAUDI_NB_STOP_GRACE_S", "300"))
LOG_TAIL_LINES = 20


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
        self.stop_requested_at: Optional[float] = None
        self.killed_with: Optional[str] = None  # the signal that ended ranks which ignored a stop request
        self.exporter: Any = None
        self.telemetry: Any = None
        self.run_modules: Optional[str] = None  # HABANA_VISIBLE_MODULES of a partial-node Gaudi run
        self._tailer = Tailer(self.folder.events)

    # -- lifecycle -------------------------------------------------------
    def run_to_end(self) -> str:
        """Supervise the run until it ends; whatever goes wrong, the run gets a run_end and its ranks are killed."""
        signal.signal(signal.SIGTERM, lambda *_: self._request_stop("stopped"))
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the terminal or kernel that started us may go away
        self.folder.agent_pid.write_text(str(os.getpid()))
        self.folder.beat()
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
        plan = build_launch(
            self.spec,
            # a user script (%%gaudi_train --script) runs through its own runner; fresh processes either way
            ["-m", "gaudi_nb.worker.script" if self.spec.script else "gaudi_nb.worker", "--run-dir", str(self.run_dir)],
            python=sys.executable,
            master_port=free_port(),
            accelerator=accelerator,
            launcher=launcher,
        )
        self.run_modules = plan.env.get("HABANA_VISIBLE_MODULES")
        for name, content in plan.files.items():
            (self.run_dir / name).write_text(content)
        self._start_exporter()
        self.events.emit(
            "run_start",
            spec=self.spec.to_json_dict(),
            run_dir=str(self.run_dir),
            pid=os.getpid(),
            hostname=socket.gethostname(),
            accelerator=accelerator,
            trainer=pick_trainer(self.spec.trainer, accelerator),
            launcher=plan.launcher,
            command=plan.describe(),
            price_per_hour=self.price_per_hour,
            price_source=self.price_source,
            metrics_port=getattr(self.exporter, "port", None),
        )
        with open(self.folder.train_log, "ab") as log:
            self.process = subprocess.Popen(
                plan.argv,
                # the ranks watch this pid and stop when the agent is gone (see worker/watchdog.py)
                env={**os.environ, **plan.env, "PYTHONUNBUFFERED": "1", **agent_environment()},
                cwd=self.run_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so a hung run can be killed whole
            )
        (self.run_dir / "launcher.pid").write_text(str(self.process.pid))
        self.telemetry = self._start_telemetry()
        return self._supervise()

    def _supervise(self) -> int:
        assert self.process is not None
        while True:
            exit_code = self.process.poll()
            self._observe_events()
            cost = self._emit_cost()
            self.folder.beat()
            if exit_code is not None:
                return exit_code
            if self.spec.budget_usd is not None and cost is not None and cost >= self.spec.budget_usd:
                self._request_stop("budget_exceeded")
            if self.stop_requested_at is None and self.folder.stop_reason():
                self._note_stop(self.folder.stop_reason() or "stopped")
            if self.stop_requested_at is not None and time.time() - self.stop_requested_at > STOP_GRACE_S:
                self._terminate()
            time.sleep(1.0)

    def _finish(self, exit_code: Optional[int], error: Optional[str] = None) -> str:
        try:
            self._observe_events()
            cost = self._emit_cost()
        except Exception:  # the run_end below matters more than a last cost event
            cost = self.last_cost
        requested = self.folder.stop_reason()
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
            fields["reason"] = self.worker_error or failure_reason(lines, exit_code or 0)
            fields["last_log_lines"] = lines
        self.events.emit("run_end", status=status, **fields)
        self.events.close()
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
        self.folder.request_stop(reason)
        self._note_stop(self.folder.stop_reason() or reason)

    def _note_stop(self, reason: str) -> None:
        if self.stop_requested_at is None:
            self.stop_requested_at = time.time()
            self.events.emit("stop_requested", reason=reason, at_step=self.last_step)

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
        elapsed = time.time() - self.started
        usd = meter.cost_so_far(elapsed, self.price_per_hour, self.spec.nodes)
        self.last_cost = usd
        self.events.emit("cost", elapsed_s=elapsed, usd=usd, price_per_hour=self.price_per_hour, nodes=self.spec.nodes, budget_usd=self.spec.budget_usd)
        return usd

    def _observe_events(self) -> None:
        for event in self._tailer.poll():
            if event.get("type") == "step":
                self.last_step = max(self.last_step, int(event["step"]))
            elif event.get("type") == "worker_error" and self.worker_error is None:
                self.worker_error = f"rank {event.get('rank')}: {event.get('error')}"
            if self.exporter is not None:
                self.exporter.observe(event)

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
        expected = self.spec.devices

        def on_sample(sample: Any) -> None:
            self.events.emit("telemetry", **sample.to_dict())

        def on_error(message: str) -> None:
            # once per distinct failure (the loop dedupes), not every second
            self.events.emit("log", level="warning", message=message)

        loop = TelemetryLoop(source, on_sample, interval_s=1.0, on_error=on_error)

        def refresh_pids() -> None:
            # Ranks appear a few seconds after the launcher; the host source needs their pids.
            while self.process is not None and self.process.poll() is None:
                pids = self._rank_pids()
                if pids:
                    loop.set_pids(pids)
                if len(pids) >= expected:
                    return
                time.sleep(0.5)

        threading.Thread(target=refresh_pids, daemon=True).start()
        loop.start()
        return loop

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
