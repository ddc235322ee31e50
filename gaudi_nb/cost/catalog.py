"""The price catalog: CSV rows with a source and a date, computed on-prem rates, user overrides and lookup."""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

from ..errors import GaudiNbError, NotFoundError, SpecError

HERE = Path(__file__).parent
CATALOG_CSV = HERE / "catalog.csv"
ONPREM_CSV = HERE / "onprem.csv"
ACCELERATORS_CSV = HERE / "accelerators.csv"
HOURS_PER_YEAR = 365 * 24


@dataclass(frozen=True)
class Price:
    """One instance type's hourly rate; None means unknown, never free."""

    provider: str
    instance_type: str
    region: str
    accelerator: str
    accelerator_count: int
    on_demand_per_hour: Optional[float]
    spot_per_hour: Optional[float]
    source: str
    as_of: str
    notes: str = ""


@dataclass(frozen=True)
class Accelerator:
    name: str
    peak_bf16_tflops: Optional[float]  # dense, no sparsity; None when no public figure was found
    memory_gb: Optional[float]
    power_w: Optional[float]
    source: str
    as_of: str = ""  # when the figures were checked against the source
    runtime_names: Tuple[str, ...] = ()  # how torch.hpu / torch.cuda name the device (GAUDI3, NVIDIA H100 80GB HBM3)


def onprem_price_per_hour(
    purchase_usd: float,
    years: float,
    accelerator_count: int,
    accelerator_power_w: float,
    host_power_w: float,
    usd_per_kwh: float,
) -> float:
    """Amortised hourly cost of an owned node: purchase spread over `years` of 24/7 hours,
    plus electricity for the cards at full power and the host. Leaves out cooling (PUE),
    staff, rack space and resale, which vary too much by site to guess."""
    if years <= 0:
        raise GaudiNbError("years of use must be positive to amortise a purchase")
    capital = purchase_usd / (years * HOURS_PER_YEAR)
    kilowatts = (accelerator_count * accelerator_power_w + host_power_w) / 1000.0
    return capital + kilowatts * usd_per_kwh


def _money(text: Optional[str]) -> Optional[float]:
    # An empty cell is an unknown price: it stays None so no view shows it as $0.
    text = (text or "").strip().lstrip("$")
    if not text:
        return None
    value = float(text)
    if not math.isfinite(value) or value < 0:  # nan compares false with everything: no budget would ever stop
        raise ValueError(f"a price must be a number of 0 or more, not {text!r}")
    return value


def _read(path: Path) -> List[Dict[str, str]]:
    with open(path, newline="") as handle:
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in csv.DictReader(handle)]


def _price(row: Dict[str, str], source: Optional[str] = None) -> Price:
    try:
        return Price(
            provider=row.get("provider", ""),
            instance_type=row["instance_type"],
            region=row.get("region", ""),
            accelerator=row.get("accelerator", ""),
            accelerator_count=int(row.get("accelerator_count") or 0),
            on_demand_per_hour=_money(row.get("on_demand_per_hour")),
            spot_per_hour=_money(row.get("spot_per_hour")),
            source=source or row.get("source", ""),
            as_of=row.get("as_of", ""),
            notes=row.get("notes", ""),
        )
    except (KeyError, ValueError) as exc:
        raise SpecError(f"bad price row {row!r} ({exc}): columns are {', '.join(Price.__dataclass_fields__)}") from exc


def read_prices(path: Path, source: Optional[str] = None) -> List[Price]:
    return [_price(row, source) for row in _read(path)]


def read_onprem(path: Path = ONPREM_CSV) -> List[Price]:
    """On-prem rows whose hourly rate is computed from the inputs kept in the CSV."""
    prices = []
    for row in _read(path):
        rate = onprem_price_per_hour(
            purchase_usd=float(row["purchase_usd"]),
            years=float(row["years"]),
            accelerator_count=int(row["accelerator_count"]),
            accelerator_power_w=float(row["accelerator_power_w"]),
            host_power_w=float(row["host_power_w"]),
            usd_per_kwh=float(row["usd_per_kwh"]),
        )
        inputs = (
            f"${row['purchase_usd']} over {row['years']} y, {row['accelerator_power_w']} W/card"
            f" + {row['host_power_w']} W host at ${row['usd_per_kwh']}/kWh"
        )
        prices.append(
            Price(
                provider="onprem",
                instance_type=row["instance_type"],
                region="",
                accelerator=row["accelerator"],
                accelerator_count=int(row["accelerator_count"]),
                on_demand_per_hour=round(rate, 4),
                spot_per_hour=None,
                source=f"computed: {inputs}; {row['source']}",
                as_of=row["as_of"],
                notes=row.get("notes", ""),
            )
        )
    return prices


def user_prices_path() -> Path:
    from ..paths import home

    return home() / "prices.csv"


def merge(base: Iterable[Price], overrides: Iterable[Price]) -> List[Price]:
    """Overrides replace rows with the same (instance_type, region) and add the rest."""
    merged: Dict[Tuple[str, str], Price] = {(p.instance_type.lower(), p.region.lower()): p for p in base}
    for price in overrides:
        merged[(price.instance_type.lower(), price.region.lower())] = price
    return list(merged.values())


_cache: Dict[Tuple[str, float], List[Price]] = {}


def load_catalog() -> List[Price]:
    """Built-in rows, computed on-prem rows, then $GAUDI_NB_HOME/prices.csv (source "user").

    Cached per override file and its modification time, so editing prices.csv takes
    effect without a restart while repeated lookups stay cheap."""
    override = user_prices_path()
    mtime = override.stat().st_mtime if override.exists() else 0.0
    key = (str(override), mtime)
    if key not in _cache:
        users = read_prices(override, source="user") if mtime else []
        _cache.clear()
        _cache[key] = merge(read_prices(CATALOG_CSV) + read_onprem(), users)
    return list(_cache[key])


def lookup(instance_type: str, region: Optional[str] = None, catalog: Optional[List[Price]] = None) -> Price:
    """The row for an instance type (and region, when given); a miss lists the known types."""
    rows = catalog if catalog is not None else load_catalog()
    matches = [p for p in rows if p.instance_type.lower() == instance_type.lower()]
    if region:
        matches = [p for p in matches if p.region.lower() == region.lower()] or [
            p for p in matches if not p.region  # a region-less row (on-prem, unknown) fits any region
        ]
    if not matches:
        known = sorted({p.instance_type for p in rows})
        where = f" in region {region}" if region else ""
        raise NotFoundError(
            f"no price for instance type '{instance_type}'{where}: known types are {', '.join(known)}; "
            f"add a row to {user_prices_path()} or pass price_per_hour"
        )
    return matches[0]


def resolve_price_per_hour(
    price_per_hour: Optional[float], instance_type: Optional[str], region: Optional[str] = None
) -> Tuple[Optional[float], str]:
    """The rate to bill a run at and where it came from: an explicit price wins, then the
    catalog's on-demand rate; otherwise (None, "unknown"), never a guess."""
    if price_per_hour is not None:
        return float(price_per_hour), "explicit price_per_hour"
    if instance_type:
        try:
            price = lookup(instance_type, region)
        except NotFoundError:
            return None, f"unknown: '{instance_type}' is not in the catalog"
        if price.on_demand_per_hour is None:
            return None, f"unknown: the catalog has no price for {price.provider} {price.instance_type}"
        where = f" {price.region}" if price.region else ""
        return price.on_demand_per_hour, f"catalog: {price.provider} {price.instance_type}{where} (as of {price.as_of})"
    return None, "unknown"


def load_accelerators(path: Path = ACCELERATORS_CSV) -> Dict[str, Accelerator]:
    """Accelerator name (lower case) → its peak figures; empty cells are unknown."""
    table = {}
    for row in _read(path):
        table[row["accelerator"].lower()] = Accelerator(
            name=row["accelerator"],
            peak_bf16_tflops=_money(row.get("peak_bf16_tflops")),
            memory_gb=_money(row.get("memory_gb")),
            power_w=_money(row.get("power_w")),
            source=row.get("source", ""),
            as_of=row.get("as_of", ""),
            runtime_names=tuple(name.strip().upper() for name in row.get("runtime_names", "").split("|") if name.strip()),
        )
    return table


__all__ = [
    "Accelerator",
    "Price",
    "load_accelerators",
    "load_catalog",
    "lookup",
    "merge",
    "onprem_price_per_hour",
    "read_onprem",
    "read_prices",
    "resolve_price_per_hour",
    "user_prices_path",
]
