"""A Prometheus /metrics endpoint fed from gaudi_nb events (step, telemetry, cost)."""
from __future__ import annotations

from typing import Any, Dict, Optional

from prometheus_client import CollectorRegistry, Gauge, start_http_server


class MetricsExporter:
    """Serves /metrics from its own CollectorRegistry, so two exporters (or a test)
    in one process never collide on the global registry. Binds loopback by default:
    the node's metrics are not for the whole network unless asked."""

    def __init__(self, port: int = 0, address: str = "127.0.0.1") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        run = ["run_id"]
        dev = ["run_id", "device", "kind"]

        def gauge(name: str, doc: str, labels: list) -> Gauge:
            return Gauge(name, doc, labels, registry=self.registry)

        self.step = gauge("gaudi_nb_step", "Last optimizer step reported by rank 0", run)
        self.loss = gauge("gaudi_nb_loss", "Training loss at the last step", run)
        self.tokens_per_second = gauge("gaudi_nb_tokens_per_second", "Training throughput in tokens per second", run)
        self.utilization = gauge("gaudi_nb_device_utilization_percent", "Device utilization in percent", dev)
        self.memory_used = gauge("gaudi_nb_device_memory_used_bytes", "Device memory in use in bytes", dev)
        self.cost = gauge("gaudi_nb_cost_usd", "Money spent on the run so far in USD", run)
        self.budget = gauge("gaudi_nb_budget_usd", "The run's budget in USD", run)
        self.address = address
        self._server, self._thread = start_http_server(port, addr=address, registry=self.registry)
        self.port: int = int(self._server.server_port)

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}/metrics"

    def observe(self, event: Dict[str, Any]) -> None:
        """Update gauges from one event; unknown types and missing fields are ignored,
        and an unknown value (None) leaves the gauge as it was rather than writing 0."""
        run_id = str(event.get("run_id") or "")
        kind = event.get("type")
        if kind == "step":
            self._set(self.step, event.get("step"), run_id)
            self._set(self.loss, event.get("loss"), run_id)
            self._set(self.tokens_per_second, event.get("tokens_per_second"), run_id)
        elif kind == "telemetry":
            for device in event.get("devices") or []:
                labels = (run_id, str(device.get("label", device.get("index"))), str(device.get("kind", "")))
                self._set(self.utilization, device.get("utilization_pct"), *labels)
                self._set(self.memory_used, device.get("memory_used_bytes"), *labels)
        elif kind == "cost":
            self._set(self.cost, event.get("usd"), run_id)
            self._set(self.budget, event.get("budget_usd"), run_id)

    @staticmethod
    def _set(gauge: Gauge, value: Optional[float], *labels: str) -> None:
        if value is not None:
            gauge.labels(*labels).set(float(value))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
