"""The clients' security settings for Kafka, Cassandra and Elasticsearch (``WALSTREAM_KAFKA_*``,
``WALSTREAM_CASSANDRA_*``, ``WALSTREAM_ELASTICSEARCH_*``), read by ``streams.config`` with all the others: which
settings only work together, checked once."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, SecretStr, model_validator


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class KafkaProtocol(StrEnum):
    """How a Kafka client talks to the brokers. SASL without TLS is not offered: it sends passwords in the clear."""

    PLAINTEXT = "PLAINTEXT"
    SSL = "SSL"
    SASL_SSL = "SASL_SSL"


class SaslMechanism(StrEnum):
    SCRAM_SHA_512 = "SCRAM-SHA-512"
    SCRAM_SHA_256 = "SCRAM-SHA-256"
    PLAIN = "PLAIN"


def _pair(first: object, second: object, names: str) -> None:
    if (first is None) != (second is None):
        raise ValueError(f"{names} go together")


class KafkaSecurity(_Frozen):
    """The Kafka clients' side of a secured cluster: every producer, consumer, admin client and the Faust worker."""

    protocol: KafkaProtocol = KafkaProtocol.PLAINTEXT
    sasl_mechanism: SaslMechanism = SaslMechanism.SCRAM_SHA_512
    username: str | None = None
    password: SecretStr | None = None
    #: The CA that signed the brokers' certificates (PEM); without it the system's CAs are trusted.
    ca_file: Path | None = None
    #: A client certificate and its key (PEM), for brokers that require one.
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSecurity:
        _pair(self.cert_file, self.key_file, "WALSTREAM_KAFKA_CERT_FILE and WALSTREAM_KAFKA_KEY_FILE")
        sasl = self.protocol is KafkaProtocol.SASL_SSL
        if sasl and (self.username is None or self.password is None):
            raise ValueError(
                "WALSTREAM_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs WALSTREAM_KAFKA_USERNAME and "
                "WALSTREAM_KAFKA_PASSWORD (or WALSTREAM_KAFKA_PASSWORD_FILE)"
            )
        if not sasl and (self.username is not None or self.password is not None):
            raise ValueError("WALSTREAM_KAFKA_USERNAME and _PASSWORD need WALSTREAM_KAFKA_SECURITY_PROTOCOL=SASL_SSL")
        if self.protocol is KafkaProtocol.PLAINTEXT and (self.ca_file or self.cert_file):
            raise ValueError(
                "WALSTREAM_KAFKA_CA_FILE and _CERT_FILE need WALSTREAM_KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL"
            )
        return self

    @property
    def tls(self) -> bool:
        return self.protocol is not KafkaProtocol.PLAINTEXT


class CassandraSecurity(_Frozen):
    """Password authentication and client TLS towards Cassandra."""

    username: str | None = None
    password: SecretStr | None = None
    tls: bool = False
    ca_file: Path | None = None
    #: Check that the node's certificate names the host connected to (on unless said otherwise).
    verify_hostname: bool = True
    cert_file: Path | None = None
    key_file: Path | None = None

    @model_validator(mode="after")
    def _consistent(self) -> CassandraSecurity:
        _pair(self.username, self.password, "WALSTREAM_CASSANDRA_USERNAME and WALSTREAM_CASSANDRA_PASSWORD")
        _pair(self.cert_file, self.key_file, "WALSTREAM_CASSANDRA_CERT_FILE and WALSTREAM_CASSANDRA_KEY_FILE")
        if not self.tls and (self.ca_file or self.cert_file):
            raise ValueError("WALSTREAM_CASSANDRA_CA_FILE and _CERT_FILE need WALSTREAM_CASSANDRA_TLS=true")
        return self


class ElasticsearchSecurity(_Frozen):
    """Basic auth or an API key towards Elasticsearch; TLS follows the URL (https) with a CA or a fingerprint."""

    username: str | None = None
    password: SecretStr | None = None
    api_key: SecretStr | None = None
    ca_file: Path | None = None
    #: The SHA-256 fingerprint of the server's certificate, instead of a CA.
    fingerprint: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ElasticsearchSecurity:
        _pair(self.username, self.password, "WALSTREAM_ELASTICSEARCH_USERNAME and WALSTREAM_ELASTICSEARCH_PASSWORD")
        if self.api_key is not None and self.username is not None:
            raise ValueError("WALSTREAM_ELASTICSEARCH_API_KEY and _USERNAME are alternatives: set one")
        if self.ca_file is not None and self.fingerprint is not None:
            raise ValueError("WALSTREAM_ELASTICSEARCH_CA_FILE and _FINGERPRINT are alternatives: set one")
        return self


class ClientSecurity(_Frozen):
    """How walstream authenticates to, and encrypts its connections with, the three services."""

    kafka: KafkaSecurity = KafkaSecurity()
    cassandra: CassandraSecurity = CassandraSecurity()
    elasticsearch: ElasticsearchSecurity = ElasticsearchSecurity()
