"""A Prometheus /metrics endpoint fed from gaudi_nb events (step, telemetry, cost), named by Prometheus conventions."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

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

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}/metrics"

    def observe(self, event: Dict[str, Any]) -> None:
        """Update metrics from one event; unknown types and missing fields are ignored,
        and an unknown value (None) leaves the gauge as it was rather than writing 0."""
        run = (str(event.get("run_id") or ""), str(event.get("node") or "local"))
        kind = event.get("type")
        if kind:
            self.metrics["gaudi_nb_events"].labels(*run, str(kind)).inc()
        if kind == "step":
            self._set("gaudi_nb_run_step", event.get("step"), *run)
            self._set("gaudi_nb_run_loss", event.get("loss"), *run)
            self._set("gaudi_nb_run_tokens_per_second", event.get("tokens_per_second"), *run)
            self._set("gaudi_nb_run_step_seconds", event.get("step_time_s"), *run)
            if event.get("tokens"):
                self.metrics["gaudi_nb_run_tokens"].labels(*run).inc(float(event["tokens"]))
        elif kind == "telemetry":
            for device in event.get("devices") or []:
                labels = (*run, str(device.get("label", device.get("index"))), str(device.get("kind", "")))
                utilization = device.get("utilization_pct")
                self._set("gaudi_nb_device_utilization_ratio", None if utilization is None else float(utilization) / 100.0, *labels)
                self._set("gaudi_nb_device_memory_used_bytes", device.get("memory_used_bytes"), *labels)
                self._set("gaudi_nb_device_memory_total_bytes", device.get("memory_total_bytes"), *labels)
                self._set("gaudi_nb_device_power_watts", device.get("power_w"), *labels)
                self._set("gaudi_nb_device_temperature_celsius", device.get("temperature_c"), *labels)
        elif kind == "cost":
            self._set("gaudi_nb_run_cost_dollars", event.get("usd"), *run)
            self._set("gaudi_nb_run_budget_dollars", event.get("budget_usd"), *run)
            self._set("gaudi_nb_run_elapsed_seconds", event.get("elapsed_s"), *run)
            self._set("gaudi_nb_price_dollars_per_hour", event.get("price_per_hour"), *run)
        elif kind == "run_start":
            self._set("gaudi_nb_price_dollars_per_hour", event.get("price_per_hour"), *run)

    def _set(self, name: str, value: Optional[float], *labels: str) -> None:
        if value is not None:
            self.metrics[name].labels(*labels).set(float(value))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
