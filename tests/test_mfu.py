"""Model FLOPs utilization: the math on known peaks and the catalog's peaks with their sources (a real CPU run's TFLOP/s and unknown MFU: test_engine)."""
from __future__ import annotations

import pytest

from gaudi_nb.cost import load_accelerators
from gaudi_nb.cost.mfu import achieved_tflops, find_accelerator, mfu, peak_for
from gaudi_nb.events import make_event
from gaudi_nb.notebook.panel import PanelState, metrics_html
from gaudi_nb.summary import empty_summary, fold, public


def test_mfu_on_a_known_peak_is_achieved_over_peak_times_devices():
    # 1B parameters at 100k tokens/s: 6e9 × 1e5 = 600 TFLOP/s; on 8 Gaudi 3 (8 × 1835) that is 4.09 %
    tflops = achieved_tflops(1e9, 1e5)
    assert tflops == pytest.approx(600.0)
    assert mfu(tflops, 1835.0, 8) == pytest.approx(600.0 / (1835.0 * 8))
    assert mfu(tflops, None, 8) is None and mfu(None, 1835.0, 8) is None
    assert achieved_tflops(None, 1e5) is None and achieved_tflops(1e9, None) is None


def test_every_peak_has_a_source_and_a_date():
    for accelerator in load_accelerators().values():
        assert accelerator.source and accelerator.as_of, accelerator
        assert accelerator.runtime_names, accelerator


@pytest.mark.parametrize("device, peak", [("GAUDI3", 1835.0), ("GAUDI2", 432.0), ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA A100-SXM4-40GB", 312.0)])
def test_the_runtime_names_find_the_catalogs_bf16_peak(device, peak):
    found = peak_for(device, "bf16")
    assert found.tflops == peak and found.source.startswith("catalog: ") and "as of" in found.source


def test_unknown_peaks_say_why():
    assert find_accelerator("GAUDI").name == "Gaudi HL-205"  # GAUDI3's name does not match first-generation Gaudi, nor the other way
    assert peak_for("GAUDI", "bf16").tflops is None  # no public figure: unknown
    assert peak_for("x86_64", "fp32").source.startswith("unknown: no peak in the catalog for x86_64")
    assert peak_for("GAUDI3", "fp32").tflops is None  # only BF16 peaks are in the catalog
    assert peak_for("NVIDIA H100 PCIe", "bf16").tflops is None  # not the SXM part the catalog has


def worker_start(device_name, precision="bf16", parameters=1_000_000_000, world_size=8):
    return make_event("worker_start", "r", rank=0, accelerator="hpu", precision=precision, world_size=world_size, parameters=parameters, device_name=device_name)


def measured_step(n, tokens_per_second):
    return make_event("step", "r", rank=0, step=n, loss=2.0, tokens=tokens_per_second, step_time_s=1.0, tokens_per_second=tokens_per_second, warmup=False)


def test_the_record_and_the_panel_show_mfu_against_the_devices_peak():
    events = [worker_start("GAUDI3"), measured_step(1, 100_000), measured_step(2, 100_000)]
    record = public(fold(empty_summary("r"), events))
    m = record["metrics"]
    assert m["tflops"] == pytest.approx(600.0) and m["mfu"] == pytest.approx(600.0 / (8 * 1835.0))
    assert m["peak_tflops_per_device"] == 1835.0 and "Gaudi 3" in m["peak_source"]
    assert record["parameters"] == {"total": 1_000_000_000, "trainable": 1_000_000_000}
    html = metrics_html(PanelState.from_events("r", events))
    assert "600 TFLOP/s · MFU 4.1%" in html


def test_an_unknown_peak_leaves_mfu_unknown_and_tflops_known():
    events = [worker_start("x86_64", precision="fp32", parameters=4_000_000, world_size=1), measured_step(1, 1000)]
    m = fold(empty_summary("r"), events)["metrics"]
    assert m["tflops"] == pytest.approx(6 * 4e6 * 1000 / 1e12) and m["mfu"] is None
    assert "MFU unknown" in metrics_html(PanelState.from_events("r", events))


# A real CPU run's TFLOP/s and unknown MFU (the record and `gaudi-nb show`) are checked on test_engine's two-rank run:
# one real run fewer.


def test_the_panel_shows_how_much_of_a_lora_model_trains():
    start = make_event("worker_start", "r", rank=0, accelerator="cpu", precision="fp32", world_size=1, parameters=4_212_992, trainable_parameters=32_768,
                       lora={"rank": 8, "target_modules": ["q_proj", "v_proj"]}, device_name="x86_64")
    assert "32,768 of 4,212,992 parameters train (rank 8)" in metrics_html(PanelState.from_events("r", [start]))
