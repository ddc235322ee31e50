"""Notebooks as runs: batch() executes a notebook with papermill as one run in the store.

The road: parameters checked against the parameters cell (SpecError before anything is
written) → run registered (kind "batch") → run_start → one `cell` event per hook, live,
in $GAUDI_NB_HOME/runs/<run_id>/events.jsonl → run_end. Views read the run like any other.

Secret-looking parameters (manifest.looks_secret) reach the kernel as given and are masked in
everything recorded or shown: the store, the events, the manifest, the output notebook, the CLI.

Importing this module is cheap (the standard library and gaudi_nb's events): papermill, the
store and the API load when a notebook runs, so `from gaudi_nb.batch import record` costs a
notebook kernel nothing and gaudi_nb's top level can bind `batch` eagerly.
"""
from __future__ import annotations

import contextlib
import json
import os
import posixpath
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from .. import paths
from ..errors import GaudiNbError, SpecError
from ..events import EventWriter
from ..private import private_dir
from . import parameters as params_mod
from .manifest import build_manifest, mask

if TYPE_CHECKING:
    from ..agent.trackers import Trackers
    from ..api import Run
    from ..store import RunStore

EventCallback = Callable[[Dict[str, Any]], None]
RUN_ID_ENV = "GAUDI_NB_RUN_ID"
RUN_DIR_ENV = "GAUDI_NB_RUN_DIR"
OUTPUT_NAME = "output.ipynb"
MANIFEST_NAME = "manifest.json"


class NotebookFailed(GaudiNbError):
    """A batch notebook failed (raised by batch(ci=True) after the JUnit file is written)."""

    def __init__(self, message: str, runs: Sequence[Run] = ()) -> None:
        super().__init__(message)
        self.runs = list(runs)


@dataclass
class Prepared:
    """A notebook checked and ready to run: everything that can fail on bad input has been tried."""

    notebook: Path
    declared: Dict[str, params_mod.Parameter]
    grid: List[Dict[str, Any]]
    target: str
    kernel_name: str
    output: Optional[str]
    extra: Dict[str, Any] = field(default_factory=dict)


# -- checks (no side effects) ------------------------------------------------------
def _kernel_for(nb: Mapping[str, Any], kernel_name: Optional[str]) -> str:
    name = kernel_name or (nb.get("metadata", {}).get("kernelspec") or {}).get("name") or "python3"
    try:
        from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    except ImportError as exc:  # pragma: no cover - papermill depends on jupyter_client
        raise SpecError("jupyter_client is not installed: pip install 'gaudi_nb[notebook]'") from exc
    try:
        KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        raise SpecError(f"kernel '{name}' is not installed here (jupyter kernelspec list shows those that are; python -m ipykernel install --sys-prefix --name python3 adds this Python's)") from None
    return name


def _check_target(target: str) -> str:
    from ..targets import target_for

    found = target_for(target)  # unknown targets stop here with the registry's message
    if target != "local":
        from .slurm_job import check_cluster

        check_cluster(found, target)  # a Slurm cluster whose run root is here runs it as a one-node job
    return target


def _check_output(output: Optional[Union[str, Path]], sweep: bool) -> Optional[str]:
    if output is None:
        return None
    text = str(output)
    if text.endswith(".ipynb") and sweep:
        raise SpecError(f"output {text}: a sweep writes one notebook per run: give a folder (or s3:// prefix) instead")
    if "://" in text and not text.startswith("s3://"):
        from papermill.iorw import papermill_io  # type: ignore[import-untyped]

        try:
            papermill_io.get_handler(text)
        except Exception as exc:
            raise SpecError(f"output {text}: {exc}") from None
    return text


def prepare(
    notebook: Union[str, Path],
    parameters: Optional[Mapping[str, Any]] = None,
    *,
    target: str = "local",
    output: Optional[Union[str, Path]] = None,
    kernel_name: Optional[str] = None,
) -> Prepared:
    """Check everything about a batch job that can be checked without running it; raises SpecError."""
    _require_papermill()
    path = Path(notebook).expanduser().resolve()
    nb = params_mod.load_notebook(path)
    declared = params_mod.notebook_parameters(nb)
    grid = params_mod.expand_grid(declared, parameters)
    return Prepared(
        notebook=path,
        declared=declared,
        grid=grid,
        target=_check_target(target),
        kernel_name=_kernel_for(nb, kernel_name),
        output=_check_output(output, sweep=len(grid) > 1),
    )


def _require_papermill() -> None:
    from ..errors import require

    require("papermill", "notebook", "batch notebooks")


# -- where things go -----------------------------------------------------------------
def output_paths(output: Optional[str], run_id: str, run_dir: Path) -> Tuple[str, str]:
    """(output notebook, manifest.json): a folder gets <folder>/<run_id>/output.ipynb; a .ipynb path is used as is."""
    if output is None:
        return str(run_dir / OUTPUT_NAME), str(run_dir / MANIFEST_NAME)
    if "://" in output:
        if output.endswith(".ipynb"):
            return output, posixpath.join(posixpath.dirname(output), MANIFEST_NAME)
        folder = posixpath.join(output.rstrip("/"), run_id)
        return posixpath.join(folder, OUTPUT_NAME), posixpath.join(folder, MANIFEST_NAME)
    local = Path(output).expanduser().resolve()  # absolute: papermill runs the notebook from its own folder
    if local.suffix == ".ipynb":
        return str(local), str(local.parent / MANIFEST_NAME)
    return str(local / run_id / OUTPUT_NAME), str(local / run_id / MANIFEST_NAME)


def is_remote(path: str) -> bool:
    return "://" in path


def write_text(text: str, path: str) -> None:
    """Local files directly; s3:// and friends through papermill's own I/O handlers."""
    if is_remote(path):
        from papermill.iorw import papermill_io  # type: ignore[import-untyped]

        papermill_io.write(text, path)
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text, encoding="utf-8")


def new_run_id(notebook: Path) -> str:
    stem = "".join(c if (c.isascii() and c.isalnum()) or c in "-." else "-" for c in notebook.stem.lower())[:40].strip("-.") or "notebook"  # rundir.RUN_ID_PATTERN
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"


@contextlib.contextmanager
def _kernel_env(values: Mapping[str, str]) -> Iterator[None]:
    """Variables the kernel inherits (it is started from this process's environment)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _plan(notebook: Path, parameters: Mapping[str, Any], kernel_name: str) -> List[Dict[str, Any]]:
    """The code cells papermill will run (the injected parameters cell included): index and first line."""
    from papermill.iorw import load_notebook_node  # type: ignore[import-untyped]
    from papermill.parameterize import parameterize_notebook  # type: ignore[import-untyped]

    from .engine import source_preview

    nb = load_notebook_node(str(notebook))
    if parameters:
        nb = parameterize_notebook(nb, dict(parameters), kernel_name=kernel_name)
    return [{"index": i, "source_preview": source_preview(c), "tags": list(c.get("metadata", {}).get("tags") or [])} for i, c in enumerate(nb.cells) if c.get("cell_type") == "code"]


# -- running -------------------------------------------------------------------------
def _default_store() -> RunStore:
    from ..store import RunStore

    return RunStore()


def _execute(prepared: Prepared, parameters: Dict[str, Any], store: RunStore, on_event: Optional[EventCallback], seeds: Optional[Mapping[str, Any]], report_to: Optional[str] = None) -> Run:
    from ..api import Run

    notebook = prepared.notebook
    run_id = new_run_id(notebook)
    run_dir = paths.run_dir(run_id)
    private_dir(run_dir)  # owner-only, as every run folder
    output_path, manifest_path = output_paths(prepared.output, run_id, run_dir)
    plan = _plan(notebook, parameters, prepared.kernel_name)
    manifest = build_manifest(params_mod.effective(prepared.declared, parameters), seeds, notebook=notebook, run_id=run_id)
    manifest["parameters_given"] = mask(parameters)
    # what is recorded (store, run_start, hence every view) shows secret-looking values masked; papermill gets the real ones
    spec = {"notebook": str(notebook), "parameters": mask(parameters), "target": prepared.target, "name": notebook.stem, "kernel_name": prepared.kernel_name, "output": output_path}
    store.register(run_id, spec=spec, target=prepared.target, run_dir=str(run_dir), kind="batch", name=notebook.stem)
    job = BatchJob(run_id=run_id, run_dir=str(run_dir), notebook=str(notebook), parameters=dict(parameters), kernel_name=prepared.kernel_name,
                   output_path=output_path, manifest_path=manifest_path, spec=spec, plan=plan, manifest=manifest, report_to=report_to)
    if prepared.target == "local":
        run_notebook(job, on_event)
    else:
        from .slurm_job import run_on_cluster

        run_on_cluster(prepared.target, job, on_event)
    run = Run(run_id, store)
    run.sync()
    return run


@dataclass
class BatchJob:
    """One notebook run's inputs, all that run_notebook needs (a Slurm job reads them from job/batch.json)."""

    run_id: str
    run_dir: str
    notebook: str
    parameters: Dict[str, Any]
    kernel_name: str
    output_path: str
    manifest_path: str
    spec: Dict[str, Any]
    plan: List[Dict[str, Any]]
    manifest: Dict[str, Any]
    report_to: Optional[str] = None


def run_notebook(job: BatchJob, on_event: Optional[EventCallback], node: str = "local") -> None:
    """papermill over the notebook, here: run_start, a `cell` event per hook, run_end (the local road, and a Slurm job's task)."""
    import papermill as pm  # type: ignore[import-untyped]
    from papermill.exceptions import PapermillExecutionError  # type: ignore[import-untyped]

    from . import engine as _engine  # registers the "gaudi_nb" papermill engine

    run_id, run_dir, notebook, output_path, manifest_path = job.run_id, Path(job.run_dir), Path(job.notebook), job.output_path, job.manifest_path
    writer = EventWriter(run_dir / "events.jsonl", run_id, node=node)

    def emit(type: str, **fields: Any) -> None:
        event = writer.emit(type, **fields)
        if on_event is not None:
            on_event(event)

    manifest_text = json.dumps(job.manifest, indent=2, default=str)
    status, reason, failed_cell, exit_code = "succeeded", None, None, 0
    trackers: Optional[Trackers] = None
    started = time.monotonic()
    emit("run_start", spec=job.spec, kind="batch", run_dir=str(run_dir), pid=os.getpid(), accelerator=job.manifest["accelerator"], launcher="papermill", trainer=None, notebook=str(notebook), output_path=output_path, manifest_path=manifest_path, cells=job.plan)
    try:
        write_text(manifest_text, manifest_path)
        if manifest_path != str(run_dir / MANIFEST_NAME):
            (run_dir / MANIFEST_NAME).write_text(manifest_text, encoding="utf-8")  # the run folder always has one
        if not is_remote(output_path):
            Path(output_path).parent.mkdir(parents=True, exist_ok=True)
        if job.report_to:  # after the manifest is written: the trackers log it as an artifact
            from ..agent.trackers import Trackers
            from ..rundir import RunFolder

            trackers = Trackers.start_named(tracker_names_checked(job.report_to), job.spec, RunFolder(run_dir), run_id)
        with _kernel_env({RUN_ID_ENV: run_id, RUN_DIR_ENV: str(run_dir), "GAUDI_NB_PANEL": "static"}):  # a batch notebook keeps its panels as static output
            pm.execute_notebook(
                str(notebook),
                output_path,
                parameters=job.parameters or None,
                engine_name=_engine.ENGINE_NAME,
                kernel_name=job.kernel_name,
                progress_bar=False,
                cwd=str(notebook.parent),
                event_writer=writer,
                on_event=on_event,
                notebook_metadata={"gaudi_nb": {"run_id": run_id, "manifest": job.manifest}},
            )
    except PapermillExecutionError as exc:
        status, exit_code, failed_cell = "failed", 1, exc.cell_index
        reason = f"cell {exc.cell_index} failed: {exc.ename}: {exc.evalue}" if exc.evalue else f"cell {exc.cell_index} failed: {exc.ename}"
    except KeyboardInterrupt:
        emit("run_end", status="stopped", exit_code=130, reason="interrupted", duration_s=time.monotonic() - started, failed_cell=None)
        writer.close()
        raise
    except Exception as exc:  # kernel died, timeout, output not writable: the run failed, with the reason
        status, exit_code, reason = "failed", 1, f"{type(exc).__name__}: {exc}".strip()
    emit("run_end", status=status, exit_code=exit_code, reason=reason, duration_s=time.monotonic() - started, failed_cell=failed_cell, last_log_lines=[reason] if reason else [])
    writer.close()
    if trackers is not None:
        trackers.close()


def batch(
    notebook: Union[str, Path],
    parameters: Optional[Dict[str, Any]] = None,
    target: str = "local",
    output: Optional[str] = None,
    kernel_name: Optional[str] = None,
    ci: bool = False,
    junit: Optional[str] = None,
    *,
    seeds: Optional[Mapping[str, Any]] = None,
    on_event: Optional[EventCallback] = None,
    store: Optional[RunStore] = None,
    report_to: Optional[str] = None,
) -> Run:
    """Execute a notebook with papermill as one run; returns its Run when the notebook has finished.

    Parameters are checked against the notebook's `parameters` cell first (SpecError, nothing run).
    `output`: a folder (<folder>/<run_id>/output.ipynb), a .ipynb path, or s3://bucket/prefix;
    default $GAUDI_NB_HOME/runs/<run_id>/output.ipynb. manifest.json goes beside it.
    `ci`: write JUnit XML (to `junit`, default beside the output) and raise NotebookFailed on failure.
    `on_event`: called with every event as it is written (the CLI prints progress with it).
    `report_to`: "mlflow,wandb": the run, its recorded results and its manifest go to those trackers.
    """
    tracker_names_checked(report_to)
    prepared = prepare(notebook, parameters, target=target, output=output, kernel_name=kernel_name)
    if len(prepared.grid) > 1:
        raise SpecError(f"parameters sweep over {len(prepared.grid)} combinations: use batch_sweep (from gaudi_nb.batch import batch_sweep), or gaudi-nb batch, which sweeps")
    run = _execute(prepared, prepared.grid[0], store or _default_store(), on_event, seeds, report_to)
    if ci or junit:
        from .results import default_junit_path, write_junit  # results imports this module

        write_junit([run], junit or default_junit_path(run))
    if ci and run.status != "succeeded":
        raise NotebookFailed(failure_line(run.record()), [run])
    return run


def batch_sweep(
    notebook: Union[str, Path],
    parameters: Optional[Dict[str, Any]] = None,
    target: str = "local",
    output: Optional[str] = None,
    kernel_name: Optional[str] = None,
    ci: bool = False,
    junit: Optional[str] = None,
    *,
    seeds: Optional[Mapping[str, Any]] = None,
    on_event: Optional[EventCallback] = None,
    store: Optional[RunStore] = None,
    prepared: Optional[Prepared] = None,
    report_to: Optional[str] = None,
) -> List[Run]:
    """One run per combination of swept values ("1e-4,3e-4,1e-3" or a list), one after another.

    Every combination is checked before the first one runs. A failed run does not stop the sweep.
    """
    tracker_names_checked(report_to)
    prepared = prepared or prepare(notebook, parameters, target=target, output=output, kernel_name=kernel_name)
    store = store or _default_store()
    runs = [_execute(prepared, point, store, on_event, seeds, report_to) for point in prepared.grid]
    if ci or junit:
        from .results import default_junit_path, write_junit  # results imports this module

        write_junit(runs, junit or default_junit_path(runs[0]))
    failed = [r for r in runs if r.status != "succeeded"]
    if ci and failed:
        raise NotebookFailed(f"{len(failed)} of {len(runs)} runs failed; first: {failure_line(failed[0].record())}", runs)
    return runs


def tracker_names_checked(report_to: Optional[str]) -> List[str]:
    from ..spec import tracker_names

    try:
        return tracker_names(report_to)
    except ValueError as exc:
        raise SpecError(f"report_to: {exc}") from None


def failure_line(record: Mapping[str, Any]) -> str:
    reason = (record.get("exit") or {}).get("reason") or record.get("status")
    return f"{record['run_id']}: {reason}"
