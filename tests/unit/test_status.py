"""`walstream status` without a cluster: worker addresses, the JSON document, and the screen drawn from a look."""

from __future__ import annotations

import json
import re

import pytest
from rich.console import Console

from streams.config import ConfigError, load_settings, parse_addresses
from streams.tools.status import (
    Dlq,
    Lag,
    Look,
    NamespaceStatus,
    PartitionLag,
    Reason,
    Tier,
    WorkerReadiness,
    worker_url,
)
from streams.tools.status_view import duration, render

NOW = 1_800_000_000_000


def a_look(held: bool | None = False) -> Look:
    lag = Lag(
        "walstream.default",
        7,
        NOW - 134_000,
        (
            PartitionLag(0, 10, 15, 5, NOW - 134_000),
            PartitionLag(1, 4, 6, 2, NOW - 2_000),
            PartitionLag(2, None, 0, 0, None),
        ),
    )
    tiers = (
        Tier("1s", "wal.orders.retry.1s", None, 0, None),
        Tier("10s", "wal.orders.retry.10s", None, 4, NOW + 6_500),
    )
    dlq = Dlq(
        12,
        3,
        (Reason("fatal", "search: mapper_parsing_exception [qty]", 2), Reason("undecodable", "bad-framing", 1)),
        3,
    )
    ns = NamespaceStatus("orders", NOW, lag, tiers, dlq, 1520, held)
    down = ("cassandra",) if held else ()
    worker = WorkerReadiness("10.0.0.7:9100", True, held is not True, ("orders",) if held else (), None, down)
    return Look(NOW, (ns,), (worker,))


def test_worker_addresses_are_host_port_or_urls() -> None:
    assert parse_addresses(" a:1, http://b:9100/ ,") == ("a:1", "http://b:9100/")
    assert worker_url("a:1") == "http://a:1/readyz"
    assert worker_url("https://b:9100/") == "https://b:9100/readyz"
    for bad in ("nowhere", "a:0", "a:x", ":9100"):
        with pytest.raises(ValueError, match="must look like host:port"):
            parse_addresses(bad)
    settings = load_settings({"WALSTREAM_STATUS_WORKERS": "w1:9100,w2:9100"}, uid=1000)
    assert settings.runtime.status_workers == ("w1:9100", "w2:9100")
    with pytest.raises(ConfigError, match="WALSTREAM_STATUS_WORKERS"):
        load_settings({"WALSTREAM_STATUS_WORKERS": "w1"}, uid=1000)


def test_the_json_document_carries_ages_and_due_times_in_seconds() -> None:
    doc = json.loads(json.dumps(a_look().to_json()))  # as printed
    (ns,) = doc["namespaces"]
    assert ns["lag"]["age_s"] == 134.0
    assert ns["lag"]["partitions"][2] == {"partition": 2, "committed": None, "end": 0, "lag": 0, "oldest_ms": None}
    assert [t["next_due_in_s"] for t in ns["tiers"]] == [None, 6.5]
    assert ns["dlq"]["top_reasons"][0] == {
        "error_class": "fatal",
        "reason": "search: mapper_parsing_exception [qty]",
        "count": 2,
    }
    assert ns["flood_guard_held"] is False
    assert doc["workers"] == [
        {"address": "10.0.0.7:9100", "reached": True, "ready": True, "held": [], "error": None, "dependencies_down": []}
    ]


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (59.9, "59s"), (134, "2m 14s"), (3 * 3600 + 300, "3h 05m"),
                                               (2 * 86400 + 4 * 3600, "2d 04h"), (-3, "0s")])  # fmt: skip
def test_durations_read_at_a_glance(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def screen(found: Look) -> str:
    console = Console(width=100, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(render(found))
    return console.export_text()


def test_the_screen_shows_every_part_of_a_namespace() -> None:
    text = screen(a_look())
    assert "lag 7 entries, oldest written 2m 14s ago  (group walstream.default)" in text
    assert "flood guard: not holding" in text
    assert re.search(r"│ 10s +4  in 6s ", text)
    assert re.search(r"│ 0 +10 +15 +5  2m 14s ago ", text)
    assert "dead letters: 3 in the last hour, 12 retained" in text
    assert re.search(r"│ 2  fatal +search: mapper_parsing_exception \[qty\] ", text)  # not taken for markup
    assert "change events in the last minute: 1,520" in text
    assert "10.0.0.7:9100: ready" in text


def test_the_screen_says_when_the_flood_guard_holds_or_is_not_known() -> None:
    assert "flood guard: HOLDING the namespace" in screen(a_look(held=True))
    assert "10.0.0.7:9100: not ready, flood guard holds orders, cassandra down" in screen(a_look(held=True))
    assert "flood guard: unknown" in screen(a_look(held=None))
