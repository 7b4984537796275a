"""Drift decisions (which target holds a key wrongly, and how) and the log's retention setting."""

from __future__ import annotations

import pytest

from streams.core.drift import Drift, Kind, LogVersion, Pair, Tally, compare, one_sided, too_young
from streams.namespaces import NamespaceError, parse_namespace
from streams.topics import parse_retention

PAIR = Pair("primary", "search")


def test_equal_versions_are_in_sync_and_the_older_side_is_stale() -> None:
    assert compare(PAIR, "k", 5, 5) is None
    assert compare(PAIR, "k", 5, 3) == Drift("search", Kind.STALE, "k", 3, 5)
    assert compare(PAIR, "k", 3, 5) == Drift("primary", Kind.STALE, "k", 3, 5)


def test_the_log_decides_which_side_of_a_one_sided_key_is_wrong() -> None:
    upsert, delete = LogVersion(9, deleted=False), LogVersion(9, deleted=True)
    # Only the primary store holds it.
    assert one_sided(PAIR, "k", "primary", 9, upsert) == Drift("search", Kind.MISSING, "k", None, 9)
    assert one_sided(PAIR, "k", "primary", 5, delete) == Drift("primary", Kind.EXTRA, "k", 5, None)
    assert one_sided(PAIR, "k", "primary", 5, None) == Drift("search", Kind.MISSING, "k", None, 5)
    # Only the index holds it.
    assert one_sided(PAIR, "k", "search", 9, upsert) == Drift("primary", Kind.MISSING, "k", None, 9)
    assert one_sided(PAIR, "k", "search", 5, delete) == Drift("search", Kind.EXTRA, "k", 5, None)
    assert one_sided(PAIR, "k", "search", 5, None) == Drift("search", Kind.EXTRA, "k", 5, None)


def test_young_keys_wait_for_the_grace_window() -> None:
    assert too_young((None, 1_000_000), now_us=1_500_000, grace_us=1_000_000)
    assert not too_young((400_000, None), now_us=1_500_000, grace_us=1_000_000)
    assert not too_young((None, None), now_us=1_500_000, grace_us=1_000_000)


def test_the_tally_counts_everything_and_keeps_a_few_examples() -> None:
    tally = Tally(("primary", "search"), examples=2)
    for i in range(5):
        tally.add(Drift("search", Kind.MISSING, f"k{i}", None, i))
    report = tally.to_json()
    assert report["search"]["missing"]["count"] == 5
    assert [e["key"] for e in report["search"]["missing"]["examples"]] == ["k0", "k1"]
    assert report["primary"]["stale"] == {"count": 0, "examples": []}
    assert not tally.clean and Tally(("primary",)).clean


def test_retention_is_a_duration_of_at_least_an_hour_or_forever() -> None:
    assert parse_retention("7d") == 7 * 86_400_000
    assert parse_retention("36h") == 36 * 3_600_000
    assert parse_retention("forever") == -1
    for bad in ("10m", "7 days", "", "1w"):
        with pytest.raises(ValueError):
            parse_retention(bad)


def test_a_namespace_has_a_week_of_retention_unless_it_says_otherwise() -> None:
    doc = {"name": "r", "targets": {"out": {"type": "kafka", "topic": "out"}}}
    assert parse_namespace(doc).retention_ms() == 7 * 86_400_000
    assert parse_namespace({**doc, "retention": "2d"}).retention_ms() == 2 * 86_400_000
    with pytest.raises(NamespaceError, match="retention"):
        parse_namespace({**doc, "retention": "5m"})
