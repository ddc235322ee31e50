"""A Prometheus /metrics endpoint fed from gaudi_nb events (step, telemetry, cost), named by Prometheus conventions."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from ..fold import Event, Fold

RUN = ["run_id", "node"]
DEVICE = ["run_id", "node", "device", "kind"]

# name, type, help, labels: units in the names (bytes, watts, seconds, dollars), ratios 0-1,
# counters end in _total (prometheus_client adds it), so Grafana and PromQL read them without a legend.
METRICS = (
    ("gaudi_nb_run_step", "gauge", "Last optimizer step reported by rank 0", RUN),
    ("gaudi_nb_run_loss", "gauge", "Training loss at the last step", RUN),
    ("gaudi_nb_run_tokens_per_second", "gauge", "Training throughput at the last step in tokens per second", RUN),
    ("gaudi_nb_run_tokens", "counter", "Tokens trained on since the run started", RUN),
    ("gaudi_nb_run_step_seconds", "gauge", "Duration of the last optimizer step in seconds", RUN),
    ("gaudi_nb_run_cost_dollars", "gauge", "Money spent on the run so far in US dollars", RUN),
    ("gaudi_nb_run_budget_dollars", "gauge", "The run's budget in US dollars", RUN),
    ("gaudi_nb_run_elapsed_seconds", "gauge", "Wall-clock seconds the cost meter has charged", RUN),
    ("gaudi_nb_price_dollars_per_hour", "gauge", "Price of one node-hour in US dollars", RUN),
    ("gaudi_nb_device_utilization_ratio", "gauge", "Device utilization from 0 to 1", DEVICE),
    ("gaudi_nb_device_memory_used_bytes", "gauge", "Device memory in use in bytes", DEVICE),
    ("gaudi_nb_device_memory_total_bytes", "gauge", "Device memory in bytes", DEVICE),
    ("gaudi_nb_device_power_watts", "gauge", "Device power draw in watts", DEVICE),
    ("gaudi_nb_device_temperature_celsius", "gauge", "Device temperature in degrees Celsius", DEVICE),
    ("gaudi_nb_events", "counter", "Events the agent wrote, by type", ["run_id", "node", "type"]),
)


def _define(registry: CollectorRegistry) -> Dict[str, Any]:
    made: Dict[str, Any] = {}
    for name, kind, doc, labels in METRICS:
        made[name] = (Counter if kind == "counter" else Gauge)(name, doc, labels, registry=registry)
    return made


def metric_names() -> List[str]:
    """Every series name /metrics can carry (a counter as NAME_total and NAME_created): what a Grafana query may use."""
    registry = CollectorRegistry(auto_describe=True)
    _define(registry)
    names: List[str] = []
    for family in registry.collect():
        if family.type == "counter":
            names += [f"{family.name}_total", f"{family.name}_created"]
        else:
            names.append(family.name)
    return names


class MetricsFold(Fold):
    """One run's events on one node as metrics."""

    def __init__(self, metrics: Dict[str, Any], run: Tuple[str, str]) -> None:
        self.metrics = metrics
        self.run = run

    def seen(self, event: Event) -> None:
        kind = event.get("type")
        if kind:
            self.metrics["gaudi_nb_events"].labels(*self.run, str(kind)).inc()

    def on_step(self, event: Event, step: int, replayed: bool) -> None:
        self._set("gaudi_nb_run_step", step)
        self._set("gaudi_nb_run_loss", event.get("loss"))
        self._set("gaudi_nb_run_tokens_per_second", event.get("tokens_per_second"))
        self._set("gaudi_nb_run_step_seconds", event.get("step_time_s"))
        if event.get("tokens") and step > self.highest_step:  # each step counts once across attempts
            self.metrics["gaudi_nb_run_tokens"].labels(*self.run).inc(float(event["tokens"]))

    def on_restart(self, event: Event, from_step: int) -> None:
        self._set("gaudi_nb_run_step", self.step)  # back to the step the new attempt goes on from

    def on_telemetry(self, event: Event) -> None:
        for device in event.get("devices") or []:
            labels = (*self.run, str(device.get("label", device.get("index"))), str(device.get("kind", "")))
            utilization = device.get("utilization_pct")
            self._set("gaudi_nb_device_utilization_ratio", None if utilization is None else float(utilization) / 100.0, *labels)
            self._set("gaudi_nb_device_memory_used_bytes", device.get("memory_used_bytes"), *labels)
            self._set("gaudi_nb_device_memory_total_bytes", device.get("memory_total_bytes"), *labels)
            self._set("gaudi_nb_device_power_watts", device.get("power_w"), *labels)
            self._set("gaudi_nb_device_temperature_celsius", device.get("temperature_c"), *labels)

    def on_cost(self, event: Event) -> None:
        self._set("gaudi_nb_run_cost_dollars", event.get("usd"))
        self._set("gaudi_nb_run_budget_dollars", event.get("budget_usd"))
        self._set("gaudi_nb_run_elapsed_seconds", event.get("elapsed_s"))
        self._set("gaudi_nb_price_dollars_per_hour", event.get("price_per_hour"))

    def on_run_start(self, event: Event) -> None:
        self._set("gaudi_nb_price_dollars_per_hour", event.get("price_per_hour"))

    def _set(self, name: str, value: Optional[float], *labels: str) -> None:
        if value is not None:
            self.metrics[name].labels(*(labels or self.run)).set(float(value))


class MetricsExporter:
    """Serves /metrics from its own CollectorRegistry, so two exporters (or a test)
    in one process never collide on the global registry. Binds loopback by default:
    the node's metrics are not for the whole network unless asked."""

    def __init__(self, port: int = 0, address: str = "127.0.0.1") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.metrics = _define(self.registry)
        self.address = address
        self._server, self._thread = start_http_server(port, addr=address, registry=self.registry)
        self.port: int = int(self._server.server_port)
        self._folds: Dict[Tuple[str, str], MetricsFold] = {}  # one per run and node: each node's stream is its own

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}/metrics"

    def observe(self, event: Dict[str, Any]) -> None:
        """Update metrics from one event, read through the one fold (a late step of a replaced attempt
        changes nothing; a replayed step's tokens are not counted again); unknown types and missing fields
        are ignored, and an unknown value (None) leaves the gauge as it was rather than writing 0."""
        run = (str(event.get("run_id") or ""), str(event.get("node") or "local"))
        fold = self._folds.get(run)
        if fold is None:
            fold = self._folds[run] = MetricsFold(self.metrics, run)
        fold.dispatch(event)

    def observe_all(self, events: Sequence[Dict[str, Any]]) -> None:
        """A batch of events, in order (the agent's feed hands them over a tick at a time)."""
        for event in events:
            self.observe(event)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
