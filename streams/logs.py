"""JSON log lines: one object per record, with the namespace, topic, partition, offset and entry id when known."""

from __future__ import annotations

import json
import logging
import threading
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


#: Messages third-party clients write once per failed attempt while a dependency is down. They say nothing a
#: person must act on (``Dependencies`` tells the outage itself), so they are lowered to WARNING.
PER_ATTEMPT = (
    "Error preparing query",  # cassandra driver, per statement while a node restarts
    "Error attempting to reconnect",
    "Unable connect to node",  # aiokafka, per connection attempt
    "Unable to update metadata",
    "Unable to request metadata",
    "Failed fetch messages",
    "Group Coordinator Request failed",
    "Heartbeat session expired",
    "Heartbeat send request failed",
    "Error sending",  # aiokafka: "Error sending <request> to node <id> [...] -- marking coordinator dead"
    "Heartbeat failed",
    "Marking the coordinator dead",
    "Got error produce response",
)

#: Loggers that are walstream's own: never rate-limited.
OWN_LOGGERS = ("streams", "connectors", "bench", "tests", "__main__")

#: The logger librdkafka's lines go to (see ``connectors.kafka.config``); its messages are ``fac [client] text``.
LIBRDKAFKA = "librdkafka"


class Quiet(logging.Filter):
    """On the handler: third-party loggers that write a line per failed attempt while a dependency is down are
    held to one line per kind per ``every_s`` seconds, saying how many like it were held back since. A kind is
    the logger and its message template (and for librdkafka, the facility). Per-attempt messages
    (``PER_ATTEMPT``, and librdkafka's errors) are lowered to WARNING, without their traceback. walstream's own
    lines pass untouched; nothing is silenced entirely."""

    def __init__(
        self,
        every_s: float = 30.0,
        per_attempt: tuple[str, ...] = PER_ATTEMPT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._clock = clock
        self._every_s = every_s
        self._per_attempt = per_attempt
        self._last: dict[tuple[str, str, str], float] = {}
        self._held_back: dict[tuple[str, str, str], int] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith(OWN_LOGGERS) or not isinstance(record.msg, str):
            return True
        librdkafka = record.name == LIBRDKAFKA
        facility = str(record.args[0]) if librdkafka and isinstance(record.args, tuple) and record.args else ""
        key = (record.name, record.msg, facility)
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._every_s:
                self._held_back[key] = self._held_back.get(key, 0) + 1
                return False
            held_back = self._held_back.pop(key, 0)
            self._last[key] = now
            if len(self._last) > 10_000:  # bounded: message templates are few, but never trust that
                self._last = {key: now}
        lower = record.levelno > logging.WARNING and (librdkafka or record.msg.startswith(self._per_attempt))
        if lower or held_back:
            cause = record.exc_info[1] if record.exc_info else None
            message = record.getMessage()
            if lower:
                record.levelno, record.levelname = logging.WARNING, "WARNING"
                record.exc_info = record.exc_text = None
                message += f" {type(cause).__name__}: {cause}" if cause is not None else ""
            if held_back and last is not None:
                message += f" ({held_back} more like it in the last {now - last:.0f}s)"
            record.msg, record.args = message, ()
        return True


def logging_config(level: str = "INFO", json_lines: bool = True) -> dict[str, Any]:
    """A dictConfig for the worker and the API: JSON to stderr, chatty libraries turned down."""
    formatter = {"()": JsonFormatter} if json_lines else {"format": "[%(asctime)s] %(levelname)s %(name)s: %(message)s"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "main",
                "stream": "ext://sys.stderr",
                "filters": ["quiet"],
            }
        },
        # Clients that log per failed attempt while a dependency is down are held to a line per kind every 30 s;
        # the outage itself is told once (streams.core.dependencies).
        "filters": {"quiet": {"()": Quiet}},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            "elastic_transport": {"level": "WARNING"},
            "elasticsearch": {"level": "WARNING"},
            "cassandra": {"level": "WARNING"},
            LIBRDKAFKA: {"level": "WARNING"},
            "aiokafka": {"level": "WARNING"},
            "faust": {"level": "WARNING"},
            "mode": {"level": "WARNING"},
        },
    }
