"""The start-up access checks against the open stack: a client configured for security the cluster does not speak
is stopped with an error naming the setting to fix; the right configuration passes; an address where nothing
listens is an outage, not a refusal. (The secured stack's refusals are in test_secure_stack.py.)"""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from connectors.access import check_access
from connectors.endpoints import AccessRefused, Endpoints
from streams.config import CassandraSecurity, ClientSecurity, KafkaProtocol, KafkaSecurity

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def test_the_open_stack_passes(endpoints: Endpoints) -> None:
    check_access(endpoints)


@pytest.mark.parametrize(
    ("security", "service", "named"),
    [
        (ClientSecurity(kafka=KafkaSecurity(protocol=KafkaProtocol.SSL)), "kafka", "WALSTREAM_KAFKA_SECURITY_PROTOCOL"),
        (ClientSecurity(cassandra=CassandraSecurity(tls=True)), "cassandra", "WALSTREAM_CASSANDRA_CA_FILE"),
    ],
    ids=["kafka-tls-to-plaintext", "cassandra-tls-to-plaintext"],
)
def test_a_client_speaking_tls_to_a_plaintext_service_is_told_what_to_fix(
    endpoints: Endpoints, security: ClientSecurity, service: str, named: str
) -> None:
    with pytest.raises(AccessRefused, match=named):
        check_access(dataclasses.replace(endpoints, security=security), [service], timeout=10)


def test_https_to_a_plaintext_elasticsearch_names_the_ca_setting(endpoints: Endpoints) -> None:
    https = endpoints.elasticsearch_url.replace("http://", "https://")
    with pytest.raises(AccessRefused, match="WALSTREAM_ELASTICSEARCH_CA_FILE"):
        check_access(dataclasses.replace(endpoints, elasticsearch_url=https), ["elasticsearch"], timeout=10)


def test_nothing_listening_is_an_outage_not_a_refusal(endpoints: Endpoints) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    nowhere = dataclasses.replace(
        endpoints,
        cassandra_port=free,
        elasticsearch_url=f"http://127.0.0.1:{free}",
        kafka_bootstrap=f"127.0.0.1:{free}",
    )
    check_access(nowhere, timeout=3)  # no AccessRefused: the worker rides out an outage


def test_the_cli_stops_with_the_setting_to_fix(endpoints: Endpoints, tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "WALSTREAM_STACK_MODE": "external",
        "WALSTREAM_KAFKA_BOOTSTRAP": endpoints.kafka_bootstrap,
        "WALSTREAM_KAFKA_SECURITY_PROTOCOL": "SSL",
    }
    done = subprocess.run(
        [sys.executable, "-m", "streams", "cdc", "tail", "orders", "--max", "1", "--timeout", "5"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "WALSTREAM_KAFKA_SECURITY_PROTOCOL" in done.stderr and "Traceback" not in done.stderr
