"""Experiment trackers (--report-to mlflow,wandb): the agent follows the run's events and logs them to each tracker from its own thread.

Why the agent and not rank 0: the agent sees every event (rank 0's steps, evals and
checkpoints, and its own cost and telemetry), lives across restarts, and is the one process
per run (node 0's agent across nodes), so a gaudi_nb run is one tracker run. Nothing of it
runs in a rank: training is never slowed by a tracker, and a rank starts no tracker library.

Why not transformers' MLflowCallback / WandbCallback: they live in rank 0, start a tracker run
per process start (a restart would make a second one), and know nothing of dollars or devices.
The values they log (the spec as parameters, loss, learning rate, grad norm, eval loss) go
through the trackers' own client libraries (tracker_backends.py), with the same names.

How events reach a tracker: the agent reads events.jsonl once a tick (agent/feed.py) and puts the
new events in each tracker thread's own queue; the thread takes them at its own pace, so a slow
tracker lags behind and a dead one is left behind; neither touches the agent's loop. A call that
fails warns once (a `log` event) and its values are dropped; a tracker that cannot be reached at the start is off for the run.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..events import EventWriter, read_marks
from ..fold import Event
from ..rundir import RunFolder
from ..spec import RunSpec
from ..summary import RecordFold, empty_summary
from .feed import EventFeed, Inbox
from .tracker_backends import Backend, make_backend

POLL_S = 1.0
FLUSH_S_ENV = "GAUDI_NB_TRACKER_FLUSH_S"  # how long the agent waits at the end for the last values and the checkpoint
ARTIFACT_MAX_MB_ENV = "GAUDI_NB_TRACKER_ARTIFACT_MAX_MB"  # a final checkpoint larger than this is logged by its path
DEFAULT_FLUSH_S = 60.0
DEFAULT_ARTIFACT_MAX_MB = 200.0
STEP_METRICS = ("loss", "learning_rate", "grad_norm", "step_time_s")
MEASURED_METRICS = ("tokens_per_second", "samples_per_second")  # warmup steps left out, as in the record


def spec_params(spec: Dict[str, Any]) -> Dict[str, Any]:
    """The RunSpec as tracker parameters (unset fields left out; MLflow keeps them as text, W&B typed)."""
    return {key: value for key, value in spec.items() if value is not None}


def step_metrics(event: Dict[str, Any]) -> Dict[str, float]:
    metrics = {key: float(event[key]) for key in STEP_METRICS if isinstance(event.get(key), (int, float))}
    if not event.get("warmup"):
        metrics.update({key: float(event[key]) for key in MEASURED_METRICS if isinstance(event.get(key), (int, float))})
    return metrics


def record_metrics(record: Dict[str, Any]) -> Dict[str, float]:
    """What only gaudi_nb knows, from the run's record: dollars, dollars per million tokens, mean
    throughput, TFLOP/s and MFU. An unknown value is left out, never sent as 0."""
    m, c = record["metrics"], record["cost"]
    values = {
        "usd": c.get("usd"),
        "usd_per_million_tokens": c.get("usd_per_million_tokens"),
        "tokens_per_second_mean": m.get("tokens_per_second"),
        "tflops": m.get("tflops"),
        "mfu": m.get("mfu"),
        "tokens_seen": m.get("tokens_seen"),
    }
    return {key: float(value) for key, value in values.items() if isinstance(value, (int, float))}


def utilization_metrics(event: Dict[str, Any]) -> Dict[str, float]:
    return {f"utilization_pct/device_{i}": float(d["utilization_pct"]) for i, d in enumerate(event.get("devices") or []) if isinstance(d.get("utilization_pct"), (int, float))}


def record_tags(record: Dict[str, Any]) -> Dict[str, str]:
    """Descriptions (tags, not metrics): where the run ran, what it cost per hour and where the price and peak come from."""
    c, m, p = record["cost"], record["metrics"], record.get("parameters") or {}
    values = {
        "gaudi_nb.accelerator": record.get("accelerator"),
        "gaudi_nb.device_name": record.get("device_name"),
        "gaudi_nb.device_count": record.get("device_count"),
        "gaudi_nb.precision": record.get("precision"),
        "gaudi_nb.trainer": record.get("trainer"),
        "gaudi_nb.price_per_hour": c.get("price_per_hour"),
        "gaudi_nb.price_source": c.get("price_source"),
        "gaudi_nb.peak_source": m.get("peak_source"),
        "gaudi_nb.parameters": p.get("total"),
        "gaudi_nb.trainable_parameters": p.get("trainable"),
    }
    return {key: str(value) for key, value in values.items() if value is not None}


def lower_priority() -> None:
    """Nice this thread (Linux keeps a nice value per thread, and wandb's service process inherits
    it): importing a tracker library and talking to it then takes only CPU the ranks leave idle,
    which matters on a small host where the agent shares cores with the ranks."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass  # not Linux: the thread runs at the agent's priority


def flush_seconds() -> float:
    return float(os.environ.get(FLUSH_S_ENV) or DEFAULT_FLUSH_S)


def directory_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


class TrackerFold(RecordFold):
    """What a tracker logs from a batch of events, through the record's fold (the thread's record, in place).
    Not logged: a late step of a replaced attempt, steps a restart lost before they were sent."""

    def __init__(self, record: Dict[str, Any]) -> None:
        super().__init__(record)
        self.by_step: Dict[int, Dict[str, float]] = {}
        self.costs = False
        self.utilization: Dict[str, float] = {}
        self.artifacts: List[Path] = []
        self.ended: Optional[bool] = None  # run_end seen (True), or a restart after it (False: a resumed run)

    def on_step(self, e: Event, step: int, replayed: bool) -> None:
        super().on_step(e, step, replayed)
        self.by_step.setdefault(step, {}).update(step_metrics(e))

    def on_eval(self, e: Event) -> None:
        super().on_eval(e)
        if e.get("eval_loss") is not None:
            self.by_step.setdefault(int(e.get("step") or 0), {})["eval_loss"] = float(e["eval_loss"])

    def on_cost(self, e: Event) -> None:
        super().on_cost(e)
        self.costs = True

    def on_telemetry(self, e: Event) -> None:
        super().on_telemetry(e)
        self.utilization = utilization_metrics(e)

    def on_result(self, e: Event) -> None:  # a notebook run's record() values
        super().on_result(e)
        results = {str(k): float(v) for k, v in (e.get("values") or {}).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if results:
            self.by_step.setdefault(int(self.summary.get("steps_completed") or 0), {}).update(results)

    def on_run_start(self, e: Event) -> None:
        super().on_run_start(e)
        if e.get("manifest_path") and Path(str(e["manifest_path"])).is_file():
            self.artifacts.append(Path(str(e["manifest_path"])))

    def on_run_end(self, e: Event) -> None:
        super().on_run_end(e)
        self.ended = True

    def on_restart(self, e: Event, from_step: int) -> None:
        super().on_restart(e, from_step)
        self.ended = False
        for step in [s for s in self.by_step if s > from_step]:  # not sent yet, and lost with the attempt
            del self.by_step[step]


class TrackerThread(threading.Thread):
    """Logs the run's events, as its feed hands them over from the start, to one tracker until the run ends."""

    def __init__(self, name: str, folder: RunFolder, run_id: str, node: str, spec: Dict[str, Any], feed: EventFeed, make: Any = make_backend) -> None:
        super().__init__(name=f"gaudi-nb-{name}", daemon=True)
        self.tracker = name
        self.folder = folder
        self.run_id = run_id
        self.writer = EventWriter(folder.events, run_id, node=node)
        self.make = make
        self.spec = spec  # the agent's: run_start may not be written yet when the thread starts
        self.backend: Optional[Backend] = None
        self.record: Dict[str, Any] = empty_summary(run_id)
        self.inbox = Inbox(feed)  # batches from the feed, the history first
        self.closing = threading.Event()
        self.ended = False  # run_end seen: nothing more goes into the run's events
        self.opened = threading.Event()  # the tracker run is open and its link written (or it could not open)
        self.warned = False
        self._tags: Dict[str, str] = {}
        self._logged_restarts = 0  # restarts still to read past before this attempt's events (a resumed run's)

    # -- the thread --------------------------------------------------------
    def run(self) -> None:
        lower_priority()
        try:
            previous = self._catch_up()
            self.backend = self.make(self.tracker, self.folder.path)
            tags = {"gaudi_nb.run_id": self.run_id, "gaudi_nb.run_dir": str(self.folder.path)}
            opened = self.backend.start(self._run_name(), tags, previous)
        except Exception as exc:  # unreachable, not installed, refused: the run goes on without it
            self._warn(f"{self.tracker}: cannot start a tracker run ({_short(exc)}): this run is not logged to {self.tracker}")
            self.opened.set()
            self.inbox.close()
            self.writer.close()
            return
        self.writer.emit("tracker", tracker=self.tracker, **opened)
        self.opened.set()
        self._call(self.backend.set_tags, tags)
        if previous is None:  # a resumed run keeps its first parameters (MLflow's cannot change)
            self._call(self.backend.log_params, spec_params(self.spec))
        self._log_history()
        while not self.ended:
            closing = self.closing.wait(POLL_S)
            if not self._poll() and closing:
                break  # the agent is done and nothing more is coming
        self.inbox.close()
        self._finish()

    def close(self, timeout: float) -> None:
        self.closing.set()
        self.join(timeout)
        if self.is_alive():
            print(f"gaudi_nb: {self.tracker} did not finish within {timeout:.0f} s ({FLUSH_S_ENV}): its last values may be missing", file=sys.stderr)

    # -- steps of it -------------------------------------------------------
    def _catch_up(self) -> Optional[str]:
        """Take what the run wrote before the agent started; returns the tracker run an earlier agent opened (a resumed run).

        The history comes from the feed a bounded read at a time, so where this attempt starts (its restart) is
        counted from the file's marks first (read_marks: a bounded read at a time too)."""
        marks = read_marks(self.folder.events)
        earlier = [e for e in marks.events if e.get("type") == "tracker" and e.get("tracker") == self.tracker]
        if earlier:  # the earlier attempts were logged by their agent: only this attempt's events are new
            self._logged_restarts = sum(1 for e in marks.events if e.get("type") == "restart")
        self._history = self._unlogged(self.inbox.first(POLL_S, self.closing))
        return str(earlier[-1]["tracker_run_id"]) if earlier else None

    def _unlogged(self, events: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """The events still to log: those of attempts an earlier agent logged are folded into the record (it still
        counts them) without logging, up to this attempt's restart."""
        if self._logged_restarts <= 0:
            return events
        split = len(events)
        for i, e in enumerate(events):
            if e.get("type") == "restart":
                self._logged_restarts -= 1
                if self._logged_restarts == 0:
                    split = i
                    break
        logged = RecordFold(self.record)
        logged.apply(events[:split])
        logged.derive()
        return events[split:]

    def _run_name(self) -> str:
        return str(self.spec.get("name") or self.run_id)

    def _log_history(self) -> None:
        """What happened before the tracker run opened (the first steps of a slow start, a resumed run's past)."""
        history, self._history = self._history, []
        self._log(history)

    def _poll(self) -> bool:
        events = self._unlogged(self.inbox.take())
        if events:
            self._log(events)
        return bool(events)

    def _log(self, events: List[Dict[str, Any]]) -> None:
        assert self.backend is not None
        read = TrackerFold(self.record)
        read.apply(events)
        read.derive()
        for path in read.artifacts:
            self._call(self.backend.log_artifact, path, "batch_manifest")
        if read.ended is not None:
            self.ended = read.ended
        for step, metrics in sorted(read.by_step.items()):
            if metrics:
                self._call(self.backend.log_metrics, metrics, step)
        now = int(self.record.get("steps_completed") or 0)
        if read.costs or read.by_step:
            self._call(self.backend.log_metrics, {**record_metrics(self.record), **read.utilization}, now)
        elif read.utilization:
            self._call(self.backend.log_metrics, read.utilization, now)
        tags = record_tags(self.record)
        if tags != self._tags:
            if self._call(self.backend.set_tags, {k: v for k, v in tags.items() if self._tags.get(k) != v}):
                self._tags = tags

    def _finish(self) -> None:
        assert self.backend is not None
        status = str(self.record.get("status"))
        checkpoint = self.folder.last_checkpoint()
        if checkpoint is not None:
            path = Path(checkpoint.path)
            limit = float(os.environ.get(ARTIFACT_MAX_MB_ENV) or DEFAULT_ARTIFACT_MAX_MB)
            size = directory_mb(path)
            tags = {"gaudi_nb.final_checkpoint": str(path), "gaudi_nb.final_checkpoint_mb": f"{size:.1f}"}
            if not self.spec.get("report_checkpoint"):  # the weights leave the machine only when asked
                tags["gaudi_nb.final_checkpoint_logged"] = "path only: --report-checkpoint uploads it"
            elif size <= limit:
                self._call(self.backend.log_artifact, path, "checkpoint")
            else:
                tags["gaudi_nb.final_checkpoint_logged"] = f"path only: {size:.0f} MB is over {ARTIFACT_MAX_MB_ENV}={limit:g}"
            self._call(self.backend.set_tags, tags)
        self._call(self.backend.finish, status)
        self.writer.close()

    def _call(self, method: Any, *args: Any) -> bool:
        try:
            method(*args)
            return True
        except Exception as exc:
            self._warn(f"{self.tracker}: logging failed ({_short(exc)}); the run goes on, some values will be missing there")
            return False

    def _warn(self, message: str) -> None:
        """Once per tracker and run: a tracker that is down would otherwise say so every second."""
        if self.warned:
            return
        self.warned = True
        if self.ended:  # after run_end the run's stream is closed to us: the agent's log keeps it
            print(f"gaudi_nb: {message}", file=sys.stderr)
        else:
            self.writer.emit("log", level="warning", message=message, tracker=self.tracker)


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


class Trackers:
    """The agent's handle on its tracker threads: started once per agent, closed after run_end."""

    def __init__(self, threads: List[TrackerThread], feed: EventFeed, own_feed: bool) -> None:
        self.threads = threads
        self.feed = feed
        self.own_feed = own_feed

    @classmethod
    def start(cls, spec: RunSpec, folder: RunFolder, run_id: str, node: str, feed: Optional[EventFeed] = None) -> Optional["Trackers"]:
        return cls.start_named(spec.trackers(), spec.to_json_dict(), folder, run_id, node, feed=feed)

    @classmethod
    def start_named(cls, names: List[str], spec: Dict[str, Any], folder: RunFolder, run_id: str, node: str = "local",
                    feed: Optional[EventFeed] = None) -> Optional["Trackers"]:
        """Also for a notebook run (gaudi_nb.batch), whose spec is its notebook and parameters; without
        the agent's `feed` (polled each tick), one of their own that reads the events on its own thread."""
        if not names:
            return None
        own = feed is None
        feed = feed or EventFeed(folder.events)
        threads = [TrackerThread(name, folder, run_id, node, spec, feed) for name in names]
        for thread in threads:
            thread.start()
        if own:
            feed.poll()  # the history, at once: the threads wait for it
            feed.start(POLL_S)
        return cls(threads, feed, own)

    def wait_opened(self, timeout_s: float) -> None:
        """Before run_end: each tracker's link (or its warning) is in the stream, so the record a short run
        ends with names its tracker runs (a thread at low priority may open its run after the ranks end)."""
        deadline = time.monotonic() + timeout_s
        for thread in self.threads:
            thread.opened.wait(max(0.0, deadline - time.monotonic()))

    def close(self, flush_s: Optional[float] = None) -> None:
        """After run_end: let each thread log the end and the final checkpoint, for at most
        `flush_s` (GAUDI_NB_TRACKER_FLUSH_S unless told) together."""
        if self.own_feed:
            self.feed.stop()
        else:
            self.feed.poll()  # the run_end written just before
        deadline = time.monotonic() + (flush_seconds() if flush_s is None else flush_s)
        for thread in self.threads:
            thread.closing.set()
        for thread in self.threads:
            thread.close(max(0.1, deadline - time.monotonic()))
