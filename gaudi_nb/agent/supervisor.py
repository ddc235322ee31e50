"""The node agent's run loop: start the ranks, tick once a second until they end, write the run_end.

The parts it drives, one concern each:
- ranks.py: the rank group (start, wait, kill, leftovers);
- stop.py: when the run stops, one policy for one node and one for a node of a run across nodes
  (node 0's agent decides the step every rank stops after; peers.py carries it to the others);
- attempts.py: restarts of crashed ranks, a resumed run, and the final status (a pure function);
- services.py: the side services (observer, cost meter, heartbeat, telemetry, exporter, trackers),
  fed by one read of events.jsonl a tick (feed.py).
"""
from __future__ import annotations

import os
import signal
import socket
import traceback
from pathlib import Path
from typing import Any, Dict, Optional

from .. import accel
from ..cost import catalog
from ..events import EventWriter
from ..launch import LaunchPlan, pick_launcher
from ..private import write_atomic
from ..rundir import RunFolder
from ..spec import RunSpec
from ..worker.trainers import pick_trainer
from .attempts import Attempts, Ending, final_status, tail_lines
from .feed import EventFeed
from .ranks import RankGroup
from .services import Meter, RunObserver, SideServices
from .stop import make_policy

SIGNAL_FLUSH_S = 5.0  # after a signal, how long the trackers get to log the end (the machine is going away)


class Agent:
    def __init__(self, run_dir: Path) -> None:
        self.folder = RunFolder(Path(run_dir).resolve())
        self.run_dir = self.folder.path
        run = self.folder.read_run()
        self.run_id = run["run_id"]
        self.node = run.get("node", "local")
        self.spec = RunSpec.model_validate_json(self.folder.spec.read_text())
        self.price_per_hour, self.price_source = catalog.resolve_price_per_hour(self.spec.price_per_hour, self.spec.instance_type)
        self.events = EventWriter(self.folder.events, self.run_id, node=self.node)
        self.folder.logs.mkdir(parents=True, exist_ok=True)
        cluster: Optional[Dict[str, Any]] = run.get("cluster")  # several nodes; None for one
        self.leads = cluster is None or int(cluster["node_rank"]) == 0  # --report-to: one tracker run per gaudi_nb run, from node 0
        self.ranks = RankGroup(self.folder)
        self.observer = RunObserver(self.node)
        self.attempts = Attempts(self.folder, self.spec.max_restarts, self.node)
        feed = EventFeed(self.folder.events)  # the one reader of this run's events in the agent
        self.policy = make_policy(self.folder, self.events, self.spec, self.observer, self.ranks, node=self.node, cluster=cluster, refresh=feed.poll)
        meter = Meter(self.events, self.price_per_hour, self.policy.nodes_metered, self.spec.budget_usd)
        self.services = SideServices(self.folder, self.events, self.spec, self.run_id, self.node, self.observer, meter, feed)

    # -- lifecycle -------------------------------------------------------
    def run_to_end(self) -> str:
        """Supervise the run until it ends; whatever goes wrong, the run gets a run_end and its ranks are killed."""
        signal.signal(signal.SIGTERM, lambda *_: self.policy.request("stopped", signal_name="SIGTERM"))
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the terminal or kernel that started us may go away
        write_atomic(self.folder.agent_pid, str(os.getpid()))
        self.folder.beat()
        try:
            if self.attempts.resumed is not None:
                self.attempts.take_resume()
                self.observer.last_step = self.attempts.from_step
                self.services.meter.before_s = self.attempts.metered_before_s
            # the earlier attempts' events (their steps, errors and rank pids) are not this agent's to act on
            self.services.start(leads=self.leads, resumed=self.attempts.resumed is not None)
            exit_code = self._launch_and_supervise()
        except BaseException as exc:  # a bug, a missing launcher, a store that cannot be written
            traceback.print_exc()  # into logs/agent.log
            self.ranks.kill()
            return self._finish(None, error=f"the agent failed: {type(exc).__name__}: {exc}")
        finally:
            self.services.stop_telemetry()
        return self._finish(exit_code)

    def _launch_and_supervise(self) -> int:
        accelerator = accel.detect_name()
        launcher = pick_launcher(self.spec, accelerator)
        # a user script (%%gaudi_train --script) runs through its own runner; fresh processes either way
        worker = ["-m", "gaudi_nb.worker.script" if self.spec.script else "gaudi_nb.worker", "--run-dir", str(self.run_dir)]
        self.policy.start()
        plan, placement = self.policy.plan(worker, accelerator=accelerator, launcher=launcher)
        modules = None
        if plan is not None:
            modules = plan.env.get("HABANA_VISIBLE_MODULES")  # a partial-node Gaudi run
            for name, content in plan.files.items():
                (self.run_dir / name).write_text(content)
        self._announce(plan, placement, accelerator, launcher)
        if self.spec.max_restarts and not self.policy.restarts_apply:
            self.events.emit("log", level="warning", message="--max-restarts applies to one-node runs in this version: a crashed rank ends this run across nodes as failed")
        if plan is None:
            self.services.start_telemetry(self.ranks, modules)
            return self._supervise()
        self.ranks.start(plan, self.attempts.attempt, self.attempts.resume_from)
        self.services.start_telemetry(self.ranks, modules)
        while True:
            exit_code = self._supervise()
            crash = None
            if not self.policy.stopping():
                crash = self.attempts.crashed(exit_code, self.observer.rank_errors, self.observer.worker_error, one_rank=plan.launcher == "python")
            self.attempts.crash = crash
            if crash is None or not (self.policy.restarts_apply and self.attempts.may_restart()):
                return exit_code
            # end what is left of the attempt, then start the next one from the newest complete checkpoint
            self.ranks.kill_leftovers(self.observer.rank_pids)
            self.observer.next_attempt(self.attempts.next_attempt(crash, self.events))
            plan, _ = self.policy.plan(worker, accelerator=accelerator, launcher=launcher)
            assert plan is not None
            self.ranks.start(plan, self.attempts.attempt, self.attempts.resume_from)
            self.services.follow(self.ranks)

    def _announce(self, plan: Optional[LaunchPlan], placement: Dict[str, Any], accelerator: str, launcher: str) -> None:
        """run_start for a fresh run; a resumed run's run_start is the first agent's, so a log line."""
        port = getattr(self.services.exporter, "port", None)
        if self.attempts.resumed is not None:
            resume_from = self.attempts.resume_from or "step 0"
            self.events.emit("log", level="info", message=f"attempt {self.attempts.attempt}: agent pid {os.getpid()} resumes from {resume_from}",
                             pid=os.getpid(), command=plan.describe() if plan is not None else None, metrics_port=port)
            return
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
            metrics_port=port,
            **placement,
        )

    def _supervise(self) -> int:
        """One tick a second (cut short when the launcher exits) until this attempt's ranks have ended."""
        while True:
            exit_code = self.ranks.poll() if self.ranks.process is not None else self.policy.ended_elsewhere()
            cost = self.services.tick()
            if exit_code is not None:
                return exit_code
            self.policy.tick(cost)
            self.ranks.wait(1.0)

    def _finish(self, exit_code: Optional[int], error: Optional[str] = None) -> str:
        try:
            self.services.feed.poll()
            cost = self.services.meter.emit()
        except Exception:  # the run_end below matters more than a last cost event
            cost = self.services.meter.last_usd
        stop = self.policy.end_reason()
        if stop:  # a rank may see the request before this agent's tick does: the stream still says it was asked
            self.policy.note(stop)
        status, fields = final_status(Ending(
            exit_code,
            steps=self.observer.last_step,
            usd=cost,
            error=error,
            stop=stop,
            stop_note=self.policy.description(stop) if stop else "",
            failure=self.policy.failure or self.observer.worker_error,
            crash=self.attempts.crash,
            restarts=(self.attempts.restarts_used, self.spec.max_restarts) if self.policy.restarts_apply else None,
            attempt=self.attempts.attempt,
            log_lines=tail_lines(self.folder.train_log),
        ))
        self.services.before_end(SIGNAL_FLUSH_S if self.policy.signalled else None)
        self.events.emit("run_end", status=status, **fields)
        self.events.close()
        self.policy.finish(status, fields.get("reason"))
        self.services.close(SIGNAL_FLUSH_S if self.policy.signalled else None)
        return status



def supervise(folder: RunFolder) -> None:
    """Supervise the run in `folder` in this process until it ends: `python -m gaudi_nb.agent` and the task
    Slurm starts on each node. An agent that cannot start (an unreadable spec, a broken install) still ends
    the run, with the reason."""
    os.umask(0o077)  # what the agent and its ranks write (checkpoints, logs, events) is the user's alone on a shared node
    try:
        agent = Agent(folder.path)
    except Exception as exc:
        from .liveness import end_run

        traceback.print_exc()
        end_run(folder, "failed", f"the agent could not start: {type(exc).__name__}: {exc}")
        raise SystemExit(1) from None
    agent.run_to_end()
