"""Pre-run estimates: training hours and dollars per catalog instance from 6 × parameters × tokens."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

from .catalog import Accelerator, Price, load_accelerators, load_catalog

ASSUMPTIONS = """\
How these estimates are made:
- Training compute is 6 × parameters × tokens FLOPs (forward + backward of a dense
  transformer; attention's extra FLOPs at long sequence lengths are left out).
- Each accelerator sustains MFU × its dense peak BF16 TFLOP/s (vendor figures, no sparsity);
  MFU (model FLOPs utilization) is the share of peak a real run reaches, 0.35 unless you say.
- All accelerators of one node work on the job; one node per row (no multi-node scaling loss).
- Dollars are hours × the catalog's on-demand price per node-hour (not spot, not reserved,
  not capacity blocks); on-prem rows are amortised purchase plus power.
- No stalls: data loading, checkpointing, evaluation, graph compilation (warmup) and
  restarts are not counted.
- An unknown price or peak TFLOP/s gives an unknown estimate, never zero."""


@dataclass(frozen=True)
class Estimate:
    provider: str
    instance_type: str
    region: str
    accelerator: str
    accelerator_count: int
    peak_tflops_per_accelerator: Optional[float]
    mfu: float
    flops: float
    hours: Optional[float]
    price_per_hour: Optional[float]
    usd: Optional[float]
    price_source: str
    as_of: str


def training_flops(parameters: float, tokens: float) -> float:
    return 6.0 * parameters * tokens


def estimate(
    parameters: float,
    tokens: float,
    mfu: float = 0.35,
    catalog: Optional[List[Price]] = None,
    accelerators: Optional[Dict[str, Accelerator]] = None,
) -> List[Estimate]:
    """One Estimate per catalog row, cheapest known first, unknown dollars last."""
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {mfu}: it is the share of peak FLOP/s a run reaches")
    rows = catalog if catalog is not None else load_catalog()
    table = accelerators if accelerators is not None else load_accelerators()
    flops = training_flops(parameters, tokens)
    estimates = []
    for price in rows:
        spec = table.get(price.accelerator.lower())
        peak = spec.peak_bf16_tflops if spec else None
        hours = None
        if peak and price.accelerator_count > 0:
            flops_per_second = peak * 1e12 * price.accelerator_count * mfu
            hours = flops / flops_per_second / 3600.0
        usd = hours * price.on_demand_per_hour if hours is not None and price.on_demand_per_hour is not None else None
        estimates.append(
            Estimate(
                provider=price.provider,
                instance_type=price.instance_type,
                region=price.region,
                accelerator=price.accelerator,
                accelerator_count=price.accelerator_count,
                peak_tflops_per_accelerator=peak,
                mfu=mfu,
                flops=flops,
                hours=hours,
                price_per_hour=price.on_demand_per_hour,
                usd=usd,
                price_source=price.source,
                as_of=price.as_of,
            )
        )
    # Unknown dollars sort last; the 0.0 beside them only orders, it is never shown.
    return sorted(estimates, key=lambda e: (e.usd is None, e.usd or 0.0, e.hours is None, e.hours or 0.0))


__all__ = ["ASSUMPTIONS", "Estimate", "estimate", "training_flops"]
