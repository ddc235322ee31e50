"""What the magics show: %gaudi_runs' table (RunList) and %gaudi_cost's HTML (the money now, the price catalog,
the provisioned machines, one run's cost, pre-run estimates). Money through the one formatter, billing's figures."""
from __future__ import annotations

import html
from typing import Any, Dict, List, Optional

from .. import api, formatting, runs_table


def _html_table(head: List[str], rows: List[List[str]], css_class: str) -> str:
    th = "".join(f'<th style="text-align:left">{html.escape(h)}</th>' for h in head)
    body = "".join("<tr>" + "".join(f'<td style="text-align:left">{html.escape(c)}</td>' for c in row) + "</tr>" for row in rows)
    return f'<table class="{css_class}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


class RunList(list):  # type: ignore[type-arg]
    """Run records that show as a table (HTML in a notebook, text elsewhere)."""

    HEAD = runs_table.HEAD

    def rows(self) -> List[List[str]]:
        return [runs_table.row_cells(runs_table.run_row(record)) for record in self]

    def _repr_html_(self) -> str:
        if not self:
            return "<i>no runs yet: start one with %gaudi_train</i>"
        return _html_table(self.HEAD, self.rows(), "gaudi-nb-runs")

    def __repr__(self) -> str:
        if not self:
            return "no runs yet: start one with %gaudi_train"
        rows = [self.HEAD] + self.rows()
        widths = [max(len(row[i]) for row in rows) for i in range(len(self.HEAD))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def catalog_html(defaults: Dict[str, Any]) -> str:
    from ..cost import catalog

    rows = [[p.provider, p.instance_type, p.region or "—", f"{p.accelerator_count}× {p.accelerator}", formatting.money(p.on_demand_per_hour), p.as_of, p.source] for p in catalog.load_catalog()]
    price, source = catalog.resolve_price_per_hour(defaults.get("price_per_hour"), defaults.get("instance_type"))
    session = (
        f"<p>this session: price {formatting.rate(price)} ({html.escape(source)}); "
        f"budget {formatting.money(defaults.get('budget_usd')) if defaults.get('budget_usd') is not None else 'none'}. "
        "Set them with <code>%config GaudiMagics.price_per_hour = 13.11</code> or <code>--price-per-hour</code>.</p>"
    )
    return session + _html_table(["provider", "instance type", "region", "accelerators", "on-demand $/h", "as of", "source"], rows, "gaudi-nb-catalog")


MONEY_RUNS_READ = 500  # the runs read for today's money (today's are among the newest), as the dashboard reads


def money_now(store: Any = None, now: Optional[float] = None) -> Dict[str, Any]:
    """What %gaudi_cost says of the money now, from billing as every view counts it: $/h now, today's and all billed
    dollars, and each provisioned machine (not terminated) with its spend so far and $/h now."""
    from ..cost import billing
    from ..store import RunStore

    store = store or RunStore()
    machines = store.list_nodes()
    summary = billing.money_now(store.list(limit=MONEY_RUNS_READ), machines, now)
    summary["machines"] = [r for r in billing.with_spend(machines, now) if r.get("provider") and r.get("state") != "terminated"]
    return summary


def money_now_html(summary: Optional[Dict[str, Any]] = None) -> str:
    s = summary or money_now()
    unknown = f"; {s['unknown_prices']} price(s) unknown (not counted as zero)" if s["unknown_prices"] else ""
    return (f"<p class=\"gaudi-nb-money-now\">now <b>{formatting.rate(s['usd_per_hour'])}</b> across {s['billed_machines']} billed machine(s) and "
            f"{s['active_runs']} active run(s){unknown}; today {formatting.money(s['today_usd'])}, in all {formatting.money(s['total_usd'])}.</p>")


def machines_html(summary: Optional[Dict[str, Any]] = None) -> str:
    """The provisioned machines that are not terminated and what each has cost so far (run or no run); '' when there are none."""
    records = (summary or money_now())["machines"]
    if not records:
        return ""
    rows = []
    for r in records:
        cost = r["cost"]
        rows.append([r["name"], f"{r['provider']} {r['instance_type']} {r['region']}", str(r.get("state")), formatting.rate(cost["price_per_hour"]),
                     formatting.rate(cost["usd_per_hour"]), formatting.money(cost["usd"]), f"{cost['hours']:.2f}"])
    unknown = [r["name"] for r in records if r["cost"]["usd"] is None]
    note = ""
    if unknown:
        from ..cost.catalog import user_prices_path

        note = f"<p>cost unknown for {html.escape(', '.join(unknown))}: set the instance type's price in <code>{html.escape(str(user_prices_path()))}</code></p>"
    table = _html_table(["machine", "where", "state", "price", "$/h now", "spent", "hours"], rows, "gaudi-nb-machines")
    return f"<p>provisioned machines (billed while they run, idle or not, until <code>gaudi-nb nodes down</code>):</p>{table}{note}"


def run_cost_html(record: Dict[str, Any]) -> str:
    c = record["cost"]
    rows = [
        ["spent", formatting.money(c.get("usd"))],
        ["price", f"{formatting.rate(c.get('price_per_hour'))} ({c.get('price_source') or 'unknown'})"],
        ["$ per 1M tokens", formatting.money(c.get("usd_per_million_tokens"))],
        ["projected", formatting.money(c.get("projected_usd"))],
        ["budget", formatting.money(c.get("budget_usd")) if c.get("budget_usd") is not None else "none"],
        ["budget left", formatting.money(c.get("budget_left_usd")) if c.get("budget_usd") is not None else "—"],
    ]
    return f"<b>{html.escape(record['run_id'])}</b> ({html.escape(record['status'])})" + _html_table(["", ""], rows, "gaudi-nb-run-cost")


def estimate_html(parameters: Optional[float], model: Optional[str], tokens: float, mfu: float) -> str:
    from ..cost.estimate import ASSUMPTIONS

    parameters, rows = api.estimate_cost(tokens, parameters=parameters, model=model, mfu=mfu)  # GaudiNbError: the magic says it in one line
    table = _html_table(
        ["instance type", "accelerators", "hours", "dollars", "$/h", "price as of"],
        [[r.instance_type, f"{r.accelerator_count}× {r.accelerator}", "unknown" if r.hours is None else f"{r.hours:,.1f}", formatting.money(r.usd), formatting.money(r.price_per_hour), r.as_of] for r in rows],
        "gaudi-nb-estimate",
    )
    return f"<p>{parameters:.3g} parameters × {tokens:.3g} tokens, MFU {mfu:.0%}</p>{table}<pre>{html.escape(ASSUMPTIONS)}</pre>"


__all__ = ["RunList", "catalog_html", "money_now", "money_now_html", "machines_html", "run_cost_html", "estimate_html"]
