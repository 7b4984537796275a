"""The one builder of a namespace's pipeline from its spec, its sinks and a producer."""

from __future__ import annotations

from collections.abc import Mapping

from streams.codec import Codec
from streams.core.breaker import Breaker
from streams.core.dependencies import Dependencies
from streams.core.dispatch import Dispatcher
from streams.core.flood import FloodGuard
from streams.core.routing import Router
from streams.core.schedule import RetrySchedule
from streams.core.throttle import DeletePacer, Throttled
from streams.metrics import Metrics
from streams.namespaces import Namespace
from streams.payload import PayloadCodec
from streams.pipeline.apply import Applier
from streams.ports import Producer, Sink


def schedule_of(ns: Namespace) -> RetrySchedule:
    """The namespace's retry tiers, backoff and attempt budget."""
    return RetrySchedule(ns.tier_delays_ms(), ns.retry.backoff_multiplier, ns.retry.max_attempts)


def delete_pacers(ns: Namespace) -> dict[str, DeletePacer]:
    """One pacer per target when the namespace throttles deletes; share them between every Applier of a process.
    Each paces at the whole rate until ``DeletePacer.assign`` gives it the share of the partitions it owns."""
    rate = ns.throttle.max_deletes_per_second
    return {target: DeletePacer(rate) for target in ns.targets} if rate else {}


def build_router(
    ns: Namespace,
    producer: Producer,
    metrics: Metrics,
    *,
    guard: FloodGuard | None = None,
    codec: Codec | None = None,
) -> Router:
    """The namespace's router: retry tiers, the DLQ (within the flood guard's limit) and hand-backs to the log."""
    guard = guard or FloodGuard(ns.name, ns.retry.dlq_max_per_minute, metrics)
    return Router(ns.name, tuple(ns.targets), schedule_of(ns), producer, codec or Codec(), metrics, guard)


def build_applier(
    ns: Namespace,
    sinks: Mapping[str, Sink],
    producer: Producer,
    metrics: Metrics,
    *,
    guard: FloodGuard | None = None,
    pacers: Mapping[str, DeletePacer] | None = None,
    codec: Codec | None = None,
    breakers: bool = True,
    hold_s: float = 30.0,
    dependencies: Dependencies | None = None,
) -> Applier:
    """The namespace's Applier: each sink behind its circuit breaker (a store that is down fails fast, and tells
    ``dependencies``) and its delete pacer, a router for what is not applied, and the flood guard (shared where
    one is given)."""
    wrapped: dict[str, Sink] = {}
    for name, sink in sinks.items():
        kind = ns.targets[name].type
        target: Sink = (
            Breaker(sink, namespace=ns.name, dependencies=dependencies, dependency=kind) if breakers else sink
        )
        pacer = (pacers or {}).get(name)
        if pacer is not None:
            target = Throttled(target, pacer, metrics.child(metrics.deletes, ns.name, name).inc)
        wrapped[name] = target
    codec = codec or Codec()
    router = build_router(ns, producer, metrics, guard=guard, codec=codec)
    return Applier(
        ns.name,
        Dispatcher(wrapped, PayloadCodec(ns.payload).decode),
        router,
        producer,
        codec,
        metrics,
        schedule_of(ns),
        hold_s,
        origin_rank=ns.origin_rank if ns.replicated else None,
        origin_region=ns.origin_region if ns.replicated else None,
    )
