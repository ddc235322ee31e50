"""The runs table: one row per run record, shaped once for every view that lists runs.

`gaudi-nb runs`, `%gaudi_runs`, the dashboard's Runs page and the server extension's runs payload
(the JupyterLab sidebar) all take their rows from `run_row`; the text views take their cells from
`row_cells`, under `HEAD`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

from . import formatting

HEAD = ["run", "status", "progress", "loss", "tokens/s", "cost", "target"]
LOCAL = "local"


def project_of(record: Dict[str, Any]) -> str:
    """The run's project: the spec's `project` where given, else a batch run's notebook, else the run's name."""
    spec = record.get("spec") or {}
    if spec.get("project"):
        return str(spec["project"])
    batch = record.get("batch") or {}
    if batch.get("notebook"):
        return Path(str(batch["notebook"])).stem
    return str(record.get("name") or "(no project)")


def run_row(record: Dict[str, Any]) -> Dict[str, Any]:
    """A run record as one JSON-ready row (a record carries its whole spec and events summary; a row, what a table shows)."""
    spec = record.get("spec") or {}
    metrics, cost = record.get("metrics") or {}, record.get("cost") or {}
    batch = record.get("batch") or {}
    return {
        "run_id": record["run_id"],
        "name": record.get("name"),
        "status": record.get("status"),
        "pending_reason": pending_reason(record),  # while a scheduler (Slurm, Kubernetes) holds the run: why
        "kind": record.get("kind") or "train",
        "owner": record.get("owner"),
        "project": project_of(record),
        "target": record.get("target") or spec.get("target") or LOCAL,
        "model": spec.get("model") or ("notebook" if record.get("kind") == "batch" else None),
        "accelerator": record.get("accelerator"),
        "device_count": record.get("device_count"),
        "devices": record.get("device_count") or spec.get("devices"),
        "nodes": int(cost.get("nodes") or spec.get("nodes") or 1),
        "step": int(record.get("steps_completed") or 0),
        "max_steps": record.get("max_steps"),
        "cells_done": batch.get("cells_done", 0) if record.get("kind") == "batch" else None,
        "cells_total": batch.get("cells_total") if record.get("kind") == "batch" else None,
        "loss": metrics.get("final_loss"),
        "tokens_per_second": metrics.get("tokens_per_second"),
        "usd": cost.get("usd"),
        "usd_per_million_tokens": cost.get("usd_per_million_tokens"),
        "price_per_hour": cost.get("price_per_hour"),
        "budget_usd": cost.get("budget_usd"),
        "budget_left_usd": cost.get("budget_left_usd"),
        "created_at": record.get("created_at"),
        "started_at": record.get("started_at"),
        "ended_at": record.get("ended_at"),
        "reason": (record.get("exit") or {}).get("reason") or (record.get("queued") or {}).get("reason"),
        "status_text": status_text(record),
        "bad_lines": formatting.bad_lines(record),  # lines of its events kept aside: a warning on the run's row
    }


def status_text(record: Dict[str, Any]) -> str:
    """The status as every view says it: `pending: Resources` (Slurm) or `pending: Insufficient habana.ai/gaudi`
    (Kubernetes) while a scheduler holds the run, and why."""
    reason = pending_reason(record)
    return f"pending: {reason}" if reason else str(record.get("status"))


def pending_reason(record: Dict[str, Any]) -> Optional[str]:
    """Why a scheduler holds a pending run, in a few words; None once it is placed."""
    return (record.get("queued") or {}).get("short") if record.get("status") == "pending" else None


def progress(row: Dict[str, Any]) -> str:
    """steps for a training run, cells for a batch notebook"""
    if row.get("kind") == "batch" and row.get("cells_done") is not None:
        return f"cells {row['cells_done']}/{row.get('cells_total') or '?'}"
    return f"step {row['step']}/{row.get('max_steps') or '?'}"


def row_cells(row: Dict[str, Any]) -> List[str]:
    """The cells under HEAD, as text (money through the one formatter)."""
    return [
        row["run_id"],
        row["status_text"],
        progress(row),
        _number(row.get("loss")),
        f"{row['tokens_per_second']:,.0f}" if row.get("tokens_per_second") else "—",
        formatting.money(row.get("usd")),
        str(row.get("target") or LOCAL),
    ]


def _number(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:.4f}"


__all__ = ["HEAD", "progress", "project_of", "row_cells", "run_row", "status_text"]
