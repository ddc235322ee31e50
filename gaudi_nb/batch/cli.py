"""`gaudi-nb batch`: a thin view over gaudi_nb.batch (the lead mounts it: app.command("batch")(batch_command))."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import SpecError
from ..private import secret_value
from .manifest import SecretValue

out = Console()
err = Console(stderr=True)


def pair_parameters(names: Optional[List[str]], values: Optional[List[str]]) -> List[Tuple[str, str]]:
    """`-p NAME VALUE` pairs from what click parsed: -p takes NAME, and VALUE arrives as a positional.

    (This typer refuses List[Tuple[str, str]] options, so the pairs are rebuilt here, in order.)
    `-p NAME=VALUE` works too.
    """
    queue = list(values or [])
    pairs = []
    for name in names or []:
        if "=" in name:
            key, _, value = name.partition("=")
            pairs.append((key.strip(), value))
        elif queue:
            pairs.append((name, queue.pop(0)))
        else:
            raise SpecError(f"-p {name}: give a value: -p {name} VALUE")
    if queue:
        raise SpecError(f"unexpected argument {' '.join(queue)!r}: parameters go as -p NAME VALUE")
    return pairs


def split_notebook(positional: List[str]) -> Tuple[str, List[str]]:
    """The notebook (the first .ipynb, else the first argument) and the -p values around it."""
    if not positional:
        raise SpecError("give the notebook to run: gaudi-nb batch NOTEBOOK.ipynb -p NAME VALUE")
    index = next((i for i, a in enumerate(positional) if a.endswith(".ipynb")), 0)
    return positional[index], positional[:index] + positional[index + 1 :]


def parse_parameters(pairs: List[Tuple[str, str]]) -> Dict[str, Any]:
    params: Dict[str, Any] = {}
    for name, value in pairs:
        if name in params:
            raise SpecError(f"parameter {name} given twice: sweep several values with -p {name} a,b,c")
        # -p NAME env:VAR / file:PATH: the value stays out of ps and shell history, and is masked wherever it is recorded
        params[name] = SecretValue(secret_value(value, f"-p {name}")) if value.startswith(("env:", "file:")) else value
    return params


class Progress:
    """One line per cell, written as the cell starts and finished when it ends (works in pipes and CI logs)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.total = 0
        self.count = 0
        self.open_line = False

    def __call__(self, event: Dict[str, Any]) -> None:
        kind = event.get("type")
        c = self.console
        if kind == "run_start":
            self.total = len(event.get("cells") or [])
            self.count = 0
            params = ", ".join(f"{k}={v}" for k, v in (event.get("spec") or {}).get("parameters", {}).items())
            c.print(f"run [bold]{escape(event['run_id'])}[/]: {escape(Path(event.get('notebook') or '').name)}" + (f" ({escape(params)})" if params else "") + f", {self.total} cells → {escape(str(event.get('output_path')))}", highlight=False, soft_wrap=True)
        elif kind == "cell":
            phase = event.get("phase")
            if phase == "start":
                self.count += 1
                c.print(f"  [{self.count}/{self.total or '?'}] cell {event['index']}: {escape(event.get('source_preview') or '')} … ", end="", highlight=False, soft_wrap=True)
                self.open_line = True
            elif phase == "end":
                self._finish(f"[green]ok[/] {event.get('duration_s') or 0:.2f} s")
            elif phase == "error":
                self._finish(f"[red]failed[/] {escape(event.get('error') or '')}")
        elif kind == "run_end":
            if self.open_line:
                self._finish("")
            status = event.get("status")
            style = "green" if status == "succeeded" else "red"
            c.print(f"[{style}]{status}[/] in {event.get('duration_s') or 0:.1f} s" + (f": {escape(str(event['reason']))}" if event.get("reason") else ""), highlight=False, soft_wrap=True)

    def _finish(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True)
        self.open_line = False


def skip_unused_imports() -> None:
    """Skip what this process would import and never use: it runs no user code (the notebook runs
    in its own kernel), and nbformat validates notebooks without checking string formats, so
    jsonschema's optional IRI checker is dead weight here; its rfc3987_syntax compiles 39 Lark
    grammars on import (0.5 s on an idle 2-core machine, 2 s on a busy one, before any cell runs).
    Only this command's process: batch() called from Python changes nothing of the caller's."""
    if "jsonschema" not in sys.modules:  # once jsonschema is loaded, its checkers are settled
        sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]  # None: `import` raises ImportError, which jsonschema expects


def batch_command(
    arguments: List[str] = typer.Argument(..., metavar="NOTEBOOK", help="the notebook (.ipynb) to run; its cell tagged 'parameters' declares the parameters and their types"),
    parameter: Optional[List[str]] = typer.Option(None, "-p", "--parameter", metavar="NAME VALUE", help="a parameter, checked against the parameters cell before anything runs (repeatable); 'a,b,c' sweeps a number over a grid of runs"),
    output: Optional[str] = typer.Option(None, "--output", "-o", help="folder (<folder>/<run_id>/output.ipynb), .ipynb path, or s3://bucket/prefix; default the run folder"),
    target: str = typer.Option("local", "--target", help="where the notebook runs: local, or an attached Slurm cluster (a one-node job)"),
    kernel_name: Optional[str] = typer.Option(None, "--kernel", help="Jupyter kernel name (default: the notebook's, else python3)"),
    ci: bool = typer.Option(False, "--ci", help="write JUnit XML (one testcase per cell) and exit non-zero when a notebook fails"),
    junit: Optional[str] = typer.Option(None, "--junit", help="where the JUnit XML goes (default <output dir>/junit.xml); implies writing it"),
    compare: bool = typer.Option(False, "--compare", help="print the runs' comparison table (parameters, status, duration, recorded results)"),
    as_json: bool = typer.Option(False, "--json", help="print the run record(s) as JSON (progress goes to stderr)"),
    report_to: Optional[str] = typer.Option(None, "--report-to", help="experiment trackers, comma-separated: mlflow, wandb (the run, its recorded results and its manifest)"),
) -> None:
    """Run a notebook as a batch job with papermill: typed parameters, live cell progress, a reproducibility manifest."""
    skip_unused_imports()
    from . import execute, results

    notebook, values = split_notebook(arguments)
    params = parse_parameters(pair_parameters(parameter, values))
    prepared = execute.prepare(notebook, params, target=target, output=output, kernel_name=kernel_name)  # SpecError: exit 2, nothing ran
    console = err if as_json else out
    if len(prepared.grid) > 1:
        console.print(f"sweep: {len(prepared.grid)} runs", highlight=False)
    runs = execute.batch_sweep(notebook, prepared=prepared, on_event=Progress(console), report_to=report_to)
    if ci or junit:
        path = results.write_junit(runs, junit or results.default_junit_path(runs[0]))
        console.print(f"JUnit XML: {escape(str(path))}", highlight=False, soft_wrap=True)
    records = [r.record() for r in runs]
    if compare:
        wide = console if console.is_terminal else Console(file=console.file, width=240)  # CI logs: no squeezed columns
        wide.print(results.compare_table(results.compare(runs)))
    if as_json:
        out.print_json(json.dumps(records[0] if len(records) == 1 else records, default=str))
    failed = [r for r in records if r["status"] != "succeeded"]
    if failed:
        lines = [execute.failure_line(r) for r in failed]
        err.print(f"[red]error:[/] notebook failed: {escape(lines[0])}" + (f" (and {len(lines) - 1} more runs)" if len(lines) > 1 else ""), highlight=False, soft_wrap=True)
        raise typer.Exit(1)
