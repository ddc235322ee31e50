"""One run in detail for the dashboard's run page: its fold (RunPageState) and RunDetail (curves, events, log tail, manifest)."""
from __future__ import annotations

import json
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from .. import formatting
from ..notebook.panel_state import PanelState

EVENT_TAIL = 200
LOG_TAIL_LINES = 200


# -- one run in detail --------------------------------------------------------------------
def _short(value: Any, spec: str = ".4g") -> str:
    return "unknown" if value is None else format(value, spec) if isinstance(value, (int, float)) else str(value)


def event_text(e: Dict[str, Any]) -> str:
    """A short line for the events table."""
    kind = e.get("type")
    if kind == "step":
        return f"step {e.get('step')} · loss {_short(e.get('loss'))} · {_short(e.get('tokens_per_second'), ',.0f')} tokens/s"
    if kind == "telemetry":
        return f"{e.get('source')}: {len(e.get('devices') or [])} devices"
    if kind == "cost":
        return f"{formatting.money(e.get('usd'))} after {formatting.duration(e.get('elapsed_s'))} at {formatting.rate(e.get('price_per_hour'))}"
    if kind == "log":
        return f"{e.get('level')}: {e.get('message')}"
    if kind == "run_end":
        return f"{e.get('status')}: {e.get('reason') or ''}".strip(": ")
    if kind == "worker_error":
        return str(e.get("error"))
    keys = [k for k in e if k not in ("v", "type", "t", "run_id", "node", "rank", "spec", "traceback", "last_log_lines")]
    return ", ".join(f"{k}={e[k]}" for k in keys[:6])


class RunPageState(PanelState):
    """The run page's fold: the notebook panel's (loss, throughput, ETA, failure: the same events folded the
    same way), plus the run's mean device utilization and spend over time and the tail of its events."""

    def __init__(self, run_id: str) -> None:
        super().__init__(run_id)
        self.utilization: List[Tuple[float, float]] = []  # (t, mean device utilization %)
        self.cost: List[Tuple[float, float]] = []  # (t, the run's usd: every node's latest, summed)
        self.events: Deque[Dict[str, Any]] = deque(maxlen=EVENT_TAIL)

    def seen(self, e: Dict[str, Any]) -> None:
        super().seen(e)
        rank = e.get("rank")
        self.events.append({"time": pd.Timestamp(float(e.get("t") or 0), unit="s", tz="UTC"), "type": e.get("type"), "node": e.get("node"), "rank": "" if rank is None else str(rank), "what": event_text(e)})

    def on_telemetry(self, e: Dict[str, Any]) -> None:
        super().on_telemetry(e)
        values = [d["utilization_pct"] for d in e.get("devices") or [] if d.get("utilization_pct") is not None]
        if values:
            self.utilization.append((float(e.get("t") or 0), float(np.mean(values))))

    def on_cost(self, e: Dict[str, Any]) -> None:
        super().on_cost(e)
        usd = self.summary["cost"]["usd"]
        if usd is not None:
            self.cost.append((float(e.get("t") or 0), float(usd)))


@dataclass
class RunDetail:
    """Curves, events, logs and the manifest of one run, kept current from a sequence cursor (`state` folds them)."""

    run_id: str
    record: Dict[str, Any] = field(default_factory=dict)
    state: RunPageState = field(init=False)
    seq: int = -1

    def __post_init__(self) -> None:
        self.state = RunPageState(self.run_id)

    @property
    def loss(self) -> List[Tuple[int, float]]:
        return self.state.loss

    @property
    def eval_loss(self) -> List[Tuple[int, float]]:
        return self.state.eval_loss

    @property
    def throughput(self) -> List[Tuple[int, float]]:
        return self.state.throughput

    @property
    def utilization(self) -> List[Tuple[float, float]]:
        return self.state.utilization

    @property
    def cost(self) -> List[Tuple[float, float]]:
        return self.state.cost

    @property
    def events(self) -> Deque[Dict[str, Any]]:
        return self.state.events

    def apply(self, events: Sequence[Dict[str, Any]]) -> None:
        self.state.apply(events)

    def events_frame(self) -> pd.DataFrame:
        return pd.DataFrame(list(self.events)[::-1], columns=["time", "type", "node", "rank", "what"])

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The end of the run's training log on this machine (remote runs: the mirrored copy, where there is one)."""
        run_dir = self.record.get("run_dir")
        if not run_dir:
            return ""
        path = Path(run_dir) / "logs" / "train.log"
        try:
            with open(path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 64 * 1024))
                return "\n".join(fh.read().decode(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def manifest(self) -> Optional[Dict[str, Any]]:
        """The batch run's reproducibility manifest, where it exists."""
        path = (self.record.get("batch") or {}).get("manifest_path")
        if not path:
            return None
        try:
            return dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError):
            return None


__all__ = ["RunDetail", "RunPageState", "event_text"]
