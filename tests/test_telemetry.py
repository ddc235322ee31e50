"""Telemetry without a device: hl-smi parsing, the host sampler on real processes, source choice, the loop, the exporter."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
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
from gaudi_nb.telemetry.hlsmi import QUERY_FIELDS, hlsmi_command
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
    # the fixtures were recorded with the old query, which asked for `timestamp` first
    with_units = parse_hlsmi_csv((FIXTURES / "hlsmi_units.csv").read_text())
    no_units = parse_hlsmi_csv((FIXTURES / "hlsmi_nounits.csv").read_text(), fields=["timestamp", *QUERY_FIELDS])
    assert len(with_units) == 8
    assert with_units == no_units
    third = with_units[2]
    # device index 2 is module 0: labelled as HABANA_VISIBLE_MODULES numbers it
    assert (third.index, third.module_id, third.kind, third.label) == (2, 0, "hpu", "hpu 0")
    assert third.utilization_pct == 100.0
    assert third.memory_used_bytes == 98304 * MIB
    assert third.memory_total_bytes == 131072 * MIB
    assert third.power_w == 512.0
    assert third.temperature_c == 55.0
    assert sorted(d.label for d in with_units) == [f"hpu {m}" for m in range(8)]


def test_the_query_no_longer_asks_for_the_timestamp() -> None:
    # its format is undocumented: a comma in it ("Tue, Jan 14") would shift every column after it
    assert "timestamp" not in QUERY_FIELDS and "timestamp" not in hlsmi_command()[2]
    assert hlsmi_command()[2].split(",")[:2] == ["index", "module_id"]
    shifted = "Tue, Jan 14 10:00:00 2025, 0, 3, 35, 512, 131072, 98, 31\n"
    with pytest.raises(GaudiNbError, match="columns"):
        parse_hlsmi_csv(shifted, fields=["timestamp", *QUERY_FIELDS])


def test_nounits_follows_the_query_order_and_unknowns_stay_none() -> None:
    devices = parse_hlsmi_csv("3, 87, N/A\n", fields=["index", "utilization.aip", "power.draw"])
    # no module_id column: the label names the index, marked as such
    assert devices == [DeviceSample(3, "hpu", "hpu #3", 87.0, None, None, power_w=None)]
    assert parse_hlsmi_csv("") == []
    with pytest.raises(GaudiNbError, match="columns"):
        parse_hlsmi_csv("1, 2\n", fields=["index", "utilization.aip", "power.draw"])


# One query without `index`, as each `-f csv…` form prints it; card 2 reports no power.
NO_INDEX_FIELDS = ["module_id", "utilization.aip", "memory.used", "memory.total", "power.draw", "temperature.aip"]
NO_INDEX_FORMS = {
    "csv": (
        "module_id, utilization.aip [%], memory.used [MiB], memory.total [MiB], power.draw [W], temperature.aip [C]\n"
        "3, 35 %, 512 MiB, 131072 MiB, 98 W, 31 C\n"
        "1, 0 %, 0 MiB, 131072 MiB, 75 W, 29 C\n"
        "0, 100 %, 98304 MiB, 131072 MiB, N/A, 55 C\n"
    ),
    "csv,nounits": (
        "module_id, utilization.aip [%], memory.used [MiB], memory.total [MiB], power.draw [W], temperature.aip [C]\n"
        "3, 35, 512, 131072, 98, 31\n"
        "1, 0, 0, 131072, 75, 29\n"
        "0, 100, 98304, 131072, N/A, 55\n"
    ),
    "csv,noheader": (
        "3, 35 %, 512 MiB, 131072 MiB, 98 W, 31 C\n"
        "1, 0 %, 0 MiB, 131072 MiB, 75 W, 29 C\n"
        "0, 100 %, 98304 MiB, 131072 MiB, N/A, 55 C\n"
    ),
    "csv,noheader,nounits": "3, 35, 512, 131072, 98, 31\n1, 0, 0, 131072, 75, 29\n0, 100, 98304, 131072, N/A, 55\n",
}


@pytest.mark.parametrize("form", sorted(NO_INDEX_FORMS))
def test_hlsmi_without_an_index_column_numbers_cards_by_row(form: str) -> None:
    # A header is known by its field names, so the header forms need no `fields`.
    fields = NO_INDEX_FIELDS if "noheader" in form else None
    devices = parse_hlsmi_csv(NO_INDEX_FORMS[form], fields=fields)
    assert [(d.index, d.module_id, d.label) for d in devices] == [(0, 3, "hpu 3"), (1, 1, "hpu 1"), (2, 0, "hpu 0")]
    assert [d.utilization_pct for d in devices] == [35.0, 0.0, 100.0]
    assert [d.memory_used_bytes for d in devices] == [512 * MIB, 0, 98304 * MIB]
    assert {d.memory_total_bytes for d in devices} == {131072 * MIB}
    assert [d.power_w for d in devices] == [98.0, 75.0, None]  # N/A stays unknown, not 0
    assert [d.temperature_c for d in devices] == [31.0, 29.0, 55.0]


def test_hlsmi_header_sets_the_columns_whatever_fields_say() -> None:
    text = "temperature.aip [C], index, memory.used [MiB]\n40 C, 5, 1 GiB\n41 C, 6, N/A\n"
    devices = parse_hlsmi_csv(text, fields=["index", "memory.used", "temperature.aip"])
    assert [(d.index, d.temperature_c, d.memory_used_bytes) for d in devices] == [(5, 40.0, 1024 * MIB), (6, 41.0, None)]


def _query_rows(fixture: str) -> str:
    """The fixture's rows as today's query prints them (its first column was the timestamp)."""
    return "".join(line.split(", ", 1)[1] + "\n" for line in (FIXTURES / fixture).read_text().splitlines() if line.strip())


def test_hlsmi_source_runs_the_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stand-in hl-smi on PATH: the source's real subprocess path runs end to end.
    from test_launch import install_fake_hlsmi

    install_fake_hlsmi(tmp_path, monkeypatch, query_csv=_query_rows("hlsmi_nounits.csv"))
    assert HlSmiSource.available()
    sample = HlSmiSource().sample()
    assert sample.source == "hl-smi" and len(sample.devices) == 8 and sample.host is not None
    assert {d.module_id for d in sample.devices} == set(range(8))


def test_a_two_card_run_shows_its_own_cards_by_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # HABANA_VISIBLE_MODULES=0,1 runs on the cards at index 2 and 1 of this node (modules 0 and 1):
    # before, the panel called them by index and showed the six cards of other tenants too
    from test_launch import install_fake_hlsmi

    install_fake_hlsmi(tmp_path, monkeypatch, query_csv=_query_rows("hlsmi_nounits.csv"))
    source = pick_source(prefer="hl-smi", modules="0,1")
    devices = source.sample().devices
    assert [(d.index, d.module_id, d.label) for d in devices] == [(1, 1, "hpu 1"), (2, 0, "hpu 0")]
    source.set_modules(None)  # a run on the whole node: every card
    assert len(source.sample().devices) == 8


# --- library sources ------------------------------------------------------------------------


@pytest.mark.skipif(os.path.exists(LIBHLML), reason="a real Gaudi driver is installed")
def test_hlml_is_unavailable_without_the_driver(capsys: pytest.CaptureFixture[str]) -> None:
    assert HlmlSource.available() is False
    assert capsys.readouterr().out == ""  # pyhlml's "Failed to load" print is kept out


NVIDIA_DRIVER = os.path.exists("/proc/driver/nvidia") or shutil.which("nvidia-smi") is not None
GAUDI_DRIVER = os.path.exists(LIBHLML) or shutil.which("hl-smi") is not None


@pytest.mark.skipif(NVIDIA_DRIVER or GAUDI_DRIVER, reason="an accelerator driver is installed, so a device source is picked")
def test_without_a_driver_telemetry_falls_back_to_the_host_and_watches_the_ranks() -> None:
    assert NvmlSource.available() is False  # pynvml may be installed; the driver is not
    source = pick_source({0: os.getpid()})
    assert isinstance(source, HostSource)
    assert [(d.label, d.pid) for d in source.sample().devices] == [("cpu rank 0", os.getpid())]
    with pytest.raises(GaudiNbError, match="no NVIDIA driver here"):
        pick_source(prefer="nvml")


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

    def module_id(self, handle: int) -> int:
        return {0: 5, 1: 4}[handle]  # index 0 is module 5, index 1 module 4

    hlmlDeviceGetCount = nvmlDeviceGetCount = count
    hlmlDeviceGetHandleByIndex = nvmlDeviceGetHandleByIndex = handle
    hlmlDeviceGetUtilizationRates = nvmlDeviceGetUtilizationRates = utilization
    hlmlDeviceGetMemoryInfo = nvmlDeviceGetMemoryInfo = memory
    hlmlDeviceGetPowerUsage = nvmlDeviceGetPowerUsage = power
    hlmlDeviceGetTemperature = nvmlDeviceGetTemperature = temperature
    hlmlDeviceGetModuleID = module_id


@pytest.mark.parametrize("module, source, kind", [(hlml, HlmlSource, "hpu"), (nvml, NvmlSource, "cuda")])
def test_library_sources_convert_units(monkeypatch: pytest.MonkeyPatch, module: Any, source: Any, kind: str) -> None:
    monkeypatch.setattr(module, "_init", lambda: FakeLibrary())
    first, second = source().sample().devices
    labels = ("hpu 5", "hpu 4") if kind == "hpu" else ("cuda 0", "cuda 1")  # Gaudi cards by module id
    assert (first.kind, first.label, second.label) == (kind, *labels)
    assert (first.index, second.index) == (0, 1)
    assert (first.utilization_pct, first.memory_used_bytes, first.memory_total_bytes) == (40.0, 1024, 4096)
    assert first.power_w == 412.5  # mW → W
    assert first.temperature_c == 50.0
    assert second.power_w is None and second.utilization_pct == 41.0  # one failed query hides nothing else


def test_hlml_reports_only_the_runs_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hlml, "_init", lambda: FakeLibrary())
    source = HlmlSource()
    assert [d.module_id for d in source.sample().devices] == [5, 4]
    source.set_modules([4])
    assert [(d.index, d.module_id, d.label) for d in source.sample().devices] == [(1, 4, "hpu 4")]

    class NoModuleIds(FakeLibrary):
        def hlmlDeviceGetModuleID(self, handle: int) -> int:
            raise RuntimeError("not supported")

    monkeypatch.setattr(hlml, "_init", lambda: NoModuleIds())
    source = HlmlSource()
    source.set_modules([4])  # unknown modules are kept: better an extra card than a missing one
    assert [(d.module_id, d.label) for d in source.sample().devices] == [(None, "hpu #0"), (None, "hpu #1")]


def test_old_telemetry_events_without_module_ids_still_load() -> None:
    old = {"t": 1.0, "source": "hl-smi", "host": None,
           "devices": [{"index": 2, "kind": "hpu", "label": "hpu 2", "utilization_pct": 1.0,
                        "memory_used_bytes": None, "memory_total_bytes": None}]}
    assert Sample.from_dict(old).devices[0].module_id is None


def test_pick_source_order_and_prefer(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("hlml", "hl-smi", "nvml"):
        monkeypatch.setattr(telemetry_sources.get(name), "available", classmethod(lambda cls: False))
    assert isinstance(pick_source(), HostSource)

    monkeypatch.setattr(NvmlSource, "available", classmethod(lambda cls: True))
    monkeypatch.setattr(NvmlSource, "__init__", lambda self: None)  # device sources take no pids
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


class ScriptedSource:
    """Fails with each message in ``script`` (None: a good sample), then succeeds."""

    name = "scripted"

    @classmethod
    def available(cls) -> bool:
        return True

    def __init__(self, script: list) -> None:
        self.script = list(script)
        self.calls = 0
        self.done = threading.Event()

    def sample(self) -> Sample:
        self.calls += 1
        if not self.script:
            self.done.set()
            return Sample(t=time.time(), source=self.name)
        message = self.script.pop(0)
        if message is not None:
            raise RuntimeError(message)
        return Sample(t=time.time(), source=self.name)


class BrokenSource(ScriptedSource):
    def sample(self) -> Sample:
        self.calls += 1
        if self.calls >= 10:
            self.done.set()
        raise RuntimeError("hlmlDeviceGetCount failed")


def test_a_source_failing_every_tick_is_reported_once_and_sampling_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    source = BrokenSource([])
    reported: list = []
    with caplog.at_level(logging.WARNING, logger="gaudi_nb.telemetry"):
        with TelemetryLoop(source, lambda sample: None, interval_s=0.005, on_error=reported.append) as loop:
            assert source.done.wait(5)  # the loop kept asking after the failures
    assert loop.errors >= 10 and loop.samples == 0
    assert reported == ["telemetry from scripted failed: hlmlDeviceGetCount failed"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "hlmlDeviceGetCount failed" in warnings[0]


def test_a_failure_is_reported_again_only_after_a_recovery() -> None:
    source = ScriptedSource(["A", "A", "B", "A", None, "A", "A", None, None])
    reported: list = []
    with TelemetryLoop(source, lambda sample: None, interval_s=0.001, on_error=reported.append):
        assert source.done.wait(5)
    assert [message.rsplit(" ", 1)[-1] for message in reported] == ["A", "B", "A"]


def test_loop_survives_a_broken_handler_passes_pids_and_stops() -> None:
    class WatchingSource(ScriptedSource):
        pids: dict = {}

        def set_pids(self, pids: dict) -> None:
            self.pids = pids

    def on_error(message: str) -> None:
        raise ValueError("handler bug")

    source = WatchingSource(["hiccup", None, "hiccup", None])
    loop = TelemetryLoop(source, lambda sample: None, interval_s=0.001, on_error=on_error).start()
    loop.set_pids({0: 123})
    assert source.done.wait(5)
    loop.stop()
    assert loop.errors == 2 and loop.samples >= 3
    assert source.pids == {0: 123}
    calls = source.calls
    time.sleep(0.05)
    assert source.calls == calls  # stopped for good

    # The agent hands pids to whatever source was picked; a device source has no use for them.
    TelemetryLoop(ScriptedSource([]), lambda sample: None).set_pids({0: 123})


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
    assert re.search(r'^gaudi_nb_run_step\{node="local",run_id="r1"\} 10\.0$', text, re.M)
    assert re.search(r'^gaudi_nb_run_loss\{node="local",run_id="r1"\} 2\.5$', text, re.M)
    assert re.search(r'^gaudi_nb_run_tokens_per_second\{node="local",run_id="r1"\} 1234\.0$', text, re.M)
    assert 'gaudi_nb_device_utilization_ratio{device="hpu 0",kind="hpu",node="local",run_id="r1"} 0.87' in text
    assert 'gaudi_nb_device_memory_used_bytes{device="hpu 0",kind="hpu",node="local",run_id="r1"} 1024.0' in text
    assert re.search(r'^gaudi_nb_run_cost_dollars\{node="local",run_id="r1"\} 1\.25$', text, re.M)
    assert not re.search(r"^gaudi_nb_run_budget_dollars\{", text, re.M)  # unknown budget: no sample, not 0
    assert "python_gc" not in text  # its own registry, not the global one
