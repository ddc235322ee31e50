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


# At most this much of a stream per read: a reader behind by gigabytes catches up over several reads
# (each its own ingest), never holding the whole file; a line longer than this is a bad line.
READ_BYTES = 8 * 1024 * 1024
BAD_TEXT_CHARS = 200  # how much of a bad line its bad_line event keeps


def read_events(path: Path, offset: int = 0, max_bytes: int = READ_BYTES) -> Tuple[List[Dict[str, Any]], int]:
    """Complete events from byte `offset`, from at most `max_bytes` of the file; returns them and the
    offset after the last complete line read.

    A line still being written (no newline yet) is left for the next read, so a reader that resumes
    from the returned offset never loses or repeats an event. A line that breaks the contract (not
    UTF-8, not JSON, a field of the wrong type) comes back as a `bad_line` event in its place, so one
    bad line never stops the lines after it, nor another run, nor a view.
    """
    path = Path(path)
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return [], offset
    with fh:
        fh.seek(offset)
        data = fh.read(max_bytes)
        end = data.rfind(b"\n")
        if end < 0:
            if len(data) < max_bytes:
                return [], offset
            rest = _to_line_end(fh)  # one line longer than a read: kept aside once it is whole
            if rest is None:
                return [], offset
            return [_bad_line(path, [], offset, data, f"a line longer than {max_bytes} bytes")], offset + len(data) + rest
    events: List[Dict[str, Any]] = []
    position = offset
    for line in data[:end].split(b"\n"):
        if line.strip():
            events.append(_read_line(path, events, position, line))
        position += len(line) + 1
    return events, offset + end + 1


def iter_events(path: Path, offset: int = 0) -> Iterator[Dict[str, Any]]:
    """Every complete event from `offset` on, read a bounded chunk at a time (what a whole-file reader uses)."""
    while True:
        events, end = read_events(path, offset)
        yield from events
        if end == offset:
            return
        offset = end


def _to_line_end(fh: Any) -> Optional[int]:
    """Bytes from here to just after the next newline, or None if the line is not complete yet."""
    skipped = 0
    while True:
        chunk = fh.read(1024 * 1024)
        if not chunk:
            return None
        at = chunk.find(b"\n")
        if at >= 0:
            return skipped + at + 1
        skipped += len(chunk)


def _read_line(path: Path, before: List[Dict[str, Any]], offset: int, line: bytes) -> Dict[str, Any]:
    global _check
    try:
        text = line.decode()
        value = jsontext.loads(text)
        if not isinstance(value, dict):
            raise ValueError(f"an event is a JSON object, not {type(value).__name__}")
        if _check is None:
            from .contract import check

            _check = check
        _check(value)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors too
        return _bad_line(path, before, offset, line, str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__)
    event = ReadEvent(value)
    event.line = text
    return event


def _bad_line(path: Path, before: List[Dict[str, Any]], offset: int, line: bytes, error: str) -> Dict[str, Any]:
    """The bad_line event a line that breaks the contract is read as: with its neighbour's head (or the run
    folder's name), so it belongs to its run and its time in every view."""
    near = next((e for e in reversed(before) if e.get("type") != "bad_line"), None)
    run_id = str(near["run_id"]) if near else Path(path).parent.name
    node = str(near["node"]) if near else "local"
    t = float(near["t"]) if near else time.time()
    text = line[: BAD_TEXT_CHARS * 4].decode(errors="replace")[:BAD_TEXT_CHARS]
    return make_event("bad_line", run_id, node=node, t=t, offset=offset, error=error, text=text)


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

