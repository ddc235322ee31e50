"""How money, durations and a run's bad event lines read in every door and view (CLI, magics, panel, dashboard, JupyterLab): one rule each,
so the same value prints the same text everywhere; an unknown value reads "unknown", never $0."""
from __future__ import annotations

from typing import Any, Dict, Optional

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


def bad_lines(record: Dict[str, Any]) -> Optional[str]:
    """The warning every view shows on a run whose events.jsonl has lines that break the event contract
    (kept aside: the run and its other events go on); None when it has none."""
    bad = record.get("bad_lines")
    if not bad:
        return None
    first = bad.get("first") or {}
    many = f"{bad['count']} lines of events.jsonl broke the event contract and were" if bad.get("count", 1) > 1 else "1 line of events.jsonl broke the event contract and was"
    return f"{many} kept aside; the first, at byte {first.get('offset')}: {first.get('error')}"
