"""A papermill engine whose cell hooks write `cell` events to the run's events.jsonl as cells run.

Papermill's engine is a template method: `Engine.execute_notebook` owns the lifecycle
(notebook start, cell start, cell exception, cell complete, notebook end) through a
NotebookExecutionManager. This engine only swaps in a manager that also emits events.
Registered with papermill as engine "gaudi_nb".
"""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Any, Callable, Dict, Iterator, Optional

from papermill.engines import NBClientEngine, NotebookExecutionManager, papermill_engines  # type: ignore[import-untyped]

from ..events import EventWriter
from .manifest import SecretValue, mask, mask_source

ENGINE_NAME = "gaudi_nb"
PREVIEW_CHARS = 80
INJECTED_TAG = "injected-parameters"

EventCallback = Callable[[Dict[str, Any]], None]


def _injected(cell: Any) -> bool:
    return INJECTED_TAG in (cell.get("metadata", {}).get("tags") or [])


def source_preview(cell: Any) -> str:
    """The cell's first line of code; in the injected parameters cell, secret-looking values masked."""
    source = cell.get("source", "")
    source = "".join(source) if isinstance(source, list) else str(source)
    if _injected(cell):
        source = mask_source(source)
    lines = [line.strip() for line in source.splitlines() if line.strip()]
    code = [line for line in lines if not line.startswith("#")]
    line = (code or lines or [""])[0]
    if _injected(cell):
        line = "(injected parameters) " + line
    return line if len(line) <= PREVIEW_CHARS else line[: PREVIEW_CHARS - 1] + "…"


def _with_secrets(nb: Any) -> Optional[Dict[str, Any]]:
    """nb.metadata.papermill when the injected parameters include a secret (by its name, or given as env:VAR / file:PATH), else None."""
    papermill_meta = nb.get("metadata", {}).get("papermill") or {}
    parameters = papermill_meta.get("parameters")
    return papermill_meta if isinstance(parameters, dict) and mask(parameters) != parameters else None


def _masked_source(cell: Any, parameters: Dict[str, Any]) -> str:
    source = cell["source"]
    given = [name for name, value in parameters.items() if isinstance(value, SecretValue)]
    return mask_source("".join(source) if isinstance(source, list) else source, given)


@contextlib.contextmanager
def secrets_masked(nb: Any) -> Iterator[None]:
    """While it lasts, the notebook shows secret-looking parameters masked: in the injected cell's
    source and in metadata.papermill.parameters. The kernel runs the real source: papermill saves
    the notebook from its hooks, before nbclient reads a cell, and this restores it right after."""
    papermill_meta = _with_secrets(nb)
    if papermill_meta is None:
        yield
        return
    parameters = papermill_meta["parameters"]
    cells = [c for c in nb.get("cells", []) if _injected(c)]
    sources = [c["source"] for c in cells]
    try:
        papermill_meta["parameters"] = mask(parameters)
        for cell in cells:
            cell["source"] = _masked_source(cell, parameters)
        yield
    finally:
        papermill_meta["parameters"] = parameters
        for cell, source in zip(cells, sources, strict=True):
            cell["source"] = source


def mask_secrets(nb: Any) -> Any:
    """The notebook with secret-looking parameters masked for good (once execution is over)."""
    papermill_meta = _with_secrets(nb)
    if papermill_meta is not None:
        parameters = papermill_meta["parameters"]
        papermill_meta["parameters"] = mask(parameters)
        for cell in nb.get("cells", []):
            if _injected(cell):
                cell["source"] = _masked_source(cell, parameters)
    return nb


def error_text(exception: Any) -> str:
    """'ZeroDivisionError: division by zero' from nbclient's CellExecutionError (or any exception)."""
    ename, evalue = getattr(exception, "ename", None), getattr(exception, "evalue", None)
    if ename:
        return f"{ename}: {evalue}" if evalue else str(ename)
    return f"{type(exception).__name__}: {exception}" if exception is not None else "error"


class EventingExecutionManager(NotebookExecutionManager):
    """Papermill's manager plus one event per hook: cell start, end (with duration) and error."""

    def __init__(self, nb: Any, *, writer: EventWriter, on_event: Optional[EventCallback] = None, metadata: Optional[Dict[str, Any]] = None, **kwargs: Any) -> None:
        self.writer = writer
        self.on_event = on_event
        self.extra_metadata = metadata or {}
        self._started: Dict[int, float] = {}
        self._failed: set = set()
        self._handled: Optional[BaseException] = None
        super().__init__(nb, **kwargs)

    def save(self, **kwargs: Any) -> None:
        with secrets_masked(self.nb):  # what is written is masked; the kernel gets the real values
            super().save(**kwargs)

    def _emit(self, **fields: Any) -> None:
        event = self.writer.emit("cell", **fields)
        if self.on_event is not None:
            self.on_event(event)

    def notebook_start(self, **kwargs: Any) -> None:
        # the manifest rides in the output notebook from the first save on
        for key, value in self.extra_metadata.items():
            self.nb.metadata[key] = value
        super().notebook_start(**kwargs)

    def cell_start(self, cell: Any, cell_index: Optional[int] = None, **kwargs: Any) -> None:
        super().cell_start(cell, cell_index, **kwargs)
        if cell.get("cell_type") == "code" and cell_index is not None:
            self._started[cell_index] = time.monotonic()
            self._handled = sys.exc_info()[1]  # an exception the caller is handling is not this cell's
            self._emit(index=cell_index, phase="start", source_preview=source_preview(cell), tags=list(cell.get("metadata", {}).get("tags") or []))

    def cell_exception(self, cell: Any, cell_index: Optional[int] = None, **kwargs: Any) -> None:
        super().cell_exception(cell, cell_index, **kwargs)
        exception = kwargs.get("exception")
        if getattr(exception, "ename", None) == "SystemExit" and str(getattr(exception, "evalue", "")) in ("", "0"):
            return  # sys.exit(0) ends a notebook cleanly for papermill too; cell_complete reports "end"
        if cell_index is not None:
            started = self._started.get(cell_index)
            self._failed.add(cell_index)
            self._emit(index=cell_index, phase="error", duration_s=None if started is None else time.monotonic() - started, source_preview=source_preview(cell), error=error_text(exception))

    def cell_complete(self, cell: Any, cell_index: Optional[int] = None, **kwargs: Any) -> None:
        super().cell_complete(cell, cell_index, **kwargs)
        if cell_index not in self._started or cell_index in self._failed:
            return
        duration = time.monotonic() - self._started[cell_index]
        in_flight = sys.exc_info()[1]  # a timeout or a dead kernel: papermill calls us from a finally
        if in_flight is not None and in_flight is not self._handled:
            self._failed.add(cell_index)
            self._emit(index=cell_index, phase="error", duration_s=duration, source_preview=source_preview(cell), error=error_text(in_flight))
        else:
            self._emit(index=cell_index, phase="end", duration_s=duration)


class GaudiNbEngine(NBClientEngine):
    """NBClientEngine whose execution manager writes `cell` events.

    Extra keyword arguments (passed through papermill.execute_notebook's engine kwargs):
    event_writer (required), on_event (a callback per event), notebook_metadata (merged into nb.metadata).
    """

    @classmethod
    def execute_notebook(
        cls,
        nb: Any,
        kernel_name: str,
        output_path: Optional[str] = None,
        progress_bar: bool = True,
        log_output: bool = False,
        autosave_cell_every: int = 30,
        event_writer: Optional[EventWriter] = None,
        on_event: Optional[EventCallback] = None,
        notebook_metadata: Optional[Dict[str, Any]] = None,
        **kwargs: Any,
    ) -> Any:
        if event_writer is None:
            return super().execute_notebook(nb, kernel_name, output_path=output_path, progress_bar=progress_bar, log_output=log_output, autosave_cell_every=autosave_cell_every, **kwargs)
        nb_man = EventingExecutionManager(
            nb,
            writer=event_writer,
            on_event=on_event,
            metadata=notebook_metadata,
            output_path=output_path,
            progress_bar=progress_bar,
            log_output=log_output,
            autosave_cell_every=autosave_cell_every,
        )
        nb_man.notebook_start()
        try:
            cls.execute_managed_notebook(nb_man, kernel_name, log_output=log_output, **kwargs)
        finally:
            nb_man.cleanup_pbar()
            nb_man.notebook_complete()
            mask_secrets(nb_man.nb)  # papermill writes the returned notebook again: masked from here on
        return nb_man.nb


papermill_engines.register(ENGINE_NAME, GaudiNbEngine)
