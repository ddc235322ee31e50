"""The Python API every view calls: train() starts a run and returns a Run handle."""
from __future__ import annotations

import secrets
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from .errors import GaudiNbError, SpecError
from .spec import RunSpec, looks_like_path
from .store import RunStore
from .targets import target_for


def check(spec: RunSpec) -> None:
    """Checks that need the registries and the catalog; raises SpecError before anything is written."""
    from .cost import catalog
    from .worker.presets import dataset_presets, model_presets

    if spec.model not in model_presets and not Path(spec.model).expanduser().exists():
        if looks_like_path(spec.model):
            raise SpecError(f"model: no such folder {spec.model}")
        if "/" not in spec.model:
            raise SpecError(f"model: unknown preset '{spec.model}': use one of {', '.join(model_presets.names())}, a local folder, or a hub id like org/name")
    first = spec.dataset.split(",")[0].strip()
    if first not in dataset_presets and not looks_like_path(first) and "/" not in first and not Path(first).exists():
        raise SpecError(f"dataset: unknown preset '{first}': use one of {', '.join(dataset_presets.names())}, local .txt/.jsonl/.parquet files, or a hub id like org/name")
    if spec.instance_type is not None:
        try:
            catalog.lookup(spec.instance_type)
        except GaudiNbError as exc:
            raise SpecError(f"instance_type: {exc}") from None
    target_for(spec.target)  # unknown or not-yet-available targets stop here


def new_run_id(spec: RunSpec) -> str:
    stem = (spec.name or spec.model.rstrip("/").split("/")[-1]).lower()
    stem = "".join(c if c.isalnum() or c in "-." else "-" for c in stem)[:40].strip("-") or "run"
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


class Run:
    """A handle on one run: its status, metrics and events, from the store (synced from the node on read)."""

    def __init__(self, run_id: str, store: Optional[RunStore] = None) -> None:
        self.store = store or RunStore()
        self.run_id = self.store.resolve(run_id)

    def __repr__(self) -> str:
        return f"<Run {self.run_id} {self.status}>"

    # the record ---------------------------------------------------------
    def sync(self) -> int:
        """Pull new events from the run's node into the store; returns how many arrived."""
        record = self.store.get(self.run_id)
        target = target_for(record.get("target") or "local")
        start = self.store.offset(self.run_id)
        events, end = target.read_events(self.run_id, start)
        return self.store.ingest(self.run_id, events, start, end)

    def record(self) -> Dict[str, Any]:
        self.sync()
        return self.store.get(self.run_id)

    @property
    def status(self) -> str:
        return str(self.record()["status"])

    @property
    def done(self) -> bool:
        return self.status in ("succeeded", "failed", "stopped", "budget_exceeded")

    @property
    def metrics(self) -> Dict[str, Any]:
        return dict(self.record()["metrics"])

    @property
    def cost(self) -> Dict[str, Any]:
        return dict(self.record()["cost"])

    @property
    def run_dir(self) -> Optional[Path]:
        folder = self.store.get(self.run_id).get("run_dir")
        return Path(folder) if folder else None

    def events(self, types: Optional[List[str]] = None) -> List[Dict[str, Any]]:
        self.sync()
        return self.store.events(self.run_id, types=types)

    def follow(self, poll_s: float = 0.5, timeout: Optional[float] = None) -> Iterator[Dict[str, Any]]:
        """Every event from the first, then new ones as they arrive, until run_end."""
        seq = -1
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.sync()
            fresh = self.store.events(self.run_id, after_seq=seq)
            seq += len(fresh)
            for event in fresh:
                yield event
                if event.get("type") == "run_end":
                    return
            if deadline is not None and time.monotonic() > deadline:
                return
            time.sleep(poll_s)

    # control --------------------------------------------------------------
    def wait(self, timeout: Optional[float] = None, poll_s: float = 1.0) -> "Run":
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {self.run_id} still {self.status} after {timeout} s")
            time.sleep(poll_s)
        return self

    def stop(self, reason: str = "stopped") -> bool:
        """Ask the run to stop after a checkpoint; True if this request was the first."""
        record = self.store.get(self.run_id)
        return target_for(record.get("target") or "local").stop(self.run_id, reason)

    def logs(self) -> Path:
        record = self.store.get(self.run_id)
        return target_for(record.get("target") or "local").log_path(self.run_id)


def train(spec: Union[RunSpec, Dict[str, Any], None] = None, *, store: Optional[RunStore] = None, **options: Any) -> Run:
    """Start a training run (detached: it survives this process) and return its Run.

    Options are RunSpec's fields: gaudi_nb.train(model="tiny-llama", devices=2, max_steps=50).
    """
    if isinstance(spec, RunSpec):
        spec = RunSpec.from_options(**{**spec.model_dump(exclude_unset=True), **options}) if options else spec
    else:
        spec = RunSpec.from_options(**{**(spec or {}), **options})
    check(spec)
    store = store or RunStore()
    run_id = new_run_id(spec)
    target = target_for(spec.target)
    folder = target.launch(spec, run_id)
    store.register(run_id, spec=spec.to_json_dict(), target=spec.target, run_dir=str(folder))
    return Run(run_id, store)


def estimate_cost(tokens: float, parameters: Optional[float] = None, model: Optional[str] = None, mfu: float = 0.35) -> Tuple[float, List[Any]]:
    """Hours and dollars per catalog instance for a model (its size, or a local preset's) and a token count."""
    from .cost.estimate import estimate
    from .worker.data import LOCAL_VOCAB_SIZE
    from .worker.presets import model_presets

    if parameters is None and model is None:
        raise SpecError("give --parameters N or --model PRESET")
    if parameters is None:
        try:
            preset = model_presets.get(model or "")
        except GaudiNbError as exc:
            raise SpecError(str(exc)) from None
        if not preset.local:
            raise SpecError(f"--model {model} is a hub model: give its size with --parameters")
        parameters = float(sum(p.numel() for p in preset.build(LOCAL_VOCAB_SIZE, 512).parameters()))
    if parameters <= 0 or tokens <= 0:
        raise SpecError("--parameters and --tokens must be positive")
    try:
        return parameters, estimate(parameters, tokens, mfu=mfu)
    except ValueError as exc:
        raise SpecError(str(exc)) from None


def runs(limit: int = 50, store: Optional[RunStore] = None) -> List[Dict[str, Any]]:
    """Recent runs, newest first (unfinished ones synced from their nodes first)."""
    store = store or RunStore()
    for record in store.list(limit=limit):
        if record["status"] in ("pending", "running", "stopping"):
            try:
                Run(record["run_id"], store).sync()
            except GaudiNbError:
                continue
    return store.list(limit=limit)


def get_run(run_id: str, store: Optional[RunStore] = None) -> Run:
    return Run(run_id, store)
