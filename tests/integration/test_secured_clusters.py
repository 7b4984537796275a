"""`walstream stack up --secure`: each server takes the secured client and turns away a wrong password and a
client without TLS. The test runs its own secured stack on free ports in a folder of its own, and stops it."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import shlex
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import NoHostAvailable
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from pydantic import SecretStr

from connectors.access import check_access
from connectors.cassandra.sink import new_cluster
from connectors.elasticsearch.client import new_client
from connectors.endpoints import AccessRefused, Endpoints
from connectors.local.stack import LocalStack
from streams.client.grpc import WalClient, write_request
from streams.client.sdk import SyncWalWriter
from streams.config import KafkaSecurity, Settings, StackMode, load_settings
from streams.model import Op
from streams.ports import Durable
from tests.integration.pipeline import (
    REPO,
    ScratchNamespace,
    WorkerProcess,
    api_process,
    cassandra_rows,
    create_namespace,
    es_docs,
    own_stack,
    wait_until,
)

pytestmark = pytest.mark.integration

#: How long a refusal is given to show: each test waits for the error the client reports, so this is only a bound.
_REFUSAL_S = 15.0


def _say(message: str) -> None:
    print(f"[secure stack] {message}", file=sys.stderr, flush=True)


@pytest.fixture(scope="module")
def stack(settings: Settings) -> Iterator[LocalStack]:
    if settings.mode is not StackMode.LOCAL:
        pytest.skip(f"the secured embedded stack does not apply in {settings.mode.value} mode")
    with own_stack(settings.local, "walstream-secure-test-", secure=True, progress=_say) as secured:
        yield secured


@pytest.fixture(scope="module")
def secured_endpoints(stack: LocalStack) -> Endpoints:
    return stack.endpoints()


def _password(stack: LocalStack, name: str) -> str:
    return stack.secrets.password(stack.secrets.dir / f"{name}.password")


# -- Kafka -----------------------------------------------------------------------------------------------------


def _kafka_conf(secured_endpoints: Endpoints, **extra: Any) -> dict[str, Any]:
    return {"bootstrap.servers": secured_endpoints.kafka_bootstrap, "log_level": 0, **extra}


def _secured_kafka(stack: LocalStack, password: str) -> dict[str, Any]:
    return {
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "walstream",
        "sasl.password": password,
        "ssl.ca.location": str(stack.secrets.ca_file),
    }


def test_kafka_takes_the_secured_client(stack: LocalStack, secured_endpoints: Endpoints) -> None:
    conf = _kafka_conf(secured_endpoints, **_secured_kafka(stack, _password(stack, "kafka")))
    admin = AdminClient(conf)
    assert admin.list_topics(timeout=30).brokers
    topic = f"secure{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=30)
    producer = Producer({**conf, "acks": "all", "enable.idempotence": True})
    delivered: list[KafkaError | None] = []
    producer.produce(topic, b"over TLS, with a password", on_delivery=lambda err, _msg: delivered.append(err))
    assert producer.flush(30) == 0
    assert delivered == [None]


def _refused(admin: AdminClient, errors: list[KafkaError], *codes: int) -> None:
    """Wait for the client to report one of ``codes`` (the refusal itself), then check it got no metadata."""
    deadline = time.monotonic() + _REFUSAL_S
    while not any(e.code() in codes for e in errors) and time.monotonic() < deadline:
        admin.poll(0.2)  # serves error_cb
    assert any(e.code() in codes for e in errors), errors
    with pytest.raises(KafkaException):
        admin.list_topics(timeout=2)


def test_kafka_refuses_a_wrong_password(stack: LocalStack, secured_endpoints: Endpoints) -> None:
    errors: list[KafkaError] = []
    admin = AdminClient(_kafka_conf(secured_endpoints, **_secured_kafka(stack, "wrong"), error_cb=errors.append))
    _refused(admin, errors, KafkaError._AUTHENTICATION)


def test_kafka_gives_a_plaintext_client_no_metadata(secured_endpoints: Endpoints) -> None:
    errors: list[KafkaError] = []
    admin = AdminClient(_kafka_conf(secured_endpoints, error_cb=errors.append))
    # The broker drops a connection that does not start a TLS handshake: the client sees its only broker down.
    _refused(admin, errors, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN)


# -- Cassandra -------------------------------------------------------------------------------------------------


def _cassandra(stack: LocalStack, secured_endpoints: Endpoints, user: str, password: str, tls: bool) -> Any:
    cluster = new_cluster(secured_endpoints.cassandra_host, secured_endpoints.cassandra_port, timeout=_REFUSAL_S)
    cluster.auth_provider = PlainTextAuthProvider(username=user, password=password)
    if tls:
        cluster.ssl_context = ssl.create_default_context(cafile=str(stack.secrets.ca_file))
    return cluster


def test_cassandra_takes_the_secured_client(stack: LocalStack, secured_endpoints: Endpoints) -> None:
    security = secured_endpoints.security.cassandra
    assert security.tls and security.username == "walstream" and security.password is not None
    cluster = _cassandra(stack, secured_endpoints, "walstream", security.password.get_secret_value(), tls=True)
    try:
        session = cluster.connect()
        keyspace = f"secure{uuid.uuid4().hex[:8]}"
        session.execute(
            f"CREATE KEYSPACE {keyspace} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
        )
        row = session.execute("SELECT release_version FROM system.local").one()
        assert row is not None and row.release_version.startswith("5.0")
    finally:
        cluster.shutdown()


@pytest.mark.parametrize(("user", "password"), [("walstream", "wrong"), ("cassandra", "cassandra")])
def test_cassandra_refuses_a_wrong_password_and_the_default_superuser(
    stack: LocalStack, secured_endpoints: Endpoints, user: str, password: str
) -> None:
    cluster = _cassandra(stack, secured_endpoints, user, password, tls=True)
    try:
        with pytest.raises(NoHostAvailable) as refused:
            cluster.connect()
        assert "Bad credentials" in str(refused.value) or "AuthenticationFailed" in str(refused.value)
    finally:
        cluster.shutdown()


def test_cassandra_refuses_a_client_without_tls(stack: LocalStack, secured_endpoints: Endpoints) -> None:
    cluster = _cassandra(stack, secured_endpoints, "walstream", _password(stack, "cassandra"), tls=False)
    try:
        with pytest.raises(NoHostAvailable):
            cluster.connect()
    finally:
        cluster.shutdown()


# -- Elasticsearch ---------------------------------------------------------------------------------------------


def _get(url: str, ca_file: Path | None, user: str | None = None, password: str = "") -> int:
    request = urllib.request.Request(f"{url}/_cluster/health")
    if user is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
    try:
        with urllib.request.urlopen(request, timeout=_REFUSAL_S, context=context) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_elasticsearch_takes_the_secured_client(stack: LocalStack, secured_endpoints: Endpoints) -> None:
    url = secured_endpoints.elasticsearch_url
    assert url.startswith("https://")
    assert _get(url, stack.secrets.ca_file, "elastic", _password(stack, "elasticsearch")) == 200


def test_elasticsearch_refuses_missing_or_wrong_credentials(stack: LocalStack, secured_endpoints: Endpoints) -> None:
    url, ca = secured_endpoints.elasticsearch_url, stack.secrets.ca_file
    assert _get(url, ca) == 401
    assert _get(url, ca, "elastic", "wrong") == 401


def test_elasticsearch_refuses_plain_http(secured_endpoints: Endpoints) -> None:
    plain = secured_endpoints.elasticsearch_url.replace("https://", "http://")
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        _get(plain, None, "elastic", "whatever")


# -- The secrets -----------------------------------------------------------------------------------------------


def test_no_password_reaches_a_log(stack: LocalStack) -> None:
    passwords = [stack.secrets.password(p) for p in stack.secrets.dir.glob("*.password")]
    assert len(passwords) == 3
    logs = [p for p in stack.settings.stack_dir.rglob("*") if p.is_file() and p.suffix in {".log", ".json"}]
    assert logs
    for log in logs:
        text = log.read_text(errors="replace")
        assert not [p for p in passwords if p in text], log


# -- walstream itself on the secured stack ---------------------------------------------------------------------


def _run_env(stack: LocalStack, ns: ScratchNamespace) -> dict[str, str]:
    """What a walstream process needs to use the secured stack: `walstream stack env`'s settings."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("WALSTREAM_")},
        **stack.client_env(),
        "WALSTREAM_NAMESPACE_DIR": str(ns.directory),
    }


def test_the_pipeline_runs_end_to_end_on_the_secured_stack(stack: LocalStack, tmp_path: Path) -> None:
    """The SDK and `walstream api` write, a worker applies to Cassandra and Elasticsearch, `walstream cdc tail`
    reads the change events: all with TLS and passwords, and none of the passwords in any of their logs."""
    endpoints = stack.endpoints()
    security = endpoints.security
    ns = create_namespace(endpoints, tmp_path / "ns")
    env = _run_env(stack, ns)
    session = new_cluster(endpoints.cassandra_host, endpoints.cassandra_port, security=security.cassandra).connect()
    es = new_client(endpoints.elasticsearch_url, security.elasticsearch, request_timeout=30)
    worker = WorkerProcess(ns, tmp_path / "data", tmp_path / "worker.log", env=env).start()
    running = contextlib.ExitStack()
    try:
        api = running.enter_context(api_process(env))
        writer = SyncWalWriter(endpoints.kafka, {ns.name: ns.namespace})
        try:
            sdk = [
                writer.submit_entry(writer.prepare(ns.name, f"sdk-{i}", Op.UPSERT, {"color": "red", "qty": i}))
                for i in range(50)
            ]
            assert all(f.result(60).ok for f in sdk)
        finally:
            writer.close()
        with WalClient(f"127.0.0.1:{api.port}", timeout_s=30) as client:
            for i in range(50):
                request = write_request(ns.name, f"api-{i}", "UPSERT", {"color": "blue", "qty": i})
                assert client.write_to_log(request).durable is Durable.TRUE
        expected = {f"sdk-{i}": ("red", i) for i in range(50)} | {f"api-{i}": ("blue", i) for i in range(50)}
        wait_until(
            lambda: cassandra_rows(session, ns.keyspace) == expected, 120, "Cassandra to hold every entry", worker.tail
        )
        wait_until(lambda: es_docs(es, ns.index) == expected, 60, "Elasticsearch to hold every entry", worker.tail)
        tail = subprocess.run(
            [
                sys.executable,
                "-m",
                "streams",
                "cdc",
                "tail",
                ns.name,
                "--from-beginning",
                "--max",
                "100",
                "--timeout",
                "60",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert tail.returncode == 0, tail.stderr
        events = [json.loads(line) for line in tail.stdout.splitlines()]
        assert sorted(e["key"] for e in events) == sorted(expected), tail.stderr
    finally:
        running.close()  # the API, stopped by its own pid; its whole output is in api.lines
        worker.stop()
        ns.drop(session, es)
        session.cluster.shutdown()
        es.close()
    passwords = [stack.secrets.password(p) for p in stack.secrets.dir.glob("*.password")]
    for name, text in (
        ("worker", worker.log.read_text(errors="replace")),
        ("api", "".join(api.lines)),
        ("cdc tail", tail.stdout + tail.stderr),
    ):
        assert text.strip(), f"the {name} logged nothing: the grep below would prove nothing"
        assert not [p for p in passwords if p in text], f"a password is in the {name}'s log"


def _refusal(endpoints: Endpoints, service: str, **changes: Any) -> str:
    with pytest.raises(AccessRefused) as refused:
        check_access(dataclasses.replace(endpoints, **changes), [service], timeout=10)
    return str(refused.value)


def test_each_service_refuses_walstream_with_a_wrong_password_naming_the_setting(stack: LocalStack) -> None:
    endpoints = stack.endpoints()
    security = endpoints.security
    wrong = SecretStr("not-the-password")
    cases = {
        "kafka": security.model_copy(update={"kafka": security.kafka.model_copy(update={"password": wrong})}),
        "cassandra": security.model_copy(
            update={"cassandra": security.cassandra.model_copy(update={"password": wrong})}
        ),
        "elasticsearch": security.model_copy(
            update={"elasticsearch": security.elasticsearch.model_copy(update={"password": wrong})}
        ),
    }
    for service, bad in cases.items():
        message = _refusal(endpoints, service, security=bad)
        assert f"WALSTREAM_{service.upper()}_PASSWORD" in message, message
        assert "not-the-password" not in message


def test_each_service_refuses_walstream_without_tls_naming_the_setting(stack: LocalStack) -> None:
    endpoints = stack.endpoints()
    security = endpoints.security
    plaintext_kafka = security.model_copy(update={"kafka": KafkaSecurity()})
    no_tls_cassandra = security.model_copy(
        update={"cassandra": security.cassandra.model_copy(update={"tls": False, "ca_file": None})}
    )
    assert "WALSTREAM_KAFKA_SECURITY_PROTOCOL" in _refusal(endpoints, "kafka", security=plaintext_kafka)
    assert "WALSTREAM_CASSANDRA_TLS" in _refusal(endpoints, "cassandra", security=no_tls_cassandra)
    http = endpoints.elasticsearch_url.replace("https://", "http://")
    assert "WALSTREAM_ELASTICSEARCH_URL" in _refusal(endpoints, "elasticsearch", elasticsearch_url=http)


# -- The command line ------------------------------------------------------------------------------------------


def _cli(stack: LocalStack, *args: str) -> subprocess.CompletedProcess[str]:
    """`walstream stack …` on this test's stack: only the folder and the ports are given, not --secure."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WALSTREAM_")}
    env["WALSTREAM_STACK_DIR"] = str(stack.settings.stack_dir)
    env["WALSTREAM_CACHE_DIR"] = str(stack.settings.cache_dir)
    for name, port in stack.settings.ports().items():
        env[f"WALSTREAM_{name.upper()}"] = str(port)
    if stack.settings.java_home is not None:
        env["WALSTREAM_JAVA_HOME"] = str(stack.settings.java_home)
    return subprocess.run(
        [sys.executable, "-m", "streams", "stack", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_cli_status_says_the_stack_is_secured(stack: LocalStack) -> None:
    out = _cli(stack, "status")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "secured" in out.stdout
    assert sum(" healthy " in line for line in out.stdout.splitlines()) == 3, out.stdout


def test_cli_env_gives_an_external_client_everything_but_the_passwords(stack: LocalStack) -> None:
    out = _cli(stack, "env")
    assert out.returncode == 0, out.stderr
    env = dict(shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in out.stdout.splitlines())
    for path in stack.secrets.dir.glob("*.password"):
        assert stack.secrets.password(path) not in out.stdout
    settings = load_settings(env)
    assert settings.mode is StackMode.EXTERNAL
    assert settings.client_security() == stack.endpoints().security


# -- A restart (last: the tests above run on the first start) ---------------------------------------------------


def test_a_restart_reuses_the_secrets(stack: LocalStack) -> None:
    before = {p.name: p.read_bytes() for p in stack.secrets.dir.iterdir()}
    assert stack.down() == ["elasticsearch", "cassandra", "kafka"]
    # up() waits until each server takes its secured client: Kafka's SCRAM user from the formatted log,
    # Cassandra's walstream role, Elasticsearch's password from its keystore, all from the first start.
    result = stack.up()
    assert sorted(result.started) == ["cassandra", "elasticsearch", "kafka"]
    assert {p.name: p.read_bytes() for p in stack.secrets.dir.iterdir()} == before
    _say(f"restarted in {result.elapsed_s:.1f}s")
