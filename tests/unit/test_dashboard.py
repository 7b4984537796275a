"""The chart's Grafana dashboard: it loads, and every metric it queries is in the closed list of streams/metrics.py,
queried as its type allows (counters under rate or increase, histograms through histogram_quantile over their
buckets, gauges as they are). The chart's rendering of it is checked in tests/helm/test_chart.py."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "helm" / "walstream" / "dashboards" / "walstream.json"
METRIC = re.compile(r"\bwalstream_[a-z0-9_]+")
#: A label selector and a range, which sit between a metric's name and what it is given to.
SELECTOR = re.compile(r"\{[^{}]*\}")


def without_selectors(expr: str) -> str:
    """``rate(name{a=~"$b", ${c}="d"}[5m])`` -> ``rate(name[5m])`` (Grafana's ``${var}`` nests braces)."""
    while True:
        bare = SELECTOR.sub("", expr)
        if bare == expr:
            return bare
        expr = bare


def exported() -> dict[str, tuple[str, str]]:
    """Every series name the process exports -> (its metric's type, the metric's base name)."""
    names: dict[str, tuple[str, str]] = {}
    for metric in Metrics().registry.collect():
        if metric.type == "counter":
            names[metric.name + "_total"] = ("counter", metric.name)
        elif metric.type == "histogram":
            for suffix in ("_bucket", "_sum", "_count"):
                names[metric.name + suffix] = ("histogram", metric.name)
        else:
            names[metric.name] = (metric.type, metric.name)
    return names


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in doc["panels"]:
        yield panel
        yield from panel.get("panels", ())  # a collapsed row keeps its panels inside


def queries(doc: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target."""
    for panel in panels(doc):
        for target in panel.get("targets", ()):
            yield f"panel {panel['title']!r} target {target['refId']}", target["expr"]


def test_the_dashboard_loads_with_its_variables_and_panels() -> None:
    doc = dashboard()
    assert doc["uid"] == "walstream-overview" and doc["title"] == "walstream"
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert set(variables) == {"datasource", "ns_label", "namespace"}
    assert [o["value"] for o in variables["ns_label"]["options"]] == ["exported_namespace", "namespace"]
    assert METRIC.findall(variables["namespace"]["definition"])[0] in exported()
    ids = [p["id"] for p in panels(doc)]
    assert len(ids) == len(set(ids))
    for panel in panels(doc):
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}"
            assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24


def test_every_metric_queried_is_in_the_closed_list_and_queried_as_its_type_allows() -> None:
    known = exported()
    problems = []
    for where, expr in queries(dashboard()):
        bare = without_selectors(expr)
        used = METRIC.findall(bare)
        assert used, f"{where} queries no walstream metric: {expr}"
        for name in used:
            if name not in known:
                problems.append(f"{where}: {name} is not in streams/metrics.py")
                continue
            kind, _base = known[name]
            windowed = re.search(rf"\b(rate|increase)\({name}\[", bare) is not None
            if kind == "counter" and not windowed:
                problems.append(f"{where}: the counter {name} outside rate() or increase()")
            elif kind == "histogram":
                if not name.endswith("_bucket"):
                    problems.append(f"{where}: the histogram series {name} instead of its buckets")
                elif not (windowed and "histogram_quantile(" in bare and re.search(r"by \([^)]*\ble\b", bare)):
                    problems.append(f"{where}: {name} not through histogram_quantile over rate() by le")
            elif kind == "gauge" and re.search(rf"\b(rate|increase|irate)\({name}\b", bare):
                problems.append(f"{where}: the gauge {name} under a counter function")
    assert problems == []


def test_the_panels_cover_what_an_operator_asks_first() -> None:
    """Throughput per namespace and target, end-to-end latency, lag, retries per tier, dead letters per class,
    change events, sink latency, the flood guard, dependencies, and the API's calls by code and latency."""
    queried = {METRIC.findall(expr)[0] for _where, expr in queries(dashboard())}
    wanted = {
        "walstream_entries_total",
        "walstream_end_to_end_seconds_bucket",
        "walstream_consumer_lag",
        "walstream_retries_total",
        "walstream_dlq_total",
        "walstream_cdc_total",
        "walstream_sink_seconds_bucket",
        "walstream_namespace_paused",
        "walstream_dependency_up",
        "walstream_api_calls_total",
        "walstream_api_call_seconds_bucket",
    }
    assert wanted <= queried, wanted - queried
    by_label = {expr for _where, expr in queries(dashboard()) if "walstream_entries_total" in expr}
    assert any("target" in expr and "${ns_label}" in expr for expr in by_label)
    assert any("by (method, code)" in expr for _where, expr in queries(dashboard()))
    assert any("by (${ns_label}, error_class)" in expr for _where, expr in queries(dashboard()))
    assert any("by (${ns_label}, tier)" in expr for _where, expr in queries(dashboard()))


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("sum(walstream_entries_total)", "outside rate() or increase()"),
        ("histogram_quantile(0.9, rate(walstream_sink_seconds_sum[5m]))", "instead of its buckets"),
        ("rate(walstream_sink_seconds_bucket[5m])", "not through histogram_quantile"),
        ("rate(walstream_consumer_lag[5m])", "under a counter function"),
        ("walstream_no_such_metric", "not in streams/metrics.py"),
    ],
)
def test_the_checks_catch_a_wrong_query(expr: str, problem: str, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = {"panels": [{"title": "wrong", "targets": [{"refId": "A", "expr": expr}]}]}
    monkeypatch.setattr(f"{__name__}.dashboard", lambda: wrong)
    with pytest.raises(AssertionError, match=re.escape(problem)):
        test_every_metric_queried_is_in_the_closed_list_and_queried_as_its_type_allows()
