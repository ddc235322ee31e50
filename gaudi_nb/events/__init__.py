"""Events: the typed contract (one class per type), built with `make_event`, written to a run's
events.jsonl by an `EventWriter`, read back from an offset, and turned into their class by `parse`."""
from .contract import (
    ACTIVE_STATUSES,
    COMMON_KEYS,
    EVENT_CLASSES,
    EVENT_TYPES,
    SCHEMA_VERSION,
    TERMINAL_STATUSES,
    BatchSize,
    Cell,
    Checkpoint,
    Cost,
    Eval,
    Event,
    Log,
    Restart,
    Result,
    RunEnd,
    RunStart,
    Step,
    StopRequested,
    Telemetry,
    Tracker,
    WorkerError,
    WorkerStart,
    parse,
)
from .stream import BackgroundEventWriter, EventWriter, ReadEvent, Tailer, make_event, read_events

__all__ = [
    "ACTIVE_STATUSES", "COMMON_KEYS", "EVENT_CLASSES", "EVENT_TYPES", "SCHEMA_VERSION", "TERMINAL_STATUSES",
    "BatchSize", "Cell", "Checkpoint", "Cost", "Eval", "Event", "Log", "Restart", "Result", "RunEnd", "RunStart",
    "Step", "StopRequested", "Telemetry", "Tracker", "WorkerError", "WorkerStart", "parse",
    "BackgroundEventWriter", "EventWriter", "ReadEvent", "Tailer", "make_event", "read_events",
]
