"""JSON log lines: one object per record, with the namespace, topic, partition, offset and entry id when known."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

#: Context fields a record may carry (pass them with ``extra=``); each becomes a top-level key.
CONTEXT_FIELDS = ("namespace", "topic", "partition", "offset", "entry_id", "target", "tier")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class Repeats(logging.Filter):
    """For a third-party logger that writes a line per failed attempt while a dependency is down: its records
    whose message starts with one of ``prefixes`` are lowered to ``level`` without their traceback, and at most
    one of them passes per ``every_s`` seconds, saying how many were held back since. Never silenced entirely."""

    def __init__(
        self,
        prefixes: tuple[str, ...],
        every_s: float = 30.0,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._clock = clock
        self._prefixes = prefixes
        self._every_s = every_s
        self._level = level
        self._last = float("-inf")
        self._held_back = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not isinstance(record.msg, str) or not record.msg.startswith(self._prefixes):
            return True
        now = self._clock()
        if now - self._last < self._every_s:
            self._held_back += 1
            return False
        record.levelno, record.levelname = self._level, logging.getLevelName(self._level)
        cause = record.exc_info[1] if record.exc_info else None
        record.exc_info = record.exc_text = None
        suffix = f" {type(cause).__name__}: {cause}" if cause is not None else ""
        if self._held_back:
            suffix += f" ({self._held_back} more like it in the last {now - self._last:.0f}s)"
        record.msg = record.getMessage() + suffix
        record.args = ()
        self._last, self._held_back = now, 0
        return True


def logging_config(level: str = "INFO", json_lines: bool = True) -> dict[str, Any]:
    """A dictConfig for the worker and the API: JSON to stderr, chatty libraries turned down."""
    formatter = {"()": JsonFormatter} if json_lines else {"format": "[%(asctime)s] %(levelname)s %(name)s: %(message)s"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "main", "stream": "ext://sys.stderr"}},
        "filters": {
            # The driver logs a traceback per statement it cannot prepare while Cassandra restarts; the outage
            # itself is told once by the sink's circuit breaker.
            "cassandra_prepare": {"()": Repeats, "prefixes": ("Error preparing query",)},
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            "elastic_transport": {"level": "WARNING"},
            "elasticsearch": {"level": "WARNING"},
            "cassandra": {"level": "WARNING"},
            "cassandra.cluster": {"level": "WARNING", "filters": ["cassandra_prepare"]},
            "aiokafka": {"level": "WARNING"},
            "faust": {"level": "WARNING"},
            "mode": {"level": "WARNING"},
        },
    }
