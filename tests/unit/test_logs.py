"""Log lines: JSON objects, and a repeating third-party error lowered and rate-limited, never silenced."""

from __future__ import annotations

import json
import logging

from streams.logs import JsonFormatter, Repeats


def _record(msg: str, *args: object, level: int = logging.ERROR, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc is not None else None
    return logging.LogRecord("cassandra.cluster", level, __file__, 1, msg, args, exc_info)


def test_a_repeating_error_passes_once_per_interval_as_a_warning() -> None:
    clock = [100.0]
    repeats = Repeats(("Error preparing query",), every_s=30, clock=lambda: clock[0])
    first = _record("Error preparing query for host %s:", "127.0.0.1", exc=ConnectionError("refused"))
    assert repeats.filter(first)
    assert first.levelno == logging.WARNING and first.exc_info is None
    assert first.getMessage() == "Error preparing query for host 127.0.0.1: ConnectionError: refused"
    held = [repeats.filter(_record("Error preparing query:")) for _ in range(50)]
    assert not any(held)
    clock[0] = 131.0
    later = _record("Error preparing query:")
    assert repeats.filter(later)
    assert "(50 more like it in the last 31s)" in later.getMessage()
    other = _record("Host is down", level=logging.ERROR)
    assert repeats.filter(other) and other.levelno == logging.ERROR  # other messages are left alone


def test_every_line_is_one_json_object() -> None:
    record = _record("target %s is down", "search", level=logging.WARNING)
    record.namespace = "orders"
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "warning" and line["message"] == "target search is down" and line["namespace"] == "orders"
