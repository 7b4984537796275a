"""Connection details of the Kafka, Cassandra and Elasticsearch that walstream talks to."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Where the three services answer; tests and the app never need to know which mode gave them."""

    kafka_bootstrap: str
    cassandra_host: str
    cassandra_port: int
    elasticsearch_url: str

    def describe(self) -> dict[str, str]:
        return {
            "kafka": self.kafka_bootstrap,
            "cassandra": f"{self.cassandra_host}:{self.cassandra_port}",
            "elasticsearch": self.elasticsearch_url,
        }
