"""The event contract: one typed class per event type, the only schema of a run's events.jsonl.

Producers build events through it (`make_event` checks each one), `parse` turns a dict read back
into its class, and docs/events.md is generated from these classes (`python -m gaudi_nb.events.reference`).
A class's fields are what its producers write today: optional where a producer may leave a field
out or write null, free-form (extra keys allowed) only where a producer adds data of its own.
"""
from __future__ import annotations

from typing import Any, ClassVar, Dict, List, Literal, Mapping, Optional, Tuple, Type, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .head import ACTIVE_STATUSES, COMMON_KEYS, SCHEMA_VERSION, TERMINAL_STATUSES  # noqa: F401  (part of the contract)

STEP_LIMIT = 2**63 - 1  # the store's BIGINT (PostgreSQL); a step beyond it breaks the contract, not an ingest
Number = float  # strict float still takes an int (a price of 36, a loss of 2): JSON does not tell them apart
EndStatus = Literal["succeeded", "failed", "stopped", "budget_exceeded", "lost"]  # TERMINAL_STATUSES


class Event(BaseModel):
    """The head every event carries. Strict: a string is never read as a number, nor a number as a string."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    version: ClassVar[int] = 1
    written_by: ClassVar[str] = ""

    v: int = Field(description="the stream's schema version (`SCHEMA_VERSION`)")
    type: str = Field(description="the event type: the class below")
    t: Number = Field(description="unix seconds when it was written")
    run_id: str = Field(description="the run it belongs to")
    node: str = Field(description="the node that wrote it (`local` on this machine; several names joined by commas for a run's own end across nodes)")
    rank: Optional[int] = Field(None, description="the rank that wrote it; null for the agent and the client")


class _FreeForm(Event):
    model_config = ConfigDict(extra="allow")


class RunStart(Event):
    """The agent is up (one per run; a resumed attempt writes `restart` instead)."""

    written_by: ClassVar[str] = "agent; the batch runner for a notebook run"
    type: Literal["run_start"]
    spec: Dict[str, Any] = Field(description="the run's options (RunSpec as JSON; a notebook run's notebook, parameters, target)")
    run_dir: Optional[str] = Field(None, description="the run folder on the node")
    pid: Optional[int] = Field(None, description="the agent's process id")
    hostname: Optional[str] = None
    accelerator: Optional[str] = Field(None, description="hpu, cuda or cpu")
    trainer: Optional[str] = None
    launcher: Optional[str] = Field(None, description="python (one card's rank started directly), torchrun, an optimum-habana form, or papermill")
    command: Optional[str] = Field(None, description="the launch command as one shell line")
    price_per_hour: Optional[Number] = Field(None, description="USD per node-hour; null when unknown")
    price_source: Optional[str] = None
    metrics_port: Optional[int] = Field(None, description="the Prometheus exporter's port, if it started")
    node_rank: Optional[int] = Field(None, description="across nodes: this node's rank")
    nodes: Optional[List[str]] = Field(None, description="across nodes: every node's name, node 0 first")
    master_addr: Optional[str] = None
    local_addr: Optional[str] = None
    ifname: Optional[str] = Field(None, description="the interface that reaches node 0")
    kind: Optional[Literal["batch"]] = Field(None, description="`batch` for a notebook run")
    notebook: Optional[str] = None
    output_path: Optional[str] = None
    manifest_path: Optional[str] = None
    cells: Optional[List[Dict[str, Any]]] = Field(None, description="a notebook run's code cells: index, source_preview, tags")


class WorkerStart(Event):
    """A rank started (its pid lets a client kill ranks that outlive a lost agent)."""

    written_by: ClassVar[str] = "each rank"
    type: Literal["worker_start"]
    pid: Optional[int] = None
    local_rank: Optional[int] = None
    world_size: Optional[int] = None
    accelerator: Optional[str] = None
    device: Optional[str] = None
    device_name: Optional[str] = Field(None, description="the card's name, for its peak FLOP/s")
    precision: Optional[str] = None
    precision_chosen_by: Optional[str] = None
    trainer: Optional[str] = None
    trainer_support: Optional[str] = Field(None, description="the trainer stack's support state (optimum-habana is past end of support)")
    script: Optional[str] = Field(None, description="a --script run's script")
    execution_mode: Optional[str] = Field(None, description="eager, eager+compile or lazy")
    parameters: Optional[int] = Field(None, description="the model's parameter count")
    trainable_parameters: Optional[int] = None
    lora: Optional[Dict[str, Any]] = Field(None, description="the LoRA adapter's settings")
    train_sequences: Optional[int] = None
    eval_sequences: Optional[int] = None
    torch_version: Optional[str] = None
    batch_size: Optional[int] = Field(None, description="per device")
    global_batch_size: Optional[int] = None
    learning_rate: Optional[Number] = Field(None, description="after --lr-scaling")
    base_learning_rate: Optional[Number] = None
    lr_scaling: Optional[str] = None
    base_batch_size: Optional[int] = None


class WorkerError(Event):
    """The exception that ended a rank."""

    written_by: ClassVar[str] = "any rank"
    type: Literal["worker_error"]
    error: str = Field(description="`Type: message`, at most 500 characters")
    traceback: Optional[List[str]] = Field(None, description="its last lines")


class Step(_FreeForm):
    """One optimizer step. Free-form: a --script's `report(step, loss, **metrics)` adds its own metrics."""

    written_by: ClassVar[str] = "rank 0 (the trainer's callback, or a script's report())"
    type: Literal["step"]
    step: int = Field(ge=0, le=STEP_LIMIT)
    attempt: Optional[int] = Field(None, description="1, then one more after each restart or resume")
    loss: Optional[Number] = Field(None, description="null when a script reports none; NaN for a diverged loss")
    learning_rate: Optional[Number] = None
    grad_norm: Optional[Number] = None
    step_time_s: Optional[Number] = Field(None, description="since the previous step; null for the first")
    tokens: Optional[int] = Field(None, description="this step's tokens, all ranks")
    samples: Optional[int] = Field(None, description="this step's samples, all ranks")
    tokens_per_second: Optional[Number] = None
    samples_per_second: Optional[Number] = None
    warmup: Optional[bool] = Field(None, description="a step up to --warmup-steps (left out of the averages)")
    memory: Optional[Dict[str, int]] = Field(None, description="the accelerator's memory_stats(): in_use_bytes, and max_in_use_bytes, limit_bytes or reserved_bytes where it tells")


class Eval(Event):
    """An evaluation's loss."""

    written_by: ClassVar[str] = "rank 0"
    type: Literal["eval"]
    step: int
    eval_loss: Number
    attempt: Optional[int] = None


class Checkpoint(Event):
    """A checkpoint folder complete on disk (its marker written)."""

    written_by: ClassVar[str] = "rank 0, once the folder is complete"
    type: Literal["checkpoint"]
    step: int
    path: str
    reason: Optional[str] = Field(None, description="periodic, final, or the stop's reason (stopped, budget_exceeded)")
    attempt: Optional[int] = None


class DeviceSample(BaseModel):
    """One device at one instant (telemetry/base.DeviceSample); null where the source could not tell."""

    model_config = ConfigDict(strict=True, extra="forbid")

    index: int
    kind: str = Field(description="hpu, cuda, or cpu (a rank process on a host without accelerators)")
    label: str
    utilization_pct: Optional[Number] = None
    memory_used_bytes: Optional[int] = None
    memory_total_bytes: Optional[int] = None
    power_w: Optional[Number] = None
    temperature_c: Optional[Number] = None
    pid: Optional[int] = None
    module_id: Optional[int] = Field(None, description="Gaudi only: the number HABANA_VISIBLE_MODULES uses")


class HostSample(BaseModel):
    """The node's host at the same instant (telemetry/base.HostSample)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    cpu_percent: Number
    memory_used_bytes: int
    memory_total_bytes: int
    process_rss_bytes: int


class Telemetry(Event):
    """One sample of the node's devices and host (telemetry/base.Sample)."""

    written_by: ClassVar[str] = "agent"
    type: Literal["telemetry"]
    source: str = Field(description="hlml, hlsmi, nvml or host")
    devices: List[DeviceSample] = Field(default_factory=list)
    host: Optional[HostSample] = None


class Cost(Event):
    """The spend so far of this node (across nodes each agent meters its own)."""

    written_by: ClassVar[str] = "agent"
    type: Literal["cost"]
    usd: Optional[Number] = Field(description="null when the price is unknown")
    elapsed_s: Optional[Number] = None
    price_per_hour: Optional[Number] = None
    nodes: Optional[int] = None
    budget_usd: Optional[Number] = None


class StopRequested(Event):
    """A stop was asked for (the panel's Stop, `gaudi-nb stop`, the budget)."""

    written_by: ClassVar[str] = "agent"
    type: Literal["stop_requested"]
    reason: str = Field(description="stopped or budget_exceeded")
    at_step: Optional[int] = Field(None, description="the last step the agent had seen when it was asked")
    stop_at: Optional[int] = Field(None, description="across nodes: the step every rank stops after (on one node rank 0 picks it)")


class Restart(Event):
    """A new attempt of the run begins; later events belong to it."""

    written_by: ClassVar[str] = "agent (a crashed rank), `gaudi-nb resume`, or a Slurm job's task started again by Slurm's requeue"
    type: Literal["restart"]
    attempt: int
    cause: Literal["crash", "resume", "requeue"]
    from_step: Optional[int] = Field(None, description="the step of the checkpoint it resumes from, or 0")
    checkpoint: Optional[str] = None
    reason: Optional[str] = Field(None, description="which rank, exit code or signal; what the resumed run had ended as; why Slurm requeued the job")
    failed_rank: Optional[int] = None
    exit_code: Optional[int] = None
    signal: Optional[str] = None
    restarts_left: Optional[int] = None
    max_steps: Optional[int] = Field(None, description="a resume's new --max-steps")
    budget_usd: Optional[Number] = Field(None, description="a resume's new budget")


class Cell(Event):
    """A notebook cell started, ended or failed."""

    written_by: ClassVar[str] = "the batch runner"
    type: Literal["cell"]
    index: int
    phase: Literal["start", "end", "error"]
    duration_s: Optional[Number] = None
    source_preview: Optional[str] = None
    tags: Optional[List[str]] = None
    error: Optional[str] = None


class Result(Event):
    """Values a notebook recorded with `record()` from gaudi_nb.batch."""

    written_by: ClassVar[str] = "the batch runner (record() in the notebook)"
    type: Literal["result"]
    values: Dict[str, Union[None, bool, int, float, str]]


class Log(_FreeForm):
    """A line for the run's log. Free-form: it may carry what it is about (pid, tracker, a node's details)."""

    written_by: ClassVar[str] = "agent; the client merging several nodes' streams"
    type: Literal["log"]
    message: str
    level: Optional[Literal["debug", "info", "warning", "error"]] = None
    node_start: Optional[Dict[str, Any]] = Field(None, description="across nodes: another node's run_start, as its log line")
    node_end: Optional[Dict[str, Any]] = Field(None, description="across nodes: a node's own run_end, as its log line")


class Trial(BaseModel):
    """One batch size tried: whether it fit, its peak memory, and why not."""

    model_config = ConfigDict(strict=True, extra="forbid")

    size: int
    fits: bool
    peak_bytes: Optional[int] = None
    why: Optional[str] = None


class BatchSize(Event):
    """--batch-size auto: the per-device batch, searched or read from the cache."""

    written_by: ClassVar[str] = "rank 0, with --batch-size auto"
    type: Literal["batch_size"]
    size: int
    how: Literal["searched", "cached"]
    trials: List[Trial] = Field(default_factory=list)
    seconds: Optional[Number] = None
    memory_fraction: Optional[Number] = None
    device_memory_bytes: Optional[int] = None
    capped: Optional[bool] = Field(None, description="the search stopped at the limit")
    cache_key: Optional[str] = None
    limit: Optional[int] = Field(None, description="the largest size tried: a rank's share of the data")


class Tracker(Event):
    """Where --report-to logs this run."""

    written_by: ClassVar[str] = "agent"
    type: Literal["tracker"]
    tracker: str = Field(description="mlflow or wandb")
    tracker_run_id: Optional[str] = None
    url: Optional[str] = None
    experiment: Optional[str] = Field(None, description="MLflow's experiment id or W&B's project")
    tracking_uri: Optional[str] = None
    dir: Optional[str] = Field(None, description="W&B's local folder")


class Job(Event):
    """A cluster scheduler's job for the run: its id, its state, and while the run waits, why (a waiting run is `pending` and not billed)."""

    written_by: ClassVar[str] = "the client following a run on a Slurm or Kubernetes cluster, when the job's state, reason or nodes change"
    type: Literal["job"]
    scheduler: Literal["slurm", "kubernetes"]
    state: str = Field(description="the scheduler's state of the job: Slurm's PENDING, RUNNING, COMPLETING, ...; on Kubernetes PENDING while a pod cannot be placed")
    job_id: Optional[str] = Field(None, description="Slurm's job id; the Kubernetes job's name")
    partition: Optional[str] = Field(None, description="Slurm's partition")
    reason: Optional[str] = Field(None, description="while PENDING, why, as the scheduler says it: Resources, Priority; FailedScheduling: 0/4 nodes are available: 4 Insufficient habana.ai/gaudi. …")
    short: Optional[str] = Field(None, description="the reason in a few words, for a status line (the reason itself where it is short): Insufficient habana.ai/gaudi")
    nodes: Optional[List[str]] = Field(None, description="the allocated nodes, node 0 first, once the job runs")
    waiting: Optional[List[str]] = Field(None, description="what waits: the pods not placed")


class NodeEnd(BaseModel):
    """One node's own end, as the run's end across nodes lists it."""

    model_config = ConfigDict(strict=True, extra="forbid")

    status: Optional[str] = None
    reason: Optional[str] = None
    exit_code: Optional[int] = None
    usd: Optional[Number] = None


class RunEnd(Event):
    """The run (or this attempt) ended; a `restart` after it starts the next attempt."""

    written_by: ClassVar[str] = "agent; for a run whose agent is gone, or across nodes, the client (`ended_by: client`)"
    type: Literal["run_end"]
    status: EndStatus
    exit_code: Optional[int] = None
    reason: Optional[str] = None
    last_log_lines: Optional[List[str]] = None
    steps_completed: Optional[int] = None
    usd: Optional[Number] = None
    attempt: Optional[int] = Field(None, description="after a restart or resume: the attempt that ended")
    ended_by: Optional[Literal["client"]] = None
    nodes: Optional[Dict[str, NodeEnd]] = Field(None, description="across nodes: each node's own end")
    duration_s: Optional[Number] = Field(None, description="a notebook run's")
    failed_cell: Optional[int] = Field(None, description="a notebook run's failed cell")


class BadLine(Event):
    """A line of events.jsonl that breaks this contract (bytes that are not UTF-8, not JSON, a field of the wrong
    type such as a step's `"tokens": "tensor(512)"`), kept aside: never in the file, made by the reader in its
    place, so the store keeps it and the run's record warns (`bad_lines`), and every other event goes on."""

    written_by: ClassVar[str] = "the reader (`read_events`), for a line it cannot take"
    type: Literal["bad_line"]
    offset: int = Field(description="where the line starts in events.jsonl (bytes)")
    error: str = Field(description="why it breaks the contract, in one line")
    text: str = Field(description="the line's start as text (bytes that are not UTF-8 shown as U+FFFD)")


EVENT_CLASSES: Tuple[Type[Event], ...] = (
    RunStart, WorkerStart, WorkerError, Step, Eval, Checkpoint, Telemetry, Cost, StopRequested,
    Restart, Cell, Result, Log, BatchSize, Tracker, Job, RunEnd, BadLine,
)
BY_TYPE: Dict[str, Type[Event]] = {cls.model_fields["type"].annotation.__args__[0]: cls for cls in EVENT_CLASSES}  # type: ignore[union-attr]
EVENT_TYPES = tuple(BY_TYPE)


def parse(obj: Mapping[str, Any]) -> Event:
    """The typed event; ValueError naming the field (or the type) for one that breaks the contract."""
    if not isinstance(obj, dict) and not isinstance(obj, Mapping):
        raise ValueError(f"an event is a JSON object, not {type(obj).__name__}")
    cls = BY_TYPE.get(obj.get("type"))  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"unknown event type {obj.get('type')!r}: the contract knows {', '.join(EVENT_TYPES)}")
    try:
        return cls.__pydantic_validator__.validate_python(obj)  # type: ignore[no-any-return]
    except ValidationError as exc:
        raise ValueError(_one_line(obj.get("type"), exc)) from None


def check(event: Mapping[str, Any]) -> None:
    """ValueError naming the field if `event` breaks the contract; what make_event calls on every event it
    builds (a step on rank 0 costs about 5 µs: pydantic-core validates, no copy is kept)."""
    parse(event)


def _one_line(kind: Any, exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    first = errors[0]
    field = ".".join(str(part) for part in first["loc"]) or "(event)"
    got = "" if first["type"] == "missing" else f", got {first.get('input')!r:.60}"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{kind} event: field {field}: {first['msg']}{got}{more}"
