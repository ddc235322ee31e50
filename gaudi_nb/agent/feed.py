"""One reader of a run's events.jsonl for everything in a process that follows it.

The agent's own loop, its Prometheus exporter and each --report-to tracker all want the run's
events. Each used to read the file itself (1 + N reads of the same bytes every second); now one
EventFeed reads it and hands every subscriber the same new events, in order. A subscriber that is
slow keeps its own queue (a tracker does): the feed never waits for it.
"""
from __future__ import annotations

import queue
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from ..events import read_events
from ..events.stream import READ_BYTES

Events = List[Dict[str, Any]]


@dataclass
class _Subscriber:
    take: Callable[[Events], None]
    history: bool  # wants the events written before the feed's first read
    fed: bool = False  # has had its first batch (possibly empty): it knows where it stands


class EventFeed:
    """Reads `path` from `offset` on each poll() and gives the new events to every subscriber.

    The first batch a subscriber gets is delivered even when empty, so a subscriber can wait for
    it to know that it has caught up. Subscribers added before the first poll get the history
    (the events already in the file) unless they say history=False; later ones start from there.
    """

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = Path(path)
        self.offset = offset
        self.reads = 0  # how often the file was read: once a poll, whatever the number of subscribers
        self._subscribers: List[_Subscriber] = []
        self._lock = threading.Lock()
        self._first = True
        self._thread: Optional[threading.Thread] = None
        self._stopping = threading.Event()

    def subscribe(self, take: Callable[[Events], None], *, history: bool = True) -> None:
        with self._lock:
            self._subscribers.append(_Subscriber(take, history))

    def poll(self) -> int:
        """Read what is new once and hand it to every subscriber; returns how many events. A long history comes
        a bounded read at a time (READ_BYTES), each read its own batch, until a read comes back short."""
        with self._lock:
            first, self._first = self._first, False
            count = 0
            while True:
                start = self.offset
                chunk, self.offset = read_events(self.path, self.offset)
                self.reads += 1
                for subscriber in self._subscribers:
                    batch = [] if first and not subscriber.history else chunk
                    if batch or not subscriber.fed:
                        subscriber.fed = True
                        _deliver(subscriber, batch)
                count += len(chunk)
                if self.offset - start < READ_BYTES // 2:
                    return count

    # -- a feed with nobody polling it (a notebook run's trackers) -------------------------------
    def start(self, poll_s: float = 1.0) -> "EventFeed":
        def loop() -> None:
            while not self._stopping.wait(poll_s):
                self.poll()

        self._thread = threading.Thread(target=loop, name="gaudi-nb-feed", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the feed's own thread after one last read (the run_end written just before)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.poll()


class Inbox:
    """A subscriber that queues each batch for a thread that takes them at its own pace (a tracker)."""

    def __init__(self, feed: EventFeed) -> None:
        self._queue: "queue.Queue[Events]" = queue.Queue()
        self._open = True
        feed.subscribe(self._put)

    def _put(self, events: Events) -> None:
        if self._open:  # on the feed's reader: queue, never wait
            self._queue.put(events)

    def first(self, poll_s: float, given_up: threading.Event) -> Events:
        """The first batch (what was written before the feed's first read); [] if `given_up` is set before it comes."""
        while True:
            try:
                return self._queue.get(timeout=poll_s)
            except queue.Empty:
                if given_up.is_set():
                    return []

    def take(self) -> Events:
        """Every batch queued so far, as one list."""
        events: Events = []
        while True:
            try:
                events.extend(self._queue.get_nowait())
            except queue.Empty:
                return events

    def close(self) -> None:
        """Its reader is done: what comes later is dropped (a dead tracker's queue must not grow for the rest of the run)."""
        self._open = False
        self.take()


def _deliver(subscriber: _Subscriber, events: Events) -> None:
    try:
        subscriber.take(events)
    except Exception:  # one broken consumer must not stop the others, nor the agent's loop
        traceback.print_exc(file=sys.stderr)
