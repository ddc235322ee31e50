"""What a batch run leaves to read: record() (a notebook's results, as `result` events), compare() and its table,
and the JUnit XML of a batch (a testsuite per run, a testcase per cell). Cheap to import, as execute.py is:
a notebook kernel's `from gaudi_nb.batch import record` loads no papermill, store or API."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Union

from ..events import EventWriter
from .execute import RUN_DIR_ENV, RUN_ID_ENV, is_remote, write_text

if TYPE_CHECKING:
    from ..api import Run


# -- results, comparison ---------------------------------------------------------------
def _scalar(value: Any) -> Any:
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item) and not isinstance(value, (str, bytes)):
        try:
            value = item()
        except (TypeError, ValueError):
            pass
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"record() (from gaudi_nb.batch import record) takes scalars (numbers, strings, booleans), got {type(value).__name__}")


def record(**values: Any) -> Optional[Dict[str, Any]]:
    """Record scalar results of this notebook run (`record(eval_loss=2.31, tokens_per_second=910)`).

    Under gaudi-nb batch this appends a `result` event to the run, and compare() shows the values.
    Run any other way (Jupyter, plain papermill), it does nothing and returns None.
    """
    run_id, run_dir = os.environ.get(RUN_ID_ENV), os.environ.get(RUN_DIR_ENV)
    if not run_id or not run_dir or not values:
        return None
    clean = {name: _scalar(value) for name, value in values.items()}
    writer = EventWriter(Path(run_dir) / "events.jsonl", run_id, node="local")
    try:
        return writer.emit("result", values=clean)
    finally:
        writer.close()


def compare(runs: Sequence[Union[Run, str]]) -> List[Dict[str, Any]]:
    """One row per run: run_id, status, duration_s, parameters, results (what the notebook record()ed), failed_cell."""
    from ..api import Run

    rows = []
    for run in runs:
        handle = run if isinstance(run, Run) else Run(run)
        rec = handle.record()
        info = rec.get("batch") or {}
        started, ended = rec.get("started_at"), rec.get("ended_at")
        rows.append(
            {
                "run_id": rec["run_id"],
                "status": rec["status"],
                "duration_s": (ended - started) if started is not None and ended is not None else None,
                "parameters": dict(info.get("parameters") or (rec.get("spec") or {}).get("parameters") or {}),
                "results": dict(info.get("results") or {}),
                "failed_cell": info.get("failed_cell"),
                "output_path": info.get("output_path"),
            }
        )
    return rows


def compare_table(rows: Sequence[Mapping[str, Any]]) -> Any:
    """compare()'s rows as a rich Table: parameters and results as columns."""
    from rich.table import Table

    param_names = list(dict.fromkeys(k for r in rows for k in r["parameters"]))
    result_names = list(dict.fromkeys(k for r in rows for k in r["results"]))
    table = Table()
    table.add_column("run", no_wrap=True)
    for header in ("status", "duration", *param_names, *(f"{k} (result)" if k in param_names else k for k in result_names)):
        table.add_column(header)
    for r in rows:
        duration = "—" if r["duration_s"] is None else f"{r['duration_s']:.1f} s"
        table.add_row(r["run_id"], r["status"], duration, *(_cell(r["parameters"].get(k)) for k in param_names), *(_cell(r["results"].get(k)) for k in result_names))
    return table


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# -- JUnit ---------------------------------------------------------------------------
def default_junit_path(run: Run) -> str:
    info = run.record().get("batch") or {}
    out = info.get("output_path")
    if out and not is_remote(out):
        return str(Path(out).parent / "junit.xml")
    return str(run.run_dir / "junit.xml") if run.run_dir else "junit.xml"


def junit_xml(runs: Sequence[Run]) -> str:
    """JUnit XML: a testsuite per run, a testcase per code cell (failure with the error; cells not reached skipped)."""
    import xml.etree.ElementTree as ET

    suites = ET.Element("testsuites")
    total = {"tests": 0, "failures": 0, "skipped": 0}
    for run in runs:
        rec = run.record()
        info = rec.get("batch") or {}
        cells = run.events(types=["cell"])
        start_event = next(iter(run.events(types=["run_start"])), {})
        plan = start_event.get("cells") or []
        notebook = Path(info.get("notebook") or rec.get("name") or "notebook").stem
        label = ", ".join(f"{k}={v}" for k, v in (info.get("parameters") or {}).items())
        suite = ET.SubElement(suites, "testsuite", name=f"{notebook}[{label}]" if label else notebook)
        by_index: Dict[int, Dict[str, Any]] = {}
        for e in cells:
            slot = by_index.setdefault(int(e["index"]), {"preview": "", "duration": None, "error": None, "done": False})
            if e.get("phase") == "start":
                slot["preview"] = e.get("source_preview") or ""
            else:
                slot["duration"], slot["done"] = e.get("duration_s"), True
                if e.get("phase") == "error":
                    slot["error"] = e.get("error") or "error"
        for item in plan:
            by_index.setdefault(int(item["index"]), {"preview": item.get("source_preview") or "", "duration": None, "error": None, "done": False, "not_run": True})
        counts = {"tests": 0, "failures": 0, "skipped": 0}
        for index in sorted(by_index):
            slot = by_index[index]
            name = f"cell {index}" + (f": {slot['preview']}" if slot["preview"] else "")
            case = ET.SubElement(suite, "testcase", classname=notebook, name=name, time=f"{slot['duration'] or 0:.3f}")
            counts["tests"] += 1
            if slot["error"]:
                counts["failures"] += 1
                failure = ET.SubElement(case, "failure", message=slot["error"], type=slot["error"].split(":")[0])
                failure.text = f"{rec['run_id']}: {slot['error']}"
            elif not slot["done"]:
                counts["skipped"] += 1
                ET.SubElement(case, "skipped", message="not reached: an earlier cell failed" if rec["status"] == "failed" else "not run")
        if rec["status"] == "failed" and not counts["failures"]:  # failed outside a cell (kernel, output)
            case = ET.SubElement(suite, "testcase", classname=notebook, name="notebook")
            ET.SubElement(case, "failure", message=str((rec.get("exit") or {}).get("reason") or "failed"))
            counts["tests"] += 1
            counts["failures"] += 1
        suite.set("tests", str(counts["tests"]))
        suite.set("failures", str(counts["failures"]))
        suite.set("skipped", str(counts["skipped"]))
        suite.set("errors", "0")
        started, ended = rec.get("started_at"), rec.get("ended_at")
        suite.set("time", f"{(ended - started) if started and ended else 0:.3f}")
        for k in total:
            total[k] += counts[k]
    for k, v in total.items():
        suites.set(k, str(v))
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def write_junit(runs: Sequence[Run], path: Union[str, Path]) -> str:
    write_text(junit_xml(runs), str(path) if is_remote(str(path)) else str(Path(path).expanduser().resolve()))
    return str(path)
