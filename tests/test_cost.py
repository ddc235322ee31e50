"""Cost: the catalog as data, on-prem rates, user overrides, pure meter math and estimates checked by hand."""
from __future__ import annotations

from pathlib import Path

import pytest

from gaudi_nb.cost import (
    ASSUMPTIONS,
    Accelerator,
    Price,
    budget_fraction,
    budget_left,
    cost_so_far,
    estimate,
    eta_seconds,
    load_accelerators,
    load_catalog,
    lookup,
    onprem_price_per_hour,
    projected_total,
    resolve_price_per_hour,
    usd_per_million_tokens,
)
from gaudi_nb.errors import NotFoundError, SpecError


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GAUDI_NB_HOME", str(tmp_path))
    return tmp_path


# --- catalog ----------------------------------------------------------------------------


def test_every_row_has_a_source_and_a_date_and_no_price_is_zero() -> None:
    rows = load_catalog()
    assert {"dl1.24xlarge", "p4d.24xlarge", "p5.48xlarge", "gx3d-160x1792x8gaudi3", "onprem-gaudi3-8x", "onprem-gaudi2-8x"} <= {
        p.instance_type for p in rows
    }
    for price in rows:
        assert price.source and price.as_of, price
        assert price.on_demand_per_hour != 0 and price.spot_per_hour != 0  # unknown is None, never 0


def test_known_and_unknown_prices() -> None:
    dl1 = lookup("DL1.24xlarge", "us-west-2")
    assert (dl1.on_demand_per_hour, dl1.accelerator, dl1.accelerator_count) == (13.11, "Gaudi HL-205", 8)
    assert dl1.spot_per_hour is None
    assert lookup("p5.48xlarge").on_demand_per_hour == 98.32
    assert "2025" in lookup("p5.48xlarge").notes  # the pre-cut list price says so
    assert lookup("gx3d-160x1792x8gaudi3").on_demand_per_hour is None
    assert lookup("onprem-gaudi3-8x", region="anywhere").provider == "onprem"


def test_lookup_miss_lists_known_types() -> None:
    with pytest.raises(NotFoundError, match="dl1.24xlarge") as err:
        lookup("x9.huge")
    assert "prices.csv" in str(err.value)
    with pytest.raises(NotFoundError):
        lookup("dl1.24xlarge", region="eu-west-1")


def test_onprem_rate_is_computed_from_its_inputs() -> None:
    by_hand = 125_000 / (4 * 8760) + (8 * 900 + 1500) / 1000 * 0.12  # 3.5673 + 1.044
    assert onprem_price_per_hour(125_000, 4, 8, 900, 1500, 0.12) == pytest.approx(by_hand)
    assert lookup("onprem-gaudi3-8x").on_demand_per_hour == pytest.approx(by_hand, abs=1e-4)
    gaudi2 = 65_000 / (4 * 8760) + (8 * 600 + 1500) / 1000 * 0.12
    assert lookup("onprem-gaudi2-8x").on_demand_per_hour == pytest.approx(gaudi2, abs=1e-4)
    assert "computed" in lookup("onprem-gaudi2-8x").source


def test_user_prices_replace_and_add(isolated_home: Path) -> None:
    (isolated_home / "prices.csv").write_text(
        "provider,instance_type,region,accelerator,accelerator_count,on_demand_per_hour,spot_per_hour,source,as_of,notes\n"
        "aws,dl1.24xlarge,us-west-2,Gaudi HL-205,8,10.00,4.00,my invoice,2026-01-01,negotiated\n"
        "ibm,gx3d-160x1792x8gaudi3,,Gaudi 3,8,60.5,,quote,2026-01-01,\n"
        "lab,my-box,,Gaudi 2,8,3.0,,,2026-01-01,\n"
    )
    dl1 = lookup("dl1.24xlarge")
    assert (dl1.on_demand_per_hour, dl1.spot_per_hour, dl1.source) == (10.0, 4.0, "user")
    assert lookup("gx3d-160x1792x8gaudi3").on_demand_per_hour == 60.5
    assert lookup("my-box").source == "user"
    assert sum((p.instance_type, p.region) == ("dl1.24xlarge", "us-west-2") for p in load_catalog()) == 1  # replaced, not added


@pytest.mark.parametrize("cell", ["nan", "-1", "inf"])
def test_a_price_that_no_budget_could_reach_is_refused_with_its_row(isolated_home: Path, cell: str) -> None:
    (isolated_home / "prices.csv").write_text(
        "provider,instance_type,region,accelerator,accelerator_count,on_demand_per_hour,spot_per_hour,source,as_of,notes\n"
        f"lab,my-box,,Gaudi 2,8,{cell},,,2026-01-01,\n"
    )
    with pytest.raises(SpecError, match=f"bad price row .*a price must be a number of 0 or more, not '{cell}'"):
        lookup("my-box")


def test_resolve_price_per_hour() -> None:
    assert resolve_price_per_hour(7.5, "dl1.24xlarge") == (7.5, "explicit price_per_hour")
    price, where = resolve_price_per_hour(None, "dl1.24xlarge")
    assert price == 13.11 and where.startswith("catalog: aws dl1.24xlarge us-west-2 (as of 20")
    assert resolve_price_per_hour(None, "gx3d-160x1792x8gaudi3")[0] is None
    assert resolve_price_per_hour(None, "x9.huge") == (None, "unknown: 'x9.huge' is not in the catalog")
    assert resolve_price_per_hour(None, None) == (None, "unknown")


def test_accelerator_table() -> None:
    table = load_accelerators()
    assert table["gaudi 3"].peak_bf16_tflops == 1835
    assert table["gaudi 2"].peak_bf16_tflops == 432
    assert table["h100 sxm"].peak_bf16_tflops == 989
    assert table["a100"].peak_bf16_tflops == 312
    assert table["gaudi hl-205"].peak_bf16_tflops is None  # no public figure found: unknown
    accelerators = {p.accelerator.lower() for p in load_catalog()}
    assert accelerators <= set(table)  # every catalog row can be estimated or says why not


# --- meter -------------------------------------------------------------------------------


def test_meter_math() -> None:
    assert cost_so_far(1800, 10.0) == 5.0
    assert cost_so_far(3600, 13.11, nodes=2) == pytest.approx(26.22)
    # $36/h = $0.01/s; at 1000 tokens/s → $10 per million tokens
    assert usd_per_million_tokens(36.0, 1, 1000.0) == pytest.approx(10.0)
    assert usd_per_million_tokens(36.0, 2, 1000.0) == pytest.approx(20.0)
    assert eta_seconds(100.0, 10, 50) == pytest.approx(400.0)
    assert eta_seconds(100.0, 60, 50) == 0.0
    assert projected_total(2.0, 100.0, 10, 50) == pytest.approx(10.0)
    assert budget_left(50.0, 12.5) == 37.5
    assert budget_left(10.0, 12.5) == -2.5
    assert budget_fraction(50.0, 12.5) == 0.25


def test_unknown_in_unknown_out() -> None:
    assert cost_so_far(100, None) is None
    assert usd_per_million_tokens(None, 1, 1000.0) is None
    assert usd_per_million_tokens(10.0, 1, 0.0) is None
    assert usd_per_million_tokens(10.0, 1, None) is None
    assert eta_seconds(100.0, 0, 50) is None
    assert eta_seconds(100.0, 5, None) is None
    assert projected_total(None, 100.0, 10, 50) is None
    assert projected_total(1.0, 100.0, 0, 50) is None
    assert budget_left(None, 1.0) is None and budget_left(1.0, None) is None
    assert budget_fraction(None, 1.0) is None and budget_fraction(0.0, 1.0) is None


# --- estimate ------------------------------------------------------------------------------


def test_estimate_arithmetic_by_hand() -> None:
    catalog = [
        Price("lab", "box", "", "Chip", 8, 20.0, None, "test", "2026-01-01"),
        Price("lab", "unpriced", "", "Chip", 8, None, None, "test", "2026-01-01"),
        Price("lab", "mystery", "", "Unknown chip", 8, 5.0, None, "test", "2026-01-01"),
    ]
    chips = {"chip": Accelerator("Chip", 1000.0, 64, 500, "test")}
    rows = estimate(1e9, 1e11, mfu=0.5, catalog=catalog, accelerators=chips)
    box = rows[0]
    # 6 × 1e9 × 1e11 = 6e20 FLOPs; 1000e12 × 8 × 0.5 = 4e15 FLOP/s → 150 000 s = 41.667 h → $833.33
    assert box.instance_type == "box" and box.flops == 6e20
    assert box.hours == pytest.approx(150_000 / 3600)
    assert box.usd == pytest.approx(150_000 / 3600 * 20.0)
    by_name = {e.instance_type: e for e in rows}
    assert by_name["unpriced"].hours == pytest.approx(box.hours) and by_name["unpriced"].usd is None
    assert by_name["mystery"].hours is None and by_name["mystery"].usd is None
    with pytest.raises(ValueError, match="mfu"):
        estimate(1e9, 1e9, mfu=0)


def test_estimate_over_the_real_catalog_and_assumptions() -> None:
    rows = estimate(7e9, 1e9)
    assert {e.instance_type for e in rows} == {p.instance_type for p in load_catalog()}
    known = [e.usd for e in rows if e.usd is not None]
    assert known == sorted(known) and rows[-1].usd is None  # unknown dollars sort last
    for phrase in ("6 × parameters × tokens", "MFU", "dense peak BF16", "on-demand", "data loading"):
        assert phrase in ASSUMPTIONS
