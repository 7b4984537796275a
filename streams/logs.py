"""JSON log lines: one object per record, with the namespace, topic, partition, offset and entry id when known."""

from __future__ import annotations

import json
import logging
import time
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


def logging_config(level: str = "INFO", json_lines: bool = True) -> dict[str, Any]:
    """A dictConfig for the worker and the API: JSON to stderr, chatty libraries turned down."""
    formatter = {"()": JsonFormatter} if json_lines else {"format": "[%(asctime)s] %(levelname)s %(name)s: %(message)s"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "main", "stream": "ext://sys.stderr"}},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            "elastic_transport": {"level": "WARNING"},
            "elasticsearch": {"level": "WARNING"},
            "cassandra": {"level": "WARNING"},
            "aiokafka": {"level": "WARNING"},
            "faust": {"level": "WARNING"},
            "mode": {"level": "WARNING"},
        },
    }
