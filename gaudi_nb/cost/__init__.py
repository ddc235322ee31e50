"""Cost: the price catalog as data (every row with a source and a date), lookup, billing (money over time, idle), the run's outlook and estimates."""
from __future__ import annotations

from .billing import cost_so_far
from .catalog import (
    Accelerator,
    Price,
    load_accelerators,
    load_catalog,
    lookup,
    onprem_price_per_hour,
    resolve_price_per_hour,
)
from .estimate import ASSUMPTIONS, Estimate, estimate, training_flops
from .meter import budget_fraction, budget_left, eta_seconds, projected_total, usd_per_million_tokens

__all__ = [
    "ASSUMPTIONS",
    "Accelerator",
    "Estimate",
    "Price",
    "budget_fraction",
    "budget_left",
    "cost_so_far",
    "estimate",
    "eta_seconds",
    "load_accelerators",
    "load_catalog",
    "lookup",
    "onprem_price_per_hour",
    "projected_total",
    "resolve_price_per_hour",
    "training_flops",
    "usd_per_million_tokens",
]
