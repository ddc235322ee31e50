"""Events: the typed contract (one class per type), built with `make_event`, written to a run's
events.jsonl by an `EventWriter`, read back from an offset, and turned into their class by `parse`.

The contract's classes load pydantic: they are imported on first use (`parse`, a class, EVENT_TYPES,
or the first `make_event`), so a room that only reads events does not pay for it."""
from typing import Any

from .ended import Marks, ended_in_file, has_ended, read_marks, this_attempt
from .head import ACTIVE_STATUSES, COMMON_KEYS, SCHEMA_VERSION, TERMINAL_STATUSES
from .stream import BackgroundEventWriter, EventWriter, ReadEvent, Tailer, iter_events, make_event, read_events

_FROM_CONTRACT = (
    "EVENT_CLASSES", "EVENT_TYPES", "Event", "parse",
    "BadLine", "BatchSize", "Cell", "Checkpoint", "Cost", "Eval", "Log", "Restart", "Result", "RunEnd", "RunStart",
    "Step", "StopRequested", "Telemetry", "Tracker", "WorkerError", "WorkerStart",
)

__all__ = [
    "ACTIVE_STATUSES", "COMMON_KEYS", "SCHEMA_VERSION", "TERMINAL_STATUSES",
    "BackgroundEventWriter", "EventWriter", "ReadEvent", "Tailer", "iter_events", "make_event", "read_events",
    "Marks", "ended_in_file", "has_ended", "read_marks", "this_attempt", *_FROM_CONTRACT,
]


def __getattr__(name: str) -> Any:
    if name in _FROM_CONTRACT:
        from . import contract

        return getattr(contract, name)
    raise AttributeError(f"module 'gaudi_nb.events' has no attribute {name!r}")
