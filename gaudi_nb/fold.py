"""One fold: the dispatch every view reads a run's events through, with the attempt, replay and late-step rules written once.

The record (`summary.RecordFold`), the notebook panel (`notebook.panel.PanelState`), the dashboard's
run page, the trackers, the Prometheus exporter and the agent's own observer each subclass `Fold`
and implement `on_<type>(event)` for the event types they show. What a step or a restart means for
the run is decided here, before any of them sees it:

- **attempts**: a `restart` starts the next attempt (its `attempt`, else one more). A `step` of an
  older attempt is a late line from ranks the restart replaced: no view folds it (`on_late_step`).
- **the run's step** (`step`): the newest step the run keeps. A restart goes back to its
  `from_step` (the steps after it are lost with the attempt that ran them); a step at or below the
  run's step is a replay, whose values replace the earlier ones (`on_step(..., replayed=True)`).
- **steps counted once** (`highest_step`): the highest step any attempt reported, never lower.
  While `on_step` runs it is still the value before this step, so `step > self.highest_step` says
  that no attempt reported this step before (a counter that only grows counts it then).
- **several nodes**: each node's agent meters its own node; `run_spend` sums their latest spend.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Mapping, Optional

Event = Dict[str, Any]


class Fold:
    """Dispatch on an event's `type` to `on_<type>(event)`; `step` and `restart` go through the rules above."""

    attempt: int = 1
    step: int = 0
    highest_step: int = 0
    _handlers: Dict[str, Callable[..., None]] = {}
    _sees = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # one table per class, built once: a dict look-up per event, not a chain of ifs or a getattr
        table = {name[3:]: getattr(cls, name) for name in dir(cls) if name.startswith("on_") and name not in ("on_late_step",)}
        table["step"] = Fold._fold_step
        table["restart"] = Fold._fold_restart
        cls._handlers = table
        cls._sees = cls.seen is not Fold.seen  # the store folds every event of a fleet: skip a call nobody needs

    def apply(self, events: Iterable[Event]) -> None:
        handlers, sees = self._handlers, self._sees
        for event in events:
            if sees:
                self.seen(event)
            handler = handlers.get(event.get("type"))  # type: ignore[arg-type]
            if handler is not None:
                handler(self, event)

    def dispatch(self, event: Event) -> None:
        self.apply((event,))

    # -- hooks a view implements ------------------------------------------------------------
    def seen(self, event: Event) -> None:
        """Every event, late ones included, before its handler."""

    def on_step(self, event: Event, step: int, replayed: bool) -> None:
        """A step of the current attempt; `replayed`: the run had reached this step already (its values replace the earlier ones)."""

    def on_late_step(self, event: Event) -> None:
        """A step of an attempt a restart replaced: nothing to show."""

    def on_restart(self, event: Event, from_step: int) -> None:
        """A new attempt (`self.attempt`) goes on from `from_step`: forget what came after it."""

    # -- the rules ----------------------------------------------------------------------------
    def _fold_step(self, event: Event) -> None:
        if int(event.get("attempt") or 1) < self.attempt:
            self.on_late_step(event)
            return
        step, before = int(event["step"]), self.step
        self.on_step(event, step, step <= before)
        if step > before:
            self.step = step
        if step > self.highest_step:
            self.highest_step = step

    def _fold_restart(self, event: Event) -> None:
        from_step = int(event.get("from_step") or 0)
        self.attempt = int(event.get("attempt") or self.attempt + 1)
        if self.step > from_step:
            self.step = from_step
        self.on_restart(event, from_step)


def run_spend(per_node: Mapping[str, Optional[float]]) -> Optional[float]:
    """The run's dollars: the sum of each node's latest spend, unknown if any node's is (money is never guessed)."""
    total = 0.0
    for usd in per_node.values():
        if usd is None:
            return None
        total += float(usd)
    return total


__all__ = ["Event", "Fold", "run_spend"]
