"""How money and durations read in every door and view (CLI, magics, panel, dashboard, JupyterLab): one rule each,
so the same value prints the same text everywhere; an unknown value reads "unknown", never $0."""
from __future__ import annotations

from typing import Optional

UNKNOWN = "unknown"


def money(usd: Optional[float]) -> str:
    """Dollars: cents from $1 up ("$1,234.56") and for nothing ("$0.00"), four decimals in between ("$0.0123": a
    short run's spend is cents)."""
    if usd is None:
        return UNKNOWN
    sign, value = ("-" if usd < 0 else ""), abs(float(usd))
    return f"{sign}${value:,.4f}" if 0 < value < 1 else f"{sign}${value:,.2f}"


def rate(usd_per_hour: Optional[float]) -> str:
    """Dollars per hour, as money() writes the dollars: "$13.11/h"."""
    return UNKNOWN if usd_per_hour is None else f"{money(usd_per_hour)}/h"


def duration(seconds: Optional[float]) -> str:
    """A wall-clock span as a clock reads: "4:05", "1:02:03"."""
    if seconds is None:
        return UNKNOWN
    whole = int(round(max(0.0, float(seconds))))
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


__all__ = ["UNKNOWN", "duration", "money", "rate"]
