"""Telemetry without a device: hl-smi parsing, the host sampler on real processes, source choice, the loop, the exporter."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from gaudi_nb.errors import GaudiNbError, NotFoundError
from gaudi_nb.telemetry import (
    DeviceSample,
    HlmlSource,
    HlSmiSource,
    HostSample,
    HostSource,
    NvmlSource,
    Sample,
    TelemetryLoop,
    hlml,
    nvml,
    parse_hlsmi_csv,
    pick_source,
    telemetry_sources,
)
from gaudi_nb.telemetry.hlml import LIBHLML
from gaudi_nb.telemetry.prometheus import MetricsExporter

FIXTURES = Path(__file__).parent / "fixtures"
MIB = 1024**2


# --- samples ---------------------------------------------------------------------------


def test_sample_round_trips_through_json() -> None:
    sample = Sample(
        t=1.5,
        source="host",
        devices=[DeviceSample(0, "cpu", "cpu rank 0", 97.0, 123, 456, pid=42)],
        host=HostSample(12.5, 100, 200, 50),
    )
    data = json.loads(json.dumps(sample.to_dict()))
    assert data["devices"][0]["label"] == "cpu rank 0"
    assert Sample.from_dict(data) == sample
    assert Sample.from_dict({"t": 0, "source": "x", "devices": [], "host": None}).host is None


# --- hl-smi ------------------------------------------------------------------------------


def test_both_hlsmi_forms_parse_to_the_same_samples() -> None:
    with_units = parse_hlsmi_csv((FIXTURES / "hlsmi_units.csv").read_text())
    no_units = parse_hlsmi_csv((FIXTURES / "hlsmi_nounits.csv").read_text())
    assert len(with_units) == 8
    assert with_units == no_units
    third = with_units[2]
    assert (third.index, third.kind, third.label) == (2, "hpu", "hpu 2")
    assert third.utilization_pct == 100.0
    assert third.memory_used_bytes == 98304 * MIB
    assert third.memory_total_bytes == 131072 * MIB
    assert third.power_w == 512.0
    assert third.temperature_c == 55.0


def test_nounits_follows_the_query_order_and_unknowns_stay_none() -> None:
    devices = parse_hlsmi_csv("3, 87, N/A\n", fields=["index", "utilization.aip", "power.draw"])
    assert devices == [DeviceSample(3, "hpu", "hpu 3", 87.0, None, None, power_w=None)]
    assert parse_hlsmi_csv("") == []
    with pytest.raises(GaudiNbError, match="columns"):
        parse_hlsmi_csv("1, 2\n", fields=["index", "utilization.aip", "power.draw"])


def test_hlsmi_source_runs_the_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in hl-smi on PATH: the source's real subprocess path runs end to end.
    tool = tmp_path / "hl-smi"
    tool.write_text(f"#!/bin/sh\ncat '{FIXTURES / 'hlsmi_nounits.csv'}'\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert HlSmiSource.available()
    sample = HlSmiSource().sample()
    assert sample.source == "hl-smi" and len(sample.devices) == 8 and sample.host is not None


# --- library sources ------------------------------------------------------------------------


@pytest.mark.skipif(os.path.exists(LIBHLML), reason="a real Gaudi driver is installed")
def test_hlml_is_unavailable_without_the_driver(capsys: pytest.CaptureFixture[str]) -> None:
    assert HlmlSource.available() is False
    assert capsys.readouterr().out == ""  # pyhlml's "Failed to load" print is kept out


def test_nvml_available_never_raises() -> None:
    assert NvmlSource.available() in (True, False)


class FakeLibrary:
    """The slice of pyhlml / pynvml the sources call, with two devices; device 1 has no power reading."""

    hlml_t = SimpleNamespace(HLML_TEMP_SENS=SimpleNamespace(HLML_TEMPERATURE_ON_AIP=0))
    NVML_TEMPERATURE_GPU = 0

    def count(self) -> int:
        return 2

    def handle(self, index: int) -> int:
        return index

    def utilization(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(aip=40 + handle, gpu=40 + handle, memory=0)

    def memory(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(used=1024 * (handle + 1), total=4096, free=0)

    def power(self, handle: int) -> int:
        if handle == 1:
            raise RuntimeError("not supported")
        return 412_500  # mW

    def temperature(self, handle: int, sensor: int) -> int:
        return 50 + handle

    hlmlDeviceGetCount = nvmlDeviceGetCount = count
    hlmlDeviceGetHandleByIndex = nvmlDeviceGetHandleByIndex = handle
    hlmlDeviceGetUtilizationRates = nvmlDeviceGetUtilizationRates = utilization
    hlmlDeviceGetMemoryInfo = nvmlDeviceGetMemoryInfo = memory
    hlmlDeviceGetPowerUsage = nvmlDeviceGetPowerUsage = power
    hlmlDeviceGetTemperature = nvmlDeviceGetTemperature = temperature


@pytest.mark.parametrize("module, source, kind", [(hlml, HlmlSource, "hpu"), (nvml, NvmlSource, "cuda")])
def test_library_sources_convert_units(monkeypatch: pytest.MonkeyPatch, module: Any, source: Any, kind: str) -> None:
    monkeypatch.setattr(module, "_init", lambda: FakeLibrary())
    first, second = source().sample().devices
    assert (first.kind, first.label, second.label) == (kind, f"{kind} 0", f"{kind} 1")
    assert (first.utilization_pct, first.memory_used_bytes, first.memory_total_bytes) == (40.0, 1024, 4096)
    assert first.power_w == 412.5  # mW → W
    assert first.temperature_c == 50.0
    assert second.power_w is None and second.utilization_pct == 41.0  # one failed query hides nothing else


def test_pick_source_order_and_prefer(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("hlml", "hl-smi", "nvml"):
        monkeypatch.setattr(telemetry_sources.get(name), "available", classmethod(lambda cls: False))
    assert isinstance(pick_source(), HostSource)

    monkeypatch.setattr(NvmlSource, "available", classmethod(lambda cls: True))
    monkeypatch.setattr(NvmlSource, "__init__", lambda self, pids=None: None)
    assert isinstance(pick_source(), NvmlSource)

    monkeypatch.setattr(HlSmiSource, "available", classmethod(lambda cls: True))
    assert isinstance(pick_source({0: os.getpid()}), HlSmiSource)
    assert isinstance(pick_source(prefer="host"), HostSource)

    with pytest.raises(GaudiNbError, match="not available"):
        pick_source(prefer="hlml")
    with pytest.raises(NotFoundError, match="hl-smi"):
        pick_source(prefer="nope")


# --- host sampler on real processes -------------------------------------------------------

# Rank 0 does its work in a child (like a dataloader worker); rank 1 idles.
RANK_WITH_BUSY_CHILD = (
    "import subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', 'while True: pass']); "
    "time.sleep(60)"
)


@pytest.fixture
def ranks():
    procs = [
        subprocess.Popen([sys.executable, "-c", RANK_WITH_BUSY_CHILD]),
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]),
    ]
    yield {0: procs[0].pid, 1: procs[1].pid}
    for proc in procs:
        for child in psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []:
            child.kill()
        proc.kill()
        proc.wait()


def test_host_source_reports_rank_processes_as_cpu_devices(ranks: dict) -> None:
    source = HostSource()
    source.set_pids(ranks)  # ranks arrive after the source is made
    deadline = time.time() + 5
    while len(psutil.Process(ranks[0]).children()) < 1 and time.time() < deadline:
        time.sleep(0.05)
    source.sample()  # registers the child, whose CPU delta starts now
    time.sleep(0.8)
    sample = source.sample()

    assert sample.source == "host" and sample.host is not None
    assert sample.host.memory_total_bytes == psutil.virtual_memory().total
    busy, idle = sample.devices
    assert (busy.kind, busy.label, busy.pid) == ("cpu", "cpu rank 0", ranks[0])
    assert all(d.kind == "cpu" and "hpu" not in d.label.lower() for d in sample.devices)
    assert busy.utilization_pct is not None and busy.utilization_pct > 20  # the child's work counts
    assert idle.utilization_pct is not None and idle.utilization_pct < 15
    assert busy.memory_used_bytes and busy.memory_used_bytes > idle.memory_used_bytes  # type: ignore[operator]
    assert busy.memory_total_bytes == psutil.virtual_memory().total

    psutil.Process(ranks[1]).kill()
    psutil.Process(ranks[1]).wait(5)
    after = source.sample()
    assert [d.index for d in after.devices] == [0]


def test_host_source_without_pids_still_fills_the_host() -> None:
    sample = HostSource({7: 2**22 + 12345}).sample()  # a pid that does not exist is skipped
    assert sample.devices == [] and sample.host is not None and sample.host.process_rss_bytes > 0


# --- the loop --------------------------------------------------------------------------


class FlakySource:
    name = "flaky"

    def __init__(self) -> None:
        self.calls = 0
        self.pids: dict = {}

    def set_pids(self, pids: dict) -> None:
        self.pids = pids

    def sample(self) -> Sample:
        self.calls += 1
        if self.calls % 2 == 0:
            raise RuntimeError("driver hiccup")
        return Sample(t=time.time(), source=self.name)


def test_loop_survives_errors_and_stops() -> None:
    source = FlakySource()
    got: list = []
    errors: list = []
    enough = threading.Event()

    def on_sample(sample: Sample) -> None:
        got.append(sample)
        if len(got) >= 3:
            enough.set()

    loop = TelemetryLoop(source, on_sample, interval_s=0.01, on_error=errors.append).start()
    loop.set_pids({0: 123})
    assert enough.wait(5)
    loop.stop()
    assert loop.errors >= 2 and len(errors) == loop.errors
    assert all(isinstance(e, RuntimeError) for e in errors)
    assert source.pids == {0: 123}
    calls = source.calls
    time.sleep(0.05)
    assert source.calls == calls  # stopped for good


# --- Prometheus -----------------------------------------------------------------------------


def test_exporter_serves_gauges_from_events() -> None:
    exporter = MetricsExporter(port=0)
    try:
        exporter.observe({"type": "step", "run_id": "r1", "step": 10, "loss": 2.5, "tokens_per_second": 1234.0})
        exporter.observe(
            {"type": "telemetry", "run_id": "r1", "devices": [DeviceSample(0, "hpu", "hpu 0", 87.0, 1024, 2048).__dict__]}
        )
        exporter.observe({"type": "cost", "run_id": "r1", "usd": 1.25, "budget_usd": None})
        exporter.observe({"type": "log", "run_id": "r1", "message": "ignored"})
        text = urllib.request.urlopen(exporter.url, timeout=5).read().decode()
    finally:
        exporter.close()
    assert exporter.port > 0
    assert re.search(r'^gaudi_nb_step\{run_id="r1"\} 10\.0$', text, re.M)
    assert re.search(r'^gaudi_nb_loss\{run_id="r1"\} 2\.5$', text, re.M)
    assert re.search(r'^gaudi_nb_tokens_per_second\{run_id="r1"\} 1234\.0$', text, re.M)
    assert 'gaudi_nb_device_utilization_percent{device="hpu 0",kind="hpu",run_id="r1"} 87.0' in text
    assert 'gaudi_nb_device_memory_used_bytes{device="hpu 0",kind="hpu",run_id="r1"} 1024.0' in text
    assert re.search(r'^gaudi_nb_cost_usd\{run_id="r1"\} 1\.25$', text, re.M)
    assert not re.search(r"^gaudi_nb_budget_usd\{", text, re.M)  # unknown budget: no sample, not 0
    assert "python_gc" not in text  # its own registry, not the global one
