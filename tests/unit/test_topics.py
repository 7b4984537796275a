"""Topic, group and tier names are built in one place and refuse names that would make bad topics."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.topics import (
    all_topics,
    cdc_topic,
    consumer_group,
    dlq_topic,
    is_valid_namespace_name,
    parse_duration,
    retry_topic,
    tier_label,
    validate_namespace_name,
    validate_tier,
    wal_topic,
)


def test_topic_names() -> None:
    assert wal_topic("orders") == "wal.orders"
    assert retry_topic("orders", "10s") == "wal.orders.retry.10s"
    assert dlq_topic("orders") == "wal.orders.dlq"
    assert cdc_topic("orders") == "wal.orders.cdc"
    assert consumer_group("orders") == "walstream.orders"


def test_all_topics_lists_log_tiers_dlq_and_cdc_in_order() -> None:
    assert all_topics("orders", ["1s", "1m"]) == (
        "wal.orders",
        "wal.orders.retry.1s",
        "wal.orders.retry.1m",
        "wal.orders.dlq",
        "wal.orders.cdc",
    )
    assert all_topics("orders", []) == ("wal.orders", "wal.orders.dlq", "wal.orders.cdc")


def test_all_topics_refuses_a_repeated_tier() -> None:
    with pytest.raises(ValueError, match="repeat"):
        all_topics("orders", ["1s", "1s"])


@pytest.mark.parametrize("name", ["orders", "a", "user-profiles_v2", "x" * 100, "a1"])
def test_valid_namespace_names(name: str) -> None:
    assert validate_namespace_name(name) == name
    assert is_valid_namespace_name(name)


@pytest.mark.parametrize("name", ["", "Orders", "1orders", "-orders", "_x", "or.ders", "or ders", "x" * 101, "ordérs"])
def test_invalid_namespace_names(name: str) -> None:
    assert not is_valid_namespace_name(name)
    with pytest.raises(ValueError, match="namespace name"):
        validate_namespace_name(name)
    with pytest.raises(ValueError):
        wal_topic(name)
    with pytest.raises(ValueError):
        consumer_group(name)


@pytest.mark.parametrize(
    ("text", "ms"),
    [("500ms", 500), ("1s", 1_000), ("10s", 10_000), ("1m", 60_000), ("10m", 600_000), ("1h", 3_600_000), ("0s", 0)],
)
def test_parse_duration(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize("text", ["", "10", "s", "1.5s", "-1s", "10 s", "1d", "10S", " 1s", "1s1m"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("ms", "label"),
    [
        (500, "500ms"),
        (1_000, "1s"),
        (10_000, "10s"),
        (60_000, "1m"),
        (90_000, "90s"),
        (3_600_000, "1h"),
        (1_500, "1500ms"),
    ],
)
def test_tier_label(ms: int, label: str) -> None:
    assert tier_label(ms) == label


@given(st.integers(min_value=0, max_value=10**12))
def test_tier_label_and_parse_duration_are_inverse(ms: int) -> None:
    assert parse_duration(tier_label(ms)) == ms


@pytest.mark.parametrize("ms", [-1, 1.5, True])
def test_tier_label_refuses(ms: object) -> None:
    with pytest.raises(ValueError):
        tier_label(ms)  # type: ignore[arg-type]


def test_retry_topic_wants_a_canonical_positive_tier() -> None:
    assert validate_tier("1m") == "1m"
    with pytest.raises(ValueError, match="'1m'"):
        retry_topic("orders", "60s")
    with pytest.raises(ValueError, match="positive"):
        retry_topic("orders", "0s")
    with pytest.raises(ValueError, match="duration"):
        retry_topic("orders", "soon")
