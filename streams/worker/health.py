"""A worker's health and readiness, from its liveness monitor, its retry thread and its flood guards."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from streams.core.flood import FloodGuard
from streams.worker.liveness import Liveness


class WorkerHealth:
    """``health``: alive (no crashed agent, no stalled log, the retry thread runs). ``readiness``: alive and
    no namespace held by its DLQ flood guard."""

    def __init__(
        self,
        role: str,
        liveness: Liveness,
        guards: Mapping[str, FloodGuard],
        retry_alive: Callable[[], bool] = lambda: True,
    ) -> None:
        self._role = role
        self._liveness = liveness
        self._guards = dict(guards)
        self._retry_alive = retry_alive

    def health(self) -> tuple[bool, dict[str, object]]:
        ok, details = self._liveness.status()
        retry_ok = self._retry_alive()
        return ok and retry_ok, {"role": self._role, "retry_thread": retry_ok, **details}

    def readiness(self) -> tuple[bool, dict[str, object]]:
        ok, details = self.health()
        held = self.held()
        return ok and not held, {**details, "paused_by_flood_guard": held}

    def held(self) -> list[str]:
        """The namespaces their flood guard holds."""
        return [name for name, guard in self._guards.items() if guard.holding]
