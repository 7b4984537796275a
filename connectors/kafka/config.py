"""The one place walstream's librdkafka configurations are built: producers, consumers and admin clients."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from typing import Any

from connectors.endpoints import Kafka, kafka_access
from streams.config import KafkaProtocol, KafkaSecurity

#: librdkafka's own lines go through Python logging (served on the clients' poll calls), so they are JSON like
#: every other line and held to one per kind while a broker is down (``streams.logs.Quiet``).
LOGGER = logging.getLogger("librdkafka")


def client_config(kafka: Kafka) -> dict[str, Any]:
    """What every Kafka client of the project shares: the cluster's security, its log lines, and reconnects that
    back off exponentially (with librdkafka's jitter) up to ten seconds while a broker is down."""
    access = kafka_access(kafka)
    config: dict[str, Any] = {
        "bootstrap.servers": access.bootstrap,
        "logger": LOGGER,
        "reconnect.backoff.ms": 200,
        "reconnect.backoff.max.ms": 10_000,
        "log.connection.close": False,  # an idle connection closed by the broker is not news
    }
    config.update(security_config(access.security))
    return config


def security_config(security: KafkaSecurity) -> dict[str, Any]:
    """librdkafka's security properties. TLS always verifies the broker's certificate and host name."""
    if security.protocol is KafkaProtocol.PLAINTEXT:
        return {}
    config: dict[str, Any] = {
        "security.protocol": security.protocol.value,
        "ssl.endpoint.identification.algorithm": "https",
        "enable.ssl.certificate.verification": True,
    }
    if security.ca_file is not None:
        config["ssl.ca.location"] = str(security.ca_file)
    if security.cert_file is not None and security.key_file is not None:
        config["ssl.certificate.location"] = str(security.cert_file)
        config["ssl.key.location"] = str(security.key_file)
    if security.protocol is KafkaProtocol.SASL_SSL:
        assert security.username is not None and security.password is not None  # the settings require both
        config["sasl.mechanisms"] = security.sasl_mechanism.value
        config["sasl.username"] = security.username
        config["sasl.password"] = security.password.get_secret_value()
    return config


def ssl_context(security: KafkaSecurity) -> ssl.SSLContext | None:
    """The same TLS as ``security_config``, for Python Kafka clients (the Faust worker's); None without TLS."""
    if not security.tls:
        return None
    context = ssl.create_default_context(cafile=str(security.ca_file) if security.ca_file else None)
    if security.cert_file is not None and security.key_file is not None:
        context.load_cert_chain(str(security.cert_file), str(security.key_file))
    return context


def producer_config(kafka: Kafka, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A durable producer: acks=all with idempotence, lz4 batches, murmur2 partitions like the Java client."""
    config = client_config(kafka)
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
    kafka: Kafka,
    group: str,
    *,
    from_beginning: bool = True,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A consumer that commits only what its owner says (no auto commit, no auto offset store) and reads
    committed records only, so an aborted transaction is never seen."""
    config = client_config(kafka)
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


def admin_config(kafka: Kafka) -> dict[str, Any]:
    return client_config(kafka)
