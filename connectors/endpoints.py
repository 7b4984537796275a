"""Connection details of the Kafka, Cassandra and Elasticsearch that walstream talks to."""

from __future__ import annotations

from dataclasses import dataclass, field

from connectors.sqs.client import SqsAccess
from streams.config import ClientSecurity, KafkaSecurity


class AccessRefused(RuntimeError):
    """A service refused walstream's credentials or its TLS; the message names the settings to fix."""


@dataclass(frozen=True, slots=True)
class KafkaAccess:
    """How to reach a Kafka cluster: the bootstrap servers and the client security they require."""

    bootstrap: str
    security: KafkaSecurity = field(default_factory=KafkaSecurity)

    def __str__(self) -> str:
        return self.bootstrap


#: What the Kafka clients accept: a plain bootstrap string (an open cluster) or a KafkaAccess.
Kafka = str | KafkaAccess


def kafka_access(kafka: Kafka) -> KafkaAccess:
    return KafkaAccess(kafka) if isinstance(kafka, str) else kafka


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where the three services answer; tests and the app never need to know which mode gave them."""

    kafka_bootstrap: str
    cassandra_host: str
    cassandra_port: int
    elasticsearch_url: str
    security: ClientSecurity = field(default_factory=ClientSecurity)
    #: Where namespaces with ``backend: sqs`` keep their log (None: nowhere configured).
    sqs: SqsAccess | None = None

    @property
    def kafka(self) -> KafkaAccess:
        return KafkaAccess(self.kafka_bootstrap, self.security.kafka)

    def describe(self) -> dict[str, str]:
        return {
            "kafka": self.kafka_bootstrap,
            "cassandra": f"{self.cassandra_host}:{self.cassandra_port}",
            "elasticsearch": self.elasticsearch_url,
        }
