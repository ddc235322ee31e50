"""PanelState: what the live panel shows, folded from a run's events through the one fold (pure: no widgets, no I/O)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..cost import meter
from ..events import TERMINAL_STATUSES
from ..fold import Event
from ..summary import RecordFold, empty_summary

LOCAL_NODE = "local"


class PanelState(RecordFold):
    """The run's record (`summary`) and, folded in the same pass, the curves and devices the panel draws;
    the attempt, replay and late-step rules are the record's own (`gaudi_nb.fold`), so the panel and the
    record cannot disagree. Tests and benchmarks feed it synthetic events."""

    def __init__(self, run_id: str) -> None:
        super().__init__(empty_summary(run_id))
        self.run_id = run_id
        self.loss: List[Tuple[int, float]] = []
        self.eval_loss: List[Tuple[int, float]] = []
        self.throughput: List[Tuple[int, float]] = []  # measured (non-warmup) steps only
        self.devices: List[Dict[str, Any]] = []  # every node's latest devices, each tagged with its node
        self.device_source: Optional[str] = None
        self.host: Optional[Dict[str, Any]] = None
        self.worker_errors: List[str] = []
        self.last_memory_bytes: Optional[int] = None
        self._first_step: Optional[Tuple[int, float]] = None  # (step, t) of the first measured step
        self._last_step: Optional[Tuple[int, float]] = None
        self._node_devices: Dict[str, List[Dict[str, Any]]] = {}

    @classmethod
    def from_events(cls, run_id: str, events: Sequence[Dict[str, Any]]) -> "PanelState":
        state = cls(run_id)
        state.apply(events)
        return state

    def apply(self, events: Sequence[Event]) -> bool:  # type: ignore[override]
        """Fold new events in; True if any arrived."""
        if not events:
            return False
        super().apply(events)
        self.derive()
        return True

    # -- the panel's part of the fold (each calls the record's first) -------------------------
    def on_step(self, e: Event, step: int, replayed: bool) -> None:
        super().on_step(e, step, replayed)
        if replayed:
            self._forget_after(step - 1)  # its new values replace the old
        t = e.get("t")
        if e.get("loss") is not None:
            self.loss.append((step, float(e["loss"])))
        if not e.get("warmup") and e.get("tokens_per_second"):
            self.throughput.append((step, float(e["tokens_per_second"])))
            if self._first_step is None and t is not None:
                self._first_step = (step, float(t))
        if t is not None:
            self._last_step = (step, float(t))
        memory = e.get("memory") or {}
        if isinstance(memory, dict) and memory.get("in_use_bytes") is not None:
            self.last_memory_bytes = int(memory["in_use_bytes"])

    def on_eval(self, e: Event) -> None:
        super().on_eval(e)
        if e.get("eval_loss") is not None:
            self.eval_loss.append((int(e.get("step") or 0), float(e["eval_loss"])))

    def on_telemetry(self, e: Event) -> None:
        super().on_telemetry(e)
        node = str(e.get("node") or LOCAL_NODE)
        sampled = e.get("devices") or []
        known = self._node_devices.get(node, [])
        # ranks vanish from a host sample one by one as they exit at the end: keep the last
        # sample that had all of them (a rank's tile must not disappear from a finished run)
        fewer_ranks = e.get("source") == "host" and len(sampled) < len(known)
        if (sampled and not fewer_ranks) or node not in self._node_devices:
            # tagged with the node: a host's memory is counted once per node, not once per rank (device_grid)
            self._node_devices[node] = [dict(d, node=node) for d in sampled]
            self.devices = [d for devices in self._node_devices.values() for d in devices]
            self.device_source = e.get("source")
        self.host = e.get("host")

    def on_worker_error(self, e: Event) -> None:
        self.worker_errors.append(f"rank {e.get('rank')}: {e.get('error')}")

    def on_restart(self, e: Event, from_step: int) -> None:
        super().on_restart(e, from_step)
        self._forget_after(from_step)
        self.worker_errors = []  # the crashed attempt's; the restart event keeps the reason
        self._first_step = self._last_step = None  # the ETA follows the new attempt's pace

    def _forget_after(self, step: int) -> None:
        self.loss = [p for p in self.loss if p[0] <= step]
        self.throughput = [p for p in self.throughput if p[0] <= step]
        self.eval_loss = [p for p in self.eval_loss if p[0] <= step]

    # -- derived values ----------------------------------------------------
    @property
    def status(self) -> str:
        return str(self.summary["status"])

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def max_steps(self) -> Optional[int]:
        value = self.summary.get("max_steps")
        return int(value) if value else None

    def eta_seconds(self) -> Optional[float]:
        """Seconds left at the pace of the measured steps so far (startup and warmup left out)."""
        if self.done or not self.max_steps:
            return None if not self.done else 0.0
        if self._first_step and self._last_step and self._last_step[0] > self._first_step[0]:
            steps = self._last_step[0] - self._first_step[0]
            return meter.eta_seconds(self._last_step[1] - self._first_step[1], steps, self.max_steps - self._first_step[0])
        return None

    def tokens_per_second_now(self) -> Optional[float]:
        return self.throughput[-1][1] if self.throughput else None

    def failure(self) -> Optional[Dict[str, Any]]:
        """Reason and last log lines of a run that ended badly (or a rank's error while it runs)."""
        exit_info = self.summary.get("exit") or {}
        if self.status in ("failed", "lost") or (self.worker_errors and not self.done):
            return {"reason": exit_info.get("reason") or (self.worker_errors[0] if self.worker_errors else "failed"), "last_log_lines": exit_info.get("last_log_lines") or []}
        return None


__all__ = ["PanelState"]
