"""The event stream: events built through the contract, an append-only JSONL writer, a reader and a tailer with offsets."""
from __future__ import annotations

import json
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from .. import jsontext
from .head import SCHEMA_VERSION

_check: Optional[Callable[[Dict[str, Any]], None]] = None  # the contract's check, loaded with pydantic on the first event


def make_event(type: str, run_id: str, *, node: str = "local", rank: Optional[int] = None, t: Optional[float] = None, **fields: Any) -> Dict[str, Any]:
    """An event as a dict, checked against the contract: ValueError naming the field for one that breaks it."""
    global _check
    event = {"v": SCHEMA_VERSION, "type": type, "t": time.time() if t is None else t, "run_id": run_id, "node": node, "rank": rank}
    event.update(fields)
    if _check is None:
        from .contract import check

        _check = check
    _check(event)
    return event


class EventWriter:
    """Appends events to a run's events.jsonl.

    Several processes (the agent and rank 0) append to the same file: each event is
    one write() on an O_APPEND descriptor, which the kernel keeps whole for lines this size.
    """

    def __init__(self, path: Path, run_id: str, *, node: str = "local", rank: Optional[int] = None) -> None:
        self.path = Path(path)
        self.run_id = run_id
        self.node = node
        self.rank = rank
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)  # the user's run: owner-only

    def emit(self, type: str, **fields: Any) -> Dict[str, Any]:
        event = make_event(type, self.run_id, node=self.node, rank=self.rank, **fields)
        self.write(event)
        return event

    def write(self, event: Dict[str, Any]) -> None:
        os.write(self._fd, (json.dumps(event, separators=(",", ":"), default=str) + "\n").encode())

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class BackgroundEventWriter(EventWriter):
    """An EventWriter whose writes happen on a thread, so the training step only enqueues."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._queue: "queue.SimpleQueue[Optional[Dict[str, Any]]]" = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._drain, name="gaudi-nb-events", daemon=True)
        self._thread.start()

    def write(self, event: Dict[str, Any]) -> None:
        self._queue.put(event)

    def _drain(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            EventWriter.write(self, event)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
        super().close()


def read_events(path: Path, offset: int = 0) -> Tuple[List[Dict[str, Any]], int]:
    """Complete events from byte `offset`; returns them and the offset after the last complete line.

    A line still being written (no newline yet) is left for the next read, so a
    reader that resumes from the returned offset never loses or repeats an event.
    """
    path = Path(path)
    if not path.exists():
        return [], offset
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read()
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset
    events: List[Dict[str, Any]] = []
    for line in data[: end + 1].splitlines():
        if line.strip():
            try:
                value = jsontext.loads(line)
            except json.JSONDecodeError:
                continue  # a torn line from a crashed writer: skip it, keep the rest
            if isinstance(value, dict):
                event = ReadEvent(value)
                event.line = line.decode()
                events.append(event)
    return events, offset + end + 1


class ReadEvent(dict):
    """An event as read from a stream, with the line it was read from. The store keeps that line as
    the event's payload instead of encoding the dict again: the encode was most of a fleet's ingest.
    Read it, do not change it: a changed event would be stored as it was read."""

    __slots__ = ("line",)
    line: str


@dataclass
class Tailer:
    """Follows an events file from an offset, yielding new events as they arrive."""

    path: Path
    offset: int = 0
    poll_s: float = 0.25

    def poll(self) -> List[Dict[str, Any]]:
        events, self.offset = read_events(self.path, self.offset)
        return events

    def follow(self, until_end: bool = True, timeout: Optional[float] = None) -> Iterator[Dict[str, Any]]:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for event in self.poll():
                yield event
                if until_end and event.get("type") == "run_end":
                    return
            if deadline is not None and time.monotonic() > deadline:
                return
            time.sleep(self.poll_s)

