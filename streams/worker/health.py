"""A worker's health and readiness, from its liveness monitor, its retry thread and its flood guards."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from streams.core.dependencies import Dependencies
from streams.core.flood import FloodGuard
from streams.worker.liveness import Liveness

#: Whether the fan-out runtime applies entries now, with details (see ``fanout_state``).
Applying = Callable[[], tuple[bool, dict[str, object]]]


class WorkerHealth:
    """``health``: alive (no crashed agent, no stalled log, the retry thread runs). ``readiness``: alive,
    applying (its partitions assigned and their idempotency state recovered, no rebalance under way), no
    namespace held by its DLQ flood guard, and every dependency answering. An outage makes a worker unready,
    never unhealthy: restarting it would not bring the dependency back."""

    def __init__(
        self,
        role: str,
        liveness: Liveness,
        guards: Mapping[str, FloodGuard],
        retry_alive: Callable[[], bool] = lambda: True,
        applying: Applying = lambda: (True, {}),
        dependencies: Dependencies | None = None,
    ) -> None:
        self._dependencies = dependencies
        self._role = role
        self._liveness = liveness
        self._guards = dict(guards)
        self._retry_alive = retry_alive
        self._applying = applying

    def health(self) -> tuple[bool, dict[str, object]]:
        ok, details = self._liveness.status()
        retry_ok = self._retry_alive()
        return ok and retry_ok, {"role": self._role, "retry_thread": retry_ok, **details}

    def readiness(self) -> tuple[bool, dict[str, object]]:
        ok, details = self.health()
        applying, state = self._applying()
        held = self.held()
        deps_up = self._dependencies is None or self._dependencies.all_up
        deps = self._dependencies.state() if self._dependencies is not None else {}
        ready = ok and applying and not held and deps_up
        return ready, {**details, **state, "paused_by_flood_guard": held, "dependencies": deps}

    def held(self) -> list[str]:
        """The namespaces their flood guard holds."""
        return [name for name, guard in self._guards.items() if guard.holding]


def fanout_state(app: Any) -> tuple[bool, dict[str, object]]:
    """Whether a Faust worker app applies entries: it has received its partitions (maybe none, when the group
    has more workers than partitions), recovered their idempotency state, and is not rebalancing."""
    started = getattr(app, "_consumer", None) is not None and app.rebalancing_count > 0
    recovered = started and app.tables.recovery.completed.is_set()
    rebalancing = bool(app.rebalancing)
    assigned = len(app._consumer.assignment()) if started else 0
    state: dict[str, object] = {
        "partitions_assigned": started,
        "table_recovered": recovered,
        "rebalancing": rebalancing,
        "assigned_partitions": assigned,
    }
    return started and recovered and not rebalancing, state
