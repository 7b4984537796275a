"""The one place walstream's librdkafka configurations are built: producers, consumers and admin clients."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

#: librdkafka's own lines go through Python logging (served on the clients' poll calls), so they are JSON like
#: every other line and held to one per kind while a broker is down (``streams.logs.Quiet``).
LOGGER = logging.getLogger("librdkafka")


def client_config(bootstrap: str) -> dict[str, Any]:
    """What every Kafka client of the project shares: its log lines, and reconnects that back off
    exponentially (with librdkafka's jitter) up to ten seconds while a broker is down."""
    return {
        "bootstrap.servers": bootstrap,
        "logger": LOGGER,
        "reconnect.backoff.ms": 200,
        "reconnect.backoff.max.ms": 10_000,
        "log.connection.close": False,  # an idle connection closed by the broker is not news
    }


def producer_config(bootstrap: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A durable producer: acks=all with idempotence, lz4 batches, murmur2 partitions like the Java client."""
    config = client_config(bootstrap)
    config.update(
        {
            "acks": "all",
            "enable.idempotence": True,
            "max.in.flight.requests.per.connection": 5,
            # Same partition for the same key as the Java client and the stream workers (murmur2).
            "partitioner": "murmur2_random",
            "linger.ms": 5,
            "batch.num.messages": 10000,
            "compression.type": "lz4",
            "delivery.timeout.ms": 30000,
            # Topics are created by `namespaces apply`; a missing one is an error within seconds, not half a minute.
            "topic.metadata.propagation.max.ms": 5000,
            "queue.buffering.max.messages": 200000,
            "queue.buffering.max.kbytes": 262144,
        }
    )
    config.update(overrides or {})
    return config


def consumer_config(
    bootstrap: str,
    group: str,
    *,
    from_beginning: bool = True,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A consumer that commits only what its owner says (no auto commit, no auto offset store) and reads
    committed records only, so an aborted transaction is never seen."""
    config = client_config(bootstrap)
    config.update(
        {
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            "isolation.level": "read_committed",
        }
    )
    config.update(overrides or {})
    return config


def admin_config(bootstrap: str) -> dict[str, Any]:
    return client_config(bootstrap)
