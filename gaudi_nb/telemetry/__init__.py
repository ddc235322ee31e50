"""Telemetry: pure samplers (HLML, hl-smi, NVML, host), typed samples, the 1 Hz loop and a Prometheus exporter."""
from __future__ import annotations

from .base import SOURCE_ORDER, DeviceSample, HostSample, Sample, TelemetrySource, pick_source, telemetry_sources
from .hlml import HlmlSource
from .hlsmi import HlSmiSource, hlsmi_command, parse_hlsmi_csv
from .host import HostSource, host_sample
from .loop import TelemetryLoop
from .nvml import NvmlSource

__all__ = [
    "SOURCE_ORDER",
    "DeviceSample",
    "HlSmiSource",
    "HlmlSource",
    "HostSample",
    "HostSource",
    "MetricsExporter",
    "NvmlSource",
    "Sample",
    "TelemetryLoop",
    "TelemetrySource",
    "hlsmi_command",
    "host_sample",
    "parse_hlsmi_csv",
    "pick_source",
    "telemetry_sources",
]


def __getattr__(name: str) -> object:
    # prometheus_client is only needed by whoever serves /metrics; import it on first use.
    if name == "MetricsExporter":
        from .prometheus import MetricsExporter

        return MetricsExporter
    raise AttributeError(name)
