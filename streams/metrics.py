"""The closed list of walstream's metrics: every name the process exports is defined here, once."""

from __future__ import annotations

from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


class Metrics:
    """One registry per process; tests build their own, so counts never leak between them."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], MetricWrapperBase] = {}
        #: Entries per target by outcome: applied, stale, skipped (already held), retryable, fatal.
        self.entries = Counter(
            "walstream_entries_total", "Entries handled per target", ["namespace", "target", "outcome"], registry=r
        )
        #: Records that did not decode, by reason; each goes to the dead-letter topic.
        self.undecodable = Counter(
            "walstream_undecodable_total", "Records that did not decode", ["namespace", "reason"], registry=r
        )
        #: Entries by what they did to their key: applied (now its version in every target), stale (changed
        #: nothing: a duplicate, a replay, or overtaken by a newer version), pending (a target still needs it).
        self.entry_results = Counter(
            "walstream_entry_results_total", "Entries by result", ["namespace", "result"], registry=r
        )
        #: Records sent to the dead-letter topic, by error class.
        self.dead_letters = Counter(
            "walstream_dlq_total", "Records sent to the dead-letter topic", ["namespace", "error_class"], registry=r
        )
        #: Entries sent to a retry tier.
        self.retries = Counter(
            "walstream_retries_total", "Entries sent to a retry tier", ["namespace", "tier"], registry=r
        )
        #: Change events published on the CDC topic, by op (c, u, d).
        self.changes = Counter("walstream_cdc_total", "Change events published", ["namespace", "op"], registry=r)
        #: Seconds one batch of sink writes took.
        self.sink_latency = Histogram("walstream_sink_seconds", "Sink batch latency", ["namespace"], registry=r)
        #: Seconds from an entry's original write time to the moment it was applied everywhere.
        self.end_to_end = Histogram(
            "walstream_end_to_end_seconds", "Write to applied", ["namespace"], buckets=_LATENCY_BUCKETS, registry=r
        )
        #: Seconds a delayed entry was applied after it was due (never negative: it is never applied early).
        self.delay_lateness = Histogram(
            "walstream_delay_lateness_seconds",
            "Delayed entries: applied minus due",
            ["namespace"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=r,
        )
        #: Retry-tier partitions paused until their head entry is due.
        self.retry_held = Gauge(
            "walstream_retry_held_partitions",
            "Retry-tier partitions held until their head is due",
            ["namespace", "tier"],
            registry=r,
        )
        #: 1 while the flood guard holds the namespace (too many dead letters per minute).
        self.paused = Gauge(
            "walstream_namespace_paused", "Namespace held by the DLQ flood guard", ["namespace"], registry=r
        )
        #: Deletes a target took, in namespaces that throttle deletes (summed over the fleet: the rate it saw).
        self.deletes = Counter(
            "walstream_deletes_total",
            "Deletes a target took (throttled namespaces)",
            ["namespace", "target"],
            registry=r,
        )
        #: This worker's share of the namespace's delete limit, in deletes per second (set on every rebalance).
        self.delete_rate = Gauge(
            "walstream_delete_rate_limit",
            "This worker's share of the namespace's delete rate, deletes per second",
            ["namespace", "target"],
            registry=r,
        )
        #: 1 while a dependency (kafka, cassandra, elasticsearch) answers, 0 during an outage.
        self.dependency_up = Gauge(
            "walstream_dependency_up", "Whether a dependency answers", ["dependency"], registry=r
        )
        #: Outages of a dependency, counted when they begin, and the seconds they lasted, counted when they end.
        self.dependency_outages = Counter(
            "walstream_dependency_outages_total", "Outages of a dependency", ["dependency"], registry=r
        )
        self.dependency_down_seconds = Counter(
            "walstream_dependency_down_seconds_total", "Seconds a dependency did not answer", ["dependency"], registry=r
        )
        #: Times a log partition's fetched records never reached the agent and were read again (around a rebalance).
        self.lost_fetches = Counter(
            "walstream_lost_fetches_total",
            "Fetches of a log partition that never reached the agent and were read again",
            ["topic"],
            registry=r,
        )
        # -- cross-region replication (a replicated namespace's workers) --
        #: Entries this region's workers applied (changed their key or found it held), by the region whose log
        #: they were written to: the local region's own, and each other region's as MirrorMaker 2 brought it.
        self.replicated_entries = Counter(
            "walstream_replicated_entries_total",
            "Entries applied, by the region whose log they were written to",
            ["namespace", "origin"],
            registry=r,
        )
        #: Seconds from an entry's first write (in its origin region) to its application here, for the newest
        #: batch from each origin region: the lag of each direction of replication as this region sees it.
        self.replication_lag = Gauge(
            "walstream_replication_lag_seconds",
            "Write in the origin region to application in this region, newest batch",
            ["namespace", "origin"],
            registry=r,
        )
        #: Records waiting in each namespace's log for this worker group (end offsets minus committed offsets).
        self.consumer_lag = Gauge("walstream_consumer_lag", "Records waiting in the log", ["namespace"], registry=r)
        #: Unix time of the last acknowledged batch (health compares it with waiting input).
        self.last_ack = Gauge(
            "walstream_last_ack_timestamp_seconds", "Last batch acknowledged", ["namespace"], registry=r
        )

        # -- the repair commands (`walstream verify`) --
        #: Keys a target holds wrongly, by kind (missing, extra, stale), as the last verify found them.
        self.drift_keys = Gauge(
            "walstream_drift_keys", "Keys a target holds wrongly, by kind", ["namespace", "target", "kind"], registry=r
        )

        # -- the API process (`walstream api`) --
        #: Calls answered, by method and gRPC status code name (a WriteStream entry counts as one call of
        #: "WriteStream" with its own code; the stream itself is not counted here).
        self.api_calls = Counter(
            "walstream_api_calls_total", "API calls answered, by method and status code", ["method", "code"],
            registry=r,
        )  # fmt: skip
        #: Seconds from a call's (or a stream entry's) arrival to its answer.
        self.api_latency = Histogram(
            "walstream_api_call_seconds",
            "API call latency, arrival to answer",
            ["method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 35),
            registry=r,
        )
        #: Calls and stream entries accepted and not answered yet.
        self.api_in_flight = Gauge("walstream_api_in_flight", "API calls and stream entries in flight", registry=r)
        #: Calls and stream entries refused with RESOURCE_EXHAUSTED because the in-flight limit was reached.
        self.api_shed = Counter(
            "walstream_api_shed_total", "API calls shed at the in-flight limit", ["method"], registry=r
        )
        #: 1 while the API's producer reaches Kafka (its metadata answers), 0 while it does not.
        self.api_kafka_up = Gauge("walstream_api_kafka_up", "Whether the API's producer reaches Kafka", registry=r)

    def child(self, metric: M, *labels: str) -> M:
        """``metric.labels(*labels)``, looked up once: ``labels()`` takes a lock and builds its key on every call,
        which adds up on the per-entry path. A child is created on first use, exactly as ``labels()`` does."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found  # type: ignore[return-value]
