"""The sampling loop: a daemon thread that calls a source's sample() at a fixed cadence."""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Dict, Optional, Set

from .base import Sample, TelemetrySource, WatchesProcesses

log = logging.getLogger(__name__)
# Messages that vary (a counter, a time) would otherwise be told every tick and kept forever.
_MAX_REPORTED = 16


def _text(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


class TelemetryLoop:
    """Cadence belongs here, not in the source, so sample() stays pure and testable.

    A failing sample is counted and never stops the loop, because a flaky driver query
    must not end the telemetry of a long run. Each distinct failure message is reported
    once (a logging warning and ``on_error(message)``, at most _MAX_REPORTED of them)
    until a sample succeeds again: a source that fails every second must be seen, not
    flood the run's log.
    """

    def __init__(
        self,
        source: TelemetrySource,
        on_sample: Callable[[Sample], None],
        interval_s: float = 1.0,
        on_error: Optional[Callable[[str], None]] = None,
    ) -> None:
        self.source = source
        self.on_sample = on_sample
        self.interval_s = interval_s
        self.on_error = on_error
        self.samples = 0
        self.errors = 0
        self._reported: Set[str] = set()  # messages told since the last good sample
        self._stop = threading.Event()
        self._lock = threading.Lock()  # set_pids comes from another thread than sample()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "TelemetryLoop":
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="gaudi-nb-telemetry", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def set_pids(self, pids: Optional[Dict[int, int]]) -> None:
        """The ranks start after the loop: tell a source that watches processes which ones."""
        if isinstance(self.source, WatchesProcesses):
            with self._lock:
                self.source.set_pids(pids)

    def _failed(self, message: str) -> None:
        self.errors += 1
        if message in self._reported or len(self._reported) >= _MAX_REPORTED:
            return
        self._reported.add(message)
        log.warning("%s (sampling goes on; reported once until a sample succeeds)", message)
        if self.on_error is not None:
            try:
                self.on_error(message)
            except Exception:
                log.debug("the telemetry on_error handler raised", exc_info=True)  # it must not kill the loop

    def _run(self) -> None:
        name = getattr(self.source, "name", type(self.source).__name__)
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                with self._lock:
                    sample = self.source.sample()
            except Exception as exc:
                self._failed(f"telemetry from {name} failed: {_text(exc)}")
            else:
                try:
                    self.on_sample(sample)
                except Exception as exc:
                    self._failed(f"a telemetry sample from {name} could not be recorded: {_text(exc)}")
                else:
                    self.samples += 1
                    self._reported.clear()  # recovered: the same failure later is news again
            # Fixed-rate schedule; after a stall skip missed ticks rather than burst.
            next_at = max(next_at + self.interval_s, time.monotonic())
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> "TelemetryLoop":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
