"""Secrets never cross the network in the clear: refused before any connection is made."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from connectors.access import refuse_secrets_in_clear
from connectors.endpoints import AccessRefused, Endpoints
from streams.config import CassandraSecurity, ClientSecurity, ElasticsearchSecurity

PASSWORD = SecretStr("s3cret")


def _endpoints(host: str, url: str, security: ClientSecurity) -> Endpoints:
    return Endpoints("kafka:9093", host, 9042, url, security)


@pytest.mark.parametrize(
    ("host", "url", "security", "named"),
    [
        (
            "cassandra.example",
            "https://es.example:9200",
            ClientSecurity(cassandra=CassandraSecurity(username="w", password=PASSWORD)),
            "WALSTREAM_CASSANDRA_TLS",
        ),
        (
            "cassandra.example",
            "http://es.example:9200",
            ClientSecurity(elasticsearch=ElasticsearchSecurity(username="w", password=PASSWORD)),
            "WALSTREAM_ELASTICSEARCH_URL",
        ),
        (
            "cassandra.example",
            "http://10.0.0.7:9200",
            ClientSecurity(elasticsearch=ElasticsearchSecurity(api_key=PASSWORD)),
            "WALSTREAM_ELASTICSEARCH_URL",
        ),
    ],
    ids=["cassandra-password-without-tls", "elasticsearch-password-over-http", "elasticsearch-api-key-over-http"],
)
def test_a_secret_without_tls_beyond_this_machine_is_refused(
    host: str, url: str, security: ClientSecurity, named: str
) -> None:
    with pytest.raises(AccessRefused, match=named) as refused:
        refuse_secrets_in_clear(_endpoints(host, url, security))
    assert "s3cret" not in str(refused.value)


def test_loopback_tls_and_no_secret_are_let_through() -> None:
    both = ClientSecurity(
        cassandra=CassandraSecurity(username="w", password=PASSWORD),
        elasticsearch=ElasticsearchSecurity(username="w", password=PASSWORD),
    )
    refuse_secrets_in_clear(_endpoints("127.0.0.1", "http://localhost:9200", both))  # this machine
    tls = ClientSecurity(cassandra=CassandraSecurity(username="w", password=PASSWORD, tls=True))
    refuse_secrets_in_clear(_endpoints("cassandra.example", "https://es.example:9200", tls))
    refuse_secrets_in_clear(_endpoints("cassandra.example", "http://es.example:9200", ClientSecurity()))
    # Only the services a command uses are held to it.
    refuse_secrets_in_clear(_endpoints("cassandra.example", "http://es.example:9200", both), ["kafka"])
