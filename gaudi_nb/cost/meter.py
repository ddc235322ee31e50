"""A run's cost outlook: $ per million tokens, ETA, projection and budget; an unknown input (None) gives an unknown
answer, never 0. What a run has spent is billing's (cost_so_far: the agent's meter)."""
from __future__ import annotations

from typing import Optional

from .billing import cost_so_far


def usd_per_million_tokens(price_per_hour: Optional[float], nodes: int, tokens_per_second: Optional[float]) -> Optional[float]:
    """Dollars per million training tokens at a steady throughput (the caller leaves warmup out:
    graph compilation makes the first steps slow and would inflate this)."""
    if price_per_hour is None or not tokens_per_second or tokens_per_second <= 0:
        return None
    usd_per_second = cost_so_far(1.0, price_per_hour, nodes) or 0.0
    return usd_per_second / tokens_per_second * 1_000_000


def eta_seconds(elapsed_s: float, steps_done: int, max_steps: Optional[int]) -> Optional[float]:
    """Seconds left if the remaining steps go at the average pace so far."""
    if not max_steps or steps_done <= 0:
        return None
    return max(0, max_steps - steps_done) * elapsed_s / steps_done


def projected_total(cost_so_far_usd: Optional[float], elapsed_s: float, steps_done: int, max_steps: Optional[int]) -> Optional[float]:
    """Dollars the whole run will cost: spending continues at the rate so far until max_steps."""
    eta = eta_seconds(elapsed_s, steps_done, max_steps)
    if cost_so_far_usd is None or eta is None or elapsed_s <= 0:
        return None
    return cost_so_far_usd + cost_so_far_usd / elapsed_s * eta


def budget_left(budget_usd: Optional[float], spent_usd: Optional[float]) -> Optional[float]:
    """Dollars left (negative once over budget); None without a budget or a known spend."""
    if budget_usd is None or spent_usd is None:
        return None
    return budget_usd - spent_usd


def budget_fraction(budget_usd: Optional[float], spent_usd: Optional[float]) -> Optional[float]:
    """Share of the budget spent (1.0 = all of it); None without a positive budget or a known spend."""
    if budget_usd is None or spent_usd is None or budget_usd <= 0:
        return None
    return spent_usd / budget_usd


__all__ = ["budget_fraction", "budget_left", "eta_seconds", "projected_total", "usd_per_million_tokens"]
