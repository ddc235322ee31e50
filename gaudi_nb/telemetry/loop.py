"""The sampling loop: a daemon thread that calls a source's sample() at a fixed cadence."""
from __future__ import annotations

import threading
import time
from typing import Callable, Dict, Optional

from .base import Sample, TelemetrySource


class TelemetryLoop:
    """Cadence belongs here, not in the source, so sample() stays pure and testable.

    A failing sample is counted and handed to ``on_error``; it never stops the loop,
    because a flaky driver query must not end the telemetry of a long run.
    """

    def __init__(
        self,
        source: TelemetrySource,
        on_sample: Callable[[Sample], None],
        interval_s: float = 1.0,
        on_error: Optional[Callable[[BaseException], None]] = None,
    ) -> None:
        self.source = source
        self.on_sample = on_sample
        self.interval_s = interval_s
        self.on_error = on_error
        self.samples = 0
        self.errors = 0
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
        """The ranks start after the loop: tell the source which processes to watch."""
        with self._lock:
            self.source.set_pids(pids)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                with self._lock:
                    sample = self.source.sample()
                self.on_sample(sample)
                self.samples += 1
            except Exception as exc:
                self.errors += 1
                if self.on_error is not None:
                    try:
                        self.on_error(exc)
                    except Exception:
                        pass  # a broken error handler must not kill the loop either
            # Fixed-rate schedule; after a stall skip missed ticks rather than burst.
            next_at = max(next_at + self.interval_s, time.monotonic())
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> "TelemetryLoop":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
