"""Supervision: a crashed agent or runner makes the process unhealthy at once and exits after a grace period."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

#: The exit code of a worker that stopped itself because an outcome could not be made durable.
EXIT_NOT_DURABLE = 70


def exit_now() -> None:
    """Leave at once, acknowledging nothing more: what was not acknowledged is read again after the restart."""
    sys.stderr.flush()
    os._exit(EXIT_NOT_DURABLE)


class Supervisor:
    """A crashed agent never acks again and must not look alive. ``fail_fast`` reports it at once (``on_crash``,
    which the health check reads), then exits after ``grace_s`` (long enough for a probe or a person to see
    why), without acknowledging anything."""

    def __init__(
        self,
        grace_s: float,
        on_crash: Callable[[str, BaseException], None],
        exit: Callable[[], None] = exit_now,
    ) -> None:
        self._grace_s = grace_s
        self._on_crash = on_crash
        self._exit = exit
        self._crashed = threading.Event()

    @property
    def crashed(self) -> bool:
        return self._crashed.is_set()

    def fail_fast(self, exc: BaseException, where: str = "an agent") -> None:
        if self._crashed.is_set():
            return
        self._crashed.set()
        self._on_crash(where, exc)
        log.critical(
            "%s crashed: %s: %s; exiting in %.0fs", where, type(exc).__name__, exc, self._grace_s, exc_info=exc
        )
        timer = threading.Timer(self._grace_s, self._exit)
        timer.start()
