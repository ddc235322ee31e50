"""Prometheus and Grafana (issue 11): the agent's /metrics during a real run, the scrape configuration, and a Grafana dashboard that uses only metrics that exist."""
from __future__ import annotations

import json
import re
import time
import urllib.request
from typing import Dict, List, Set

import yaml
from conftest import REPO, wait_for

from gaudi_nb.telemetry.prometheus import METRICS, metric_names

MONITORING = REPO / "infra" / "monitoring"
GRAFANA = MONITORING / "grafana" / "gaudi_nb.json"
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset", "inf", "nan"}


def promql_metrics(expr: str) -> Set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions, keywords, labels or numbers."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word, rest = match.group(0), expr[match.end():].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS or re.fullmatch(r"\d+e\d+", word):
            continue
        if match.start() > 0 and (expr[match.start() - 1].isdigit() or expr[match.start() - 1] == "."):
            continue  # the exponent of 1e6
        names.add(word)
    return names


def grafana_queries(dashboard: Dict) -> List[str]:
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        match = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query or "")
        queries.append(match.group(1) if match else query)
    return queries


def test_promql_metric_names_are_read_from_expressions():
    assert promql_metrics('sum by (type) (rate(gaudi_nb_events_total{run_id=~"$run_id"}[1m]))') == {"gaudi_nb_events_total"}
    assert promql_metrics("gaudi_nb_price_dollars_per_hour / (gaudi_nb_run_tokens_per_second * 3600) * 1e6") == {"gaudi_nb_price_dollars_per_hour", "gaudi_nb_run_tokens_per_second"}


def test_metric_names_follow_prometheus_conventions():
    names = metric_names()
    assert all(name.startswith("gaudi_nb_") for name in names)
    for name, kind, _, _ in METRICS:
        assert not name.endswith("_total"), f"{name}: prometheus_client adds _total to a counter"
        if kind == "counter":
            assert f"{name}_total" in names
    # units in the names, base units only
    assert "gaudi_nb_device_memory_used_bytes" in names and "gaudi_nb_device_power_watts" in names
    assert "gaudi_nb_run_cost_dollars" in names and "gaudi_nb_price_dollars_per_hour" in names and "gaudi_nb_run_step_seconds" in names
    assert "gaudi_nb_device_utilization_ratio" in names
    assert not [n for n in names if re.search(r"percent|_usd|_ms\b|_kb\b|_mb\b|_gb\b", n)]


def test_grafana_dashboard_parses_and_uses_only_metrics_that_exist():
    dashboard = json.loads(GRAFANA.read_text())
    assert dashboard["panels"] and dashboard["title"]
    exported = set(metric_names())
    used: Set[str] = set()
    for query in grafana_queries(dashboard):
        found = promql_metrics(query)
        assert found, f"no metric in {query!r}"
        unknown = found - exported
        assert not unknown, f"{query!r} uses {sorted(unknown)}, which /metrics does not carry"
        used |= found
    # the list: per-device utilization, memory, power; per-run tokens/s, loss, step; dollars and price per hour
    for name in ("gaudi_nb_device_utilization_ratio", "gaudi_nb_device_memory_used_bytes", "gaudi_nb_device_power_watts", "gaudi_nb_run_tokens_per_second",
                 "gaudi_nb_run_loss", "gaudi_nb_run_step", "gaudi_nb_run_cost_dollars", "gaudi_nb_price_dollars_per_hour"):
        assert name in used, f"the Grafana dashboard does not show {name}"


def test_prometheus_scrapes_the_agent_and_intels_exporter_on_its_port():
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = {name: [t for c in job["static_configs"] for t in c["targets"]] for name, job in jobs.items()}
    assert any(t.endswith(":9400") for t in targets["gaudi_nb"])  # the port gaudi-nb k8s render gives the agent
    assert any(t.endswith(":41611") for t in targets["gaudi_metric_exporter"])  # Intel's documented default
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in jobs.values())


def scrape(url: str) -> Dict[str, float]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("gaudi_nb_"):
            series, value = line.rsplit(" ", 1)
            values[series] = float(value)
    return values


def test_metrics_of_a_real_run_change_while_it_trains(script_runs):
    run = script_runs.train(devices=1, max_steps=100_000, warmup_steps=2, price_per_hour=3.6, budget_usd=50.0, step_s=0.1)
    moving = ("gaudi_nb_run_step", "gaudi_nb_run_cost_dollars", "gaudi_nb_run_elapsed_seconds", "gaudi_nb_run_tokens_total")
    try:
        deadline = time.time() + 120
        while run.record()["steps_completed"] < 3:
            assert time.time() < deadline and not run.done, run.record()
            time.sleep(0.3)
        port = run.events(types=["run_start"])[0]["metrics_port"]
        url = f"http://127.0.0.1:{port}/metrics"
        step_series = f'gaudi_nb_run_step{{node="local",run_id="{run.run_id}"}}'
        deadline = time.time() + 30
        while step_series not in (first := scrape(url)):  # the agent reads the stream once a second: it may be a tick behind
            assert time.time() < deadline, sorted(first)
            time.sleep(0.3)
        label = f'node="local",run_id="{run.run_id}"'

        def moved():  # a telemetry sample and a cost event a second, a step every 0.1 s
            now = scrape(url)
            return now if all(now.get(f"{name}{{{label}}}", 0) > first.get(f"{name}{{{label}}}", 0) for name in moving) else None

        second = wait_for(moved, timeout=60, poll_s=0.5, what="every run series on /metrics to move")
    finally:
        run.stop()
        run.wait(timeout=120)
    for name in moving:
        series = f"{name}{{{label}}}"
        assert series in first and series in second, (name, sorted(first))
        assert second[series] > first[series], f"{name} did not move: {first[series]} -> {second[series]}"
    assert first[f"gaudi_nb_price_dollars_per_hour{{{label}}}"] == 3.6
    assert first[f"gaudi_nb_run_budget_dollars{{{label}}}"] == 50.0
    assert any(s.startswith("gaudi_nb_run_loss{") for s in second) and any(s.startswith("gaudi_nb_run_tokens_per_second{") for s in second)
    devices = [s for s in second if s.startswith("gaudi_nb_device_utilization_ratio{")]
    assert devices and all(second[s] >= 0.0 for s in devices)  # a CPU rank on several cores can pass 1 (one core = 1)
    assert any(s.startswith("gaudi_nb_device_memory_used_bytes{") for s in second)
    assert set(re.sub(r"\{.*", "", s) for s in first) <= set(metric_names())
