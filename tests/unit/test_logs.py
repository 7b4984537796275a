"""Log lines: JSON objects, and repeating third-party lines held to one per kind and interval, never silenced."""

from __future__ import annotations

import json
import logging

from streams.logs import LIBRDKAFKA, JsonFormatter, Quiet


def _record(
    msg: str,
    *args: object,
    level: int = logging.ERROR,
    exc: BaseException | None = None,
    name: str = "cassandra.cluster",
) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord(name, level, __file__, 1, msg, args, exc_info)


def test_a_per_attempt_error_passes_once_per_interval_as_a_warning() -> None:
    clock = [100.0]
    quiet = Quiet(every_s=30, clock=lambda: clock[0])
    first = _record("Error preparing query for host %s:", "127.0.0.1", exc=ConnectionError("refused"))
    assert quiet.filter(first)
    assert first.levelno == logging.WARNING and first.exc_info is None
    assert first.getMessage() == "Error preparing query for host 127.0.0.1: ConnectionError: refused"
    held = [quiet.filter(_record("Error preparing query for host %s:", f"10.0.0.{i}")) for i in range(50)]
    assert not any(held)
    clock[0] = 131.0
    later = _record("Error preparing query for host %s:", "127.0.0.1")
    assert quiet.filter(later)
    assert "(50 more like it in the last 31s)" in later.getMessage()


def test_other_third_party_errors_keep_their_level_but_are_rate_limited_per_kind() -> None:
    clock = [0.0]
    quiet = Quiet(every_s=30, clock=lambda: clock[0])
    other = _record("Host %s is down", "a")
    assert quiet.filter(other) and other.levelno == logging.ERROR
    assert not quiet.filter(_record("Host %s is down", "b"))
    assert quiet.filter(_record("Something else broke"))  # another kind passes


def test_walstream_own_lines_are_never_held() -> None:
    quiet = Quiet(every_s=30, clock=lambda: 0.0)
    lines = [_record("agent crashed", name="streams.worker.supervisor") for _ in range(5)]
    assert all(quiet.filter(r) for r in lines) and all(r.levelno == logging.ERROR for r in lines)


def test_librdkafka_lines_are_held_per_facility_and_lowered() -> None:
    quiet = Quiet(every_s=30, clock=lambda: 0.0)
    fail = _record("%s [%s] %s", "FAIL", "rdkafka#producer-1", "Connection refused", name=LIBRDKAFKA)
    assert quiet.filter(fail) and fail.levelno == logging.WARNING
    assert not quiet.filter(_record("%s [%s] %s", "FAIL", "rdkafka#consumer-2", "refused", name=LIBRDKAFKA))
    assert quiet.filter(_record("%s [%s] %s", "ERROR", "rdkafka#consumer-2", "all brokers down", name=LIBRDKAFKA))


def test_every_line_is_one_json_object() -> None:
    record = _record("target %s is down", "search", level=logging.WARNING)
    record.namespace = "orders"
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "warning" and line["message"] == "target search is down" and line["namespace"] == "orders"
