"""The Python API every view calls: train() starts a run and returns a Run handle."""
from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

from .errors import GaudiNbError, SpecError
from .events import ACTIVE_STATUSES, TERMINAL_STATUSES
from .events.stream import READ_BYTES
from .spec import RunSpec, looks_like_path, parse_mapping, resolve_paths
from .store import RunStore
from .targets import Target, target_for

# how long `logs` of an ended run on another node waits for its log to be copied here whole
LOG_WAIT_S = 30.0
# how long resume() waits for its restart event to arrive from a node (it makes the run active again)
RESUME_SEEN_WAIT_S = 30.0


def load_spec_file(path: Union[str, Path], *, local_paths: bool = True) -> Dict[str, Any]:
    """RunSpec fields from a YAML or JSON file; paths in it are relative to the file's folder
    (local_paths=False keeps them as written: they name files in a container, say)."""
    path = Path(path).expanduser()
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError(f"spec file {path}: {exc.strerror or exc}: give an existing YAML or JSON file") from None
    options = parse_mapping(text, f"spec file {path}")
    return resolve_paths(options, path.resolve().parent) if local_paths else options


def build_spec(spec: Union[RunSpec, Dict[str, Any], None] = None, *, defaults: Optional[Dict[str, Any]] = None, **options: Any) -> RunSpec:
    """A validated RunSpec from defaults, then a spec or a mapping, then keyword options (None means "not given");
    relative paths made absolute."""
    base = spec.model_dump(exclude_unset=True) if isinstance(spec, RunSpec) else dict(spec or {})
    merged = {**(defaults or {}), **base, **{k.replace("-", "_"): v for k, v in options.items() if v is not None}}
    return RunSpec.from_options(**resolve_paths(merged))


def check(spec: RunSpec) -> None:
    """Checks that need the filesystem, the registries and the catalog; raises SpecError before anything is written."""
    from .cost import catalog
    from .presets import dataset_presets, model_presets

    if spec.model not in model_presets and not Path(spec.model).expanduser().exists():
        if looks_like_path(spec.model):
            raise SpecError(f"model: no such folder {spec.model}")
        if "/" not in spec.model:
            raise SpecError(f"model: unknown preset '{spec.model}': use one of {', '.join(model_presets.names())}, a local folder, or a hub id like org/name")
    parts = [p.strip() for p in spec.dataset.split(",")]
    for part in parts:
        if looks_like_path(part) and not Path(part).expanduser().exists():
            raise SpecError(f"dataset: file not found: {part}: give an existing .txt/.jsonl/.parquet file (a relative path is read from the working directory)")
    first = parts[0]
    if first not in dataset_presets and not looks_like_path(first) and "/" not in first and not Path(first).exists():
        raise SpecError(f"dataset: unknown preset '{first}': use one of {', '.join(dataset_presets.names())}, local .txt/.jsonl/.parquet files, or a hub id like org/name")
    if spec.script is not None and not Path(spec.script).expanduser().is_file():
        raise SpecError(f"script: file not found: {spec.script}")
    if spec.workdir is not None:
        if spec.script is None:
            raise SpecError("workdir: a working directory is for a --script run (the built-in trainer needs no code): add --script, or leave out --workdir")
        from .workdir import select

        select(Path(spec.workdir))  # the folder exists and nothing in it is too big, before anything is written
    unset = [name for name in spec.env_names() if name not in os.environ]
    if unset:
        raise SpecError(f"env: {', '.join(unset)} {'is' if len(unset) == 1 else 'are'} not set here: export {unset[0]}=... first (the run takes the values from this environment)")
    if spec.instance_type is not None:
        try:
            catalog.lookup(spec.instance_type)
        except GaudiNbError as exc:
            raise SpecError(f"instance_type: {exc}") from None
    target = target_for(spec.target)  # unknown or not-yet-available targets stop here
    if spec.nodes > target.max_nodes:
        raise SpecError(f"nodes: the target {spec.target} has {target.max_nodes} node(s); --nodes {spec.nodes} needs as many attached nodes: --target NAME1,NAME2,... (gaudi-nb nodes list), or --nodes {target.max_nodes}")
    if spec.time_limit is not None and not target.takes_time_limit:
        raise SpecError(f"time_limit: --time-limit is a Slurm job's limit and {spec.target} is not a Slurm cluster: leave it out, or use --max-steps or --budget-usd")
    target.check(spec)


def new_run_id(spec: RunSpec) -> str:
    stem = (spec.name or spec.model.rstrip("/").split("/")[-1]).lower()
    stem = "".join(c if (c.isascii() and c.isalnum()) or c in "-." else "-" for c in stem)[:40].strip("-.") or "run"  # rundir.RUN_ID_PATTERN
    return f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


class Run:
    """A handle on one run: its status, metrics and events, from the store (synced from the node on read)."""

    def __init__(self, run_id: str, store: Optional[RunStore] = None) -> None:
        self.store = store or RunStore()
        self.run_id = self.store.resolve(run_id)

    def __repr__(self) -> str:
        return f"<Run {self.run_id} {self.status}>"

    # the record ---------------------------------------------------------
    def _target(self, record: Optional[Dict[str, Any]] = None) -> Target:
        record = record or self.store.get(self.run_id)
        return target_for(record.get("target") or "local")

    def sync(self) -> int:
        """Pull new events from the run's node into the store; returns how many arrived.

        A run still active whose agent is gone is ended as `lost` here (on its node, as an
        event), so no view waits forever on a run that nobody meters.
        """
        record = self.store.get(self.run_id)
        if not self.store.may_change(record.get("owner")):
            return 0  # a teammate's run on a team store: read as its owner's reader wrote it
        target = self._target(record)
        arrived = self._pull(target)
        if record["status"] in ACTIVE_STATUSES and self.store.get(self.run_id)["status"] in ACTIVE_STATUSES:
            if target.check_lost(self.run_id):
                arrived += self._pull(target)
        return arrived

    def _pull(self, target: Target) -> int:
        """Ingest what is new, a bounded read at a time (each its own transaction), until a read comes back short."""
        arrived = 0
        while True:
            start = self.store.offset(self.run_id)
            events, end = target.read_events(self.run_id, start)
            arrived += self.store.ingest(self.run_id, events, start, end)
            if end - start < READ_BYTES // 2:
                return arrived

    def record(self) -> Dict[str, Any]:
        """The run's record; an active run on a node that cannot be reached now shows `unreachable`
        (the link's state: the run goes on there, and shows `running` again when the link returns)."""
        self.sync()
        record = self.store.get(self.run_id)
        link_state = getattr(self._target(record), "link_state", None)
        if link_state is not None and record["status"] in ACTIVE_STATUSES:
            record["link"] = link_state(self.run_id)
            if record["link"] == "unreachable":
                record["status"] = "unreachable"
        return record

    @property
    def status(self) -> str:
        return str(self.record()["status"])

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_STATUSES

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
                # a run_end followed by a restart (gaudi-nb resume) ended an attempt, not the run
                if event.get("type") == "run_end" and self.store.get(self.run_id)["status"] in TERMINAL_STATUSES:
                    return
            if deadline is not None and time.monotonic() > deadline:
                return
            time.sleep(poll_s)

    # control --------------------------------------------------------------
    def wait(self, timeout: Optional[float] = None, poll_s: float = 0.25) -> "Run":
        """Until the run ends; a run whose agent dies ends as `lost` within the heartbeat timeout, so this returns."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.done:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run {self.run_id} still {self.status} after {timeout} s")
            time.sleep(poll_s)
        return self

    def stop(self, reason: str = "stopped", *, force: bool = False) -> bool:
        """Ask the run to stop after a checkpoint; True if this request was the first.

        A run whose agent is gone (lost) is ended at once as stopped, and any rank it left is killed.
        On a team store only its owner, or an admin with force, may (NotAllowedError otherwise).
        """
        owner = self.store.get(self.run_id).get("owner")
        self.store.guard("stop", self.run_id, owner, force=force, what=f"run {self.run_id}")
        first = self._target().stop(self.run_id, reason)
        self.store.audit("stop", self.run_id, detail={"owner": owner, "force": force, "first": first})
        self.sync()
        return first

    def resume(self, max_steps: Optional[int] = None, budget_usd: Optional[float] = None, *, force: bool = False) -> "Run":
        """Continue this ended run from its newest complete checkpoint as its next attempt (see gaudi_nb.resume)."""
        return resume(self.run_id, max_steps=max_steps, budget_usd=budget_usd, store=self.store, force=force)

    def logs(self, node: Optional[str] = None) -> Path:
        """Where the run's training log is on this machine: node 0's (rank 0 writes there), or `node`'s.
        A run on another node that has ended is copied here whole first (up to LOG_WAIT_S)."""
        record = self.store.get(self.run_id)
        ended = record["status"] not in ACTIVE_STATUSES
        return self._target(record).log_path(self.run_id, node, wait_s=LOG_WAIT_S if ended else 0.0)


def train(spec: Union[RunSpec, Dict[str, Any], None] = None, *, store: Optional[RunStore] = None, **options: Any) -> Run:
    """Start a training run (detached: it survives this process) and return its Run.

    Options are RunSpec's fields: gaudi_nb.train(model="tiny-llama", devices=2, max_steps=50).
    Relative paths are read from the working directory. Defaults come from [tool.gaudi_nb] in the
    project's pyproject.toml, as for `gaudi-nb train` and `%gaudi_train`.
    """
    from .project import run_defaults

    spec = build_spec(spec, defaults=run_defaults(), **options)
    check(spec)
    store = store or RunStore()
    run_id = new_run_id(spec)
    target = target_for(spec.target)
    # Registered before anything starts: a store that cannot be written stops here, and a run
    # that costs money is always visible to every view.
    store.register(run_id, spec=spec.to_json_dict(), target=spec.target, run_dir=str(target.run_dir(run_id)))
    try:
        target.launch(spec, run_id)  # one that raises has ended the run as failed (Target.fail_launch)
    except Exception as exc:
        Run(run_id, store).sync()
        raise GaudiNbError(f"run {run_id} could not start: {exc}") from exc
    return Run(run_id, store)


@dataclass(frozen=True)
class StopAnswer:
    """What asking a run to stop did: every door prints `line()` (the CLI, %gaudi_stop, the panel, the server's route)."""

    run_id: str
    outcome: str  # already_ended | ended (before the call returned: its agent was gone, or the stop completed at once) | requested
    status: str
    first: bool = False  # a request that was the first one
    reason: Optional[str] = None

    def line(self, then: str = "") -> str:
        if self.outcome == "already_ended":
            return f"{self.run_id} already ended: {self.status}"
        if self.outcome == "ended":
            return f"{self.run_id} ended: {self.status} ({self.reason or ''})"
        return f"stop requested for {self.run_id}" + ("" if self.first else " (a stop was already requested)") + (f"; {then}" if then else "")


def stop(run_id: str, reason: str = "stopped", store: Optional[RunStore] = None, *, force: bool = False) -> StopAnswer:
    """Ask a run to stop after a checkpoint (see Run.stop). An ended run is left as it is, except a lost one,
    which is ended here (its leftover ranks are killed). Someone else's run on a team store: only an admin, with force."""
    run = Run(run_id, store)
    status = run.status
    if status in TERMINAL_STATUSES and status != "lost":
        return StopAnswer(run.run_id, "already_ended", status)
    first = run.stop(reason, force=force)
    record = run.record()
    if record["status"] in TERMINAL_STATUSES:  # its agent was gone (the run was ended here), or its ranks stopped already
        return StopAnswer(run.run_id, "ended", record["status"], first, (record.get("exit") or {}).get("reason"))
    return StopAnswer(run.run_id, "requested", record["status"], first)


# the statuses an ended run can go on from (with a checkpoint): the panel's Resume, gaudi-nb resume
RESUMABLE_STATUSES = ("stopped", "failed", "lost", "budget_exceeded")

# what resume's options mean, for `gaudi-nb resume` and %gaudi_resume alike
RESUME_OPTIONS = {
    "max_steps": "train to this step instead of the run's max_steps (also extends a run that succeeded)",
    "budget_usd": "a new budget for the whole run (what it spent so far counts)",
}


def resume(run_id: str, *, max_steps: Optional[int] = None, budget_usd: Optional[float] = None, store: Optional[RunStore] = None, force: bool = False) -> Run:
    """Continue a stopped, failed or lost run from its newest complete checkpoint and return its Run.

    It stays the same run (same id, record and event stream) as its next attempt, on the node it
    ran on: every view shows it active again, and its final status is the resumed attempt's.
    max_steps extends a run (also one that succeeded); budget_usd raises the budget of one that
    spent it. Runs on one node (this machine or an attached one), in this version.
    """
    RunSpec.from_options(max_steps=max_steps, budget_usd=budget_usd)  # the run's own rules (no NaN budget), before a node is asked
    run = Run(run_id, store)
    target = run._target(run.store.get(run.run_id))  # asked before any sync: a remote node may not answer
    record = run.record()
    run.store.guard("resume", run.run_id, record.get("owner"), force=force, what=f"run {run.run_id}")
    if record["status"] in ACTIVE_STATUSES:
        raise SpecError(f"run {run.run_id} is still {record['status']}: stop it first (gaudi-nb stop {run.run_id}), then resume it")
    target.resume(run.run_id, max_steps=max_steps, budget_usd=budget_usd)
    run.store.audit("resume", run.run_id, detail={"owner": record.get("owner"), "force": force, "max_steps": max_steps, "budget_usd": budget_usd})
    # the restart event makes the run active again; from another node it arrives by the mirror
    deadline = time.monotonic() + RESUME_SEEN_WAIT_S
    while run.store.get(run.run_id)["status"] not in ACTIVE_STATUSES and time.monotonic() < deadline:
        time.sleep(0.1)
        run.sync()
    return run


def estimate_cost(tokens: float, parameters: Optional[float] = None, model: Optional[str] = None, mfu: float = 0.35) -> Tuple[float, List[Any]]:
    """Hours and dollars per catalog instance for a model (its size, or a local preset's) and a token count."""
    from .cost.estimate import estimate
    from .presets import LOCAL_VOCAB_SIZE, model_presets

    if parameters is None and model is None:
        raise SpecError("give --parameters N or --model PRESET")
    if parameters is None:
        try:
            preset = model_presets.get(model or "")
        except GaudiNbError as exc:
            raise SpecError(str(exc)) from None
        if not preset.local:
            raise SpecError(f"--model {model} is a hub model: give its size with --parameters")
        parameters = float(preset.parameter_count(LOCAL_VOCAB_SIZE, 512))
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
        if record["status"] in ACTIVE_STATUSES:
            try:
                Run(record["run_id"], store).sync()
            except Exception:  # a run that cannot be synced now (its node, its stored row) keeps its last record; the others go on
                continue
    return store.list(limit=limit)


def get_run(run_id: str, store: Optional[RunStore] = None) -> Run:
    return Run(run_id, store)
