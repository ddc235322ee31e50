"""The agent's reading of its own events, through the one fold: the run's step and pace (where a stop lands), this attempt's ranks and their errors."""
from __future__ import annotations

from typing import Any

from ..fold import Event, Fold

PACE_STEPS = 10  # the fastest of the last ten steps sets how far ahead a stop across nodes lands


class AgentObserver(Fold):
    """Folds the events the agent's tailer reads into the agent's state, and hands every event on to its
    side services (the Prometheus exporter). A step of a replaced attempt is read past; a restart takes
    the step back to where the new attempt goes on, and forgets the crashed attempt's pace and errors."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent

    def seen(self, event: Event) -> None:
        exporter = self.agent.exporter
        if exporter is not None:
            exporter.observe(event)

    def on_step(self, event: Event, step: int, replayed: bool) -> None:
        agent = self.agent
        agent.last_step = max(agent.last_step, step)
        if event.get("step_time_s"):
            agent._step_times = (agent._step_times + [float(event["step_time_s"])])[-PACE_STEPS:]
            agent.fastest_step_s = min(agent._step_times)

    def on_restart(self, event: Event, from_step: int) -> None:
        agent = self.agent
        agent.last_step = self.step
        agent._step_times = []
        agent.worker_error = None
        agent.rank_errors = {}

    def on_worker_start(self, event: Event) -> None:
        agent = self.agent
        if event.get("pid") and event.get("node", agent.node) == agent.node:
            agent.rank_pids[int(event.get("rank") or 0)] = int(event["pid"])

    def on_worker_error(self, event: Event) -> None:
        agent = self.agent
        agent.rank_errors.setdefault(int(event.get("rank") or 0), str(event.get("error")))
        if agent.worker_error is None:
            agent.worker_error = f"rank {event.get('rank')}: {event.get('error')}"


__all__ = ["AgentObserver"]
