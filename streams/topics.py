"""Pure functions that name a namespace's topics and consumer group, and parse retry-tier durations."""

from __future__ import annotations

import re
from collections.abc import Iterable

_NAMESPACE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,99}")
_DURATION = re.compile(r"(?P<amount>[0-9]+)(?P<unit>ms|s|m|h)")
_UNIT_MS: dict[str, int] = {"h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}


def validate_namespace_name(name: str) -> str:
    """Return ``name`` if it is a valid namespace name, else raise ValueError saying why.

    1 to 100 characters: lowercase letters, digits, '-' and '_', starting with a letter. This keeps every topic
    name derived from it legal for Kafka and readable.
    """
    if not isinstance(name, str) or _NAMESPACE_NAME.fullmatch(name) is None:
        raise ValueError(
            f"namespace name {name!r} must be 1 to 100 characters of lowercase letters, digits, '-' or '_', "
            "starting with a letter"
        )
    return name


def is_valid_namespace_name(name: str) -> bool:
    """True when ``name`` satisfies :func:`validate_namespace_name`."""
    return isinstance(name, str) and _NAMESPACE_NAME.fullmatch(name) is not None


def parse_duration(text: str) -> int:
    """Milliseconds in a duration such as ``500ms``, ``10s``, ``1m`` or ``1h`` (a whole number and one unit)."""
    match = _DURATION.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"duration {text!r} must be a whole number followed by ms, s, m or h, for example 10s")
    return int(match["amount"]) * _UNIT_MS[match["unit"]]


_RETENTION = re.compile(r"(?P<amount>[0-9]+)(?P<unit>ms|s|m|h|d)")
#: The log's retention when a namespace does not set one: a week, long enough to replay a weekend's incident.
DEFAULT_RETENTION = "7d"


def parse_retention(text: str) -> int:
    """Milliseconds of a log retention such as ``36h`` or ``7d`` (at least one hour), or -1 for ``forever``."""
    if text == "forever":
        return -1
    match = _RETENTION.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"retention {text!r} must be a whole number followed by ms, s, m, h or d (7d), or forever")
    ms = int(match["amount"]) * {**_UNIT_MS, "d": 86_400_000}[match["unit"]]
    if ms < 3_600_000:
        raise ValueError(f"retention {text!r} is shorter than an hour: the log could not be replayed")
    return ms


def tier_label(ms: int) -> str:
    """The canonical label of a duration: the largest unit that divides it exactly (60000 -> ``1m``)."""
    if isinstance(ms, bool) or not isinstance(ms, int) or ms < 0:
        raise ValueError(f"duration {ms!r} must be a non-negative whole number of milliseconds")
    if ms == 0:
        return "0ms"
    for unit, size in _UNIT_MS.items():
        if ms % size == 0:
            return f"{ms // size}{unit}"
    raise AssertionError("unreachable: every whole number of milliseconds has a label")


def validate_tier(tier: str) -> str:
    """Return ``tier`` if it is a canonical, positive tier label; ``60s`` is refused in favour of ``1m``.

    One duration must map to one topic name, or two workers could consume different topics for the same tier.
    """
    ms = parse_duration(tier)
    if ms <= 0:
        raise ValueError(f"retry tier {tier!r} must be a positive duration")
    canonical = tier_label(ms)
    if canonical != tier:
        raise ValueError(f"retry tier {tier!r} is not in canonical form; write {canonical!r}")
    return tier


def wal_topic(namespace: str) -> str:
    """The namespace's log: ``wal.<ns>``."""
    return f"wal.{validate_namespace_name(namespace)}"


def region_logs(namespace: str, regions: Iterable[str], local: str) -> tuple[str, ...]:
    """The logs a replicated namespace's workers in region ``local`` consume: their own ``wal.<ns>``, then each
    other region's as MirrorMaker 2's default policy names it in ``local``'s Kafka (``east.wal.<ns>``)."""
    log = wal_topic(namespace)
    return (log, *(f"{region}.{log}" for region in regions if region != local))


def origin_region(namespace: str, topic: str, local: str) -> str:
    """The region whose log ``topic`` is, read in region ``local``: ``wal.<ns>`` is local's, ``west.wal.<ns>``
    west's."""
    log = wal_topic(namespace)
    if topic == log:
        return local
    if not topic.endswith("." + log):
        raise ValueError(f"{topic!r} is not a log of namespace {namespace!r}")
    return topic[: -len(log) - 1]


def retry_topic(namespace: str, tier: str) -> str:
    """A retry tier of the namespace: ``wal.<ns>.retry.<tier>``, for example ``wal.orders.retry.10s``."""
    return f"{wal_topic(namespace)}.retry.{validate_tier(tier)}"


def dlq_topic(namespace: str) -> str:
    """The namespace's dead-letter topic: ``wal.<ns>.dlq``."""
    return f"{wal_topic(namespace)}.dlq"


def cdc_topic(namespace: str) -> str:
    """The namespace's change events: ``wal.<ns>.cdc``."""
    return f"{wal_topic(namespace)}.cdc"


def consumer_group(namespace: str) -> str:
    """The consumer group of the namespace's workers: ``walstream.<ns>``."""
    return f"walstream.{validate_namespace_name(namespace)}"


def all_topics(namespace: str, tiers: Iterable[str]) -> tuple[str, ...]:
    """Every topic a namespace needs: the log, one per retry tier (in the given order), the DLQ and the CDC topic."""
    retries = tuple(retry_topic(namespace, tier) for tier in tiers)
    if len(set(retries)) != len(retries):
        raise ValueError(f"retry tiers of namespace {namespace!r} repeat a tier")
    return (wal_topic(namespace), *retries, dlq_topic(namespace), cdc_topic(namespace))


def sqs_queue(namespace: str) -> str:
    """The queue of a namespace with ``backend: sqs``: ``wal-<ns>`` (queue names take no dots)."""
    return f"wal-{validate_namespace_name(namespace)}"


def sqs_dlq_queue(namespace: str) -> str:
    """The dead-letter queue of an SQS namespace: ``wal-<ns>-dlq``."""
    return f"{sqs_queue(namespace)}-dlq"
