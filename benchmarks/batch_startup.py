"""Batch notebooks: `gaudi-nb batch NOTEBOOK` against plain `papermill NOTEBOOK OUT` on the same notebook. Prints JSON.

Both arms run the notebook with the same kernel, working folder and no progress bar; gaudi-nb adds
parameter checks, the reproducibility manifest, the run's events and the store. Each arm is timed
from the moment the benchmark starts the command to its exit (wall_s), and split the same way for
both by the timestamps papermill writes into the output notebook (metadata.papermill.start_time,
each cell's start_time and end_time):
  before_notebook_s   command start → papermill's execution manager created (imports, checks, manifest, store)
  kernel_start_s      → the first cell starts (the kernel is launched and ready)
  cells_s             → the last cell ends
  after_cells_s       → the command exits (output saved, events folded into the store, printed)
Arms alternate (plain first, then gaudi-nb first, ...) after one untimed warm-up each; figures are medians.

    python benchmarks/batch_startup.py                       # notebooks/03_cost_planning.ipynb, 7 repetitions
    python benchmarks/batch_startup.py --notebook tests/fixtures/notebooks/good.ipynb --reps 5
    python benchmarks/batch_startup.py --variant before=/tmp/old-tree   # also gaudi-nb from another source tree, interleaved

Goal (issue 7): gaudi-nb batch within 1 s of plain papermill.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STAGES = ("before_notebook_s", "kernel_start_s", "cells_s", "after_cells_s")


def _when(text: Optional[str]) -> Optional[float]:
    return None if not text else datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def split_times(output: Path, t0: float, t_end: float) -> Dict[str, Optional[float]]:
    nb = json.loads(output.read_text(encoding="utf-8"))
    started = _when(nb["metadata"]["papermill"].get("start_time"))
    cells = [c["metadata"].get("papermill") or {} for c in nb["cells"] if c.get("cell_type") == "code"]
    first = min((t for t in (_when(c.get("start_time")) for c in cells) if t is not None), default=None)
    last = max((t for t in (_when(c.get("end_time")) for c in cells) if t is not None), default=None)
    if started is None or first is None or last is None:
        return dict.fromkeys(STAGES)
    return {"before_notebook_s": started - t0, "kernel_start_s": first - started, "cells_s": last - first, "after_cells_s": t_end - last}


def run_plain(notebook: Path, out: Path, kernel: str) -> Dict[str, Any]:
    argv = [str(BIN / "papermill"), str(notebook), str(out), "--cwd", str(notebook.parent), "-k", kernel, "--no-progress-bar"]
    t0 = time.time()
    done = subprocess.run(argv, cwd=out.parent, capture_output=True, text=True, timeout=600)
    t_end = time.time()
    if done.returncode != 0:
        raise RuntimeError(f"papermill failed ({done.returncode}): {done.stderr[-3000:]}")
    return {"wall_s": t_end - t0, **split_times(out, t0, t_end)}


def run_gaudi_nb(notebook: Path, home: Path, pythonpath: Optional[str] = None) -> Dict[str, Any]:
    runs = home / "runs"
    before = set(runs.iterdir()) if runs.exists() else set()
    env = {**os.environ, "GAUDI_NB_HOME": str(home)}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.time()
    done = subprocess.run([str(BIN / "gaudi-nb"), "batch", str(notebook)], env=env, cwd=home.parent, capture_output=True, text=True, timeout=600)  # not from inside a source tree
    t_end = time.time()
    if done.returncode != 0:
        raise RuntimeError(f"gaudi-nb batch failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-3000:]}")
    [folder] = set(runs.iterdir()) - before
    return {"wall_s": t_end - t0, **split_times(folder / "output.ipynb", t0, t_end)}


def median(samples: List[Dict[str, Any]], key: str) -> Optional[float]:
    values = [s[key] for s in samples if s.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def summarise(samples: List[Dict[str, Any]]) -> Dict[str, Any]:
    return {"wall_s": median(samples, "wall_s"), "wall_all": [round(s["wall_s"], 2) for s in samples], **{k: median(samples, k) for k in STAGES}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--notebook", type=Path, default=REPO / "notebooks" / "03_cost_planning.ipynb")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--kernel", default="python3")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL=DIR",
                        help="also run gaudi-nb from the source tree DIR (PYTHONPATH), in the same interleaving: compare a change side by side (repeatable)")
    args = parser.parse_args()
    notebook = args.notebook.resolve()
    variants: List[Tuple[str, Optional[str]]] = [("gaudi_nb_batch", None)] + [(v.split("=", 1)[0], str(Path(v.split("=", 1)[1]).resolve())) for v in args.variant]
    source = dict(variants)
    arms = ["plain_papermill"] + [label for label, _ in variants]
    samples: Dict[str, List[Dict[str, Any]]] = {arm: [] for arm in arms}

    with tempfile.TemporaryDirectory(prefix="gaudi-nb-batch-startup-") as tmp:

        def run(arm: str, index: int) -> Dict[str, Any]:
            if arm == "plain_papermill":
                return run_plain(notebook, Path(tmp) / f"plain-{index}.ipynb", args.kernel)
            return run_gaudi_nb(notebook, Path(tmp) / f"home-{arm}", source[arm])

        for i in range(args.warmup):
            for arm in arms:
                run(arm, -1 - i)
        for i in range(args.reps):
            for arm in arms[i % len(arms) :] + arms[: i % len(arms)]:  # rotate the order: drift hits every arm alike
                samples[arm].append(run(arm, i))
                print(f"rep {i} {arm}: {samples[arm][-1]['wall_s']:.2f} s", file=sys.stderr)
    summary = {arm: summarise(samples[arm]) for arm in arms}
    p = summary["plain_papermill"]
    result: Dict[str, Any] = {
        "benchmark": "batch notebook: plain papermill vs gaudi-nb batch",
        "notebook": str(notebook.relative_to(REPO) if notebook.is_relative_to(REPO) else notebook),
        "reps": args.reps,
        "cpus": os.cpu_count(),
        "variants": {label: path or "installed" for label, path in variants},
        **summary,
    }
    for label, _ in variants:
        g = summary[label]
        diff = round(g["wall_s"] - p["wall_s"], 3)
        result[f"{label}_vs_plain"] = {
            "wall_diff_s": diff,
            "stage_diff_s": {k: round(g[k] - p[k], 3) if g[k] is not None and p[k] is not None else None for k in STAGES},
            "goal_met": diff <= 1.0,
        }
    result["goal"] = {"within_s": 1.0}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
