"""Start-up checks that a secured cluster accepts walstream: a refused password or a failed TLS handshake is an
error naming the setting to fix, not an outage to ride out.

A service that does not answer at all is left alone here: the worker rides out outages, and a tool's own call
reports it. Only an answer that says "not like this" (credentials, TLS) stops a command before it begins.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import ssl
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from cassandra import AuthenticationFailed, OperationTimedOut
from cassandra.cluster import NoHostAvailable
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import ConnectionTimeout, TlsError
from elasticsearch import ApiError, AuthenticationException, AuthorizationException

from connectors.cassandra.sink import new_cluster
from connectors.elasticsearch.client import new_client
from connectors.endpoints import AccessRefused, Endpoints, Kafka, kafka_access
from connectors.kafka.config import admin_config

SERVICES = ("kafka", "cassandra", "elasticsearch")


def check_access(endpoints: Endpoints, services: Iterable[str] = SERVICES, timeout: float = 15.0) -> None:
    services = list(services)
    refuse_secrets_in_clear(endpoints, services)
    for service in services:
        if service == "kafka":
            check_kafka(endpoints.kafka, timeout)
        elif service == "cassandra":
            check_cassandra(endpoints, timeout)
        elif service == "elasticsearch":
            check_elasticsearch(endpoints, timeout)
        else:
            raise ValueError(f"unknown service {service!r}; known: {', '.join(SERVICES)}")


def refuse_secrets_in_clear(endpoints: Endpoints, services: Iterable[str] = SERVICES) -> None:
    """Refuse to send a password or an API key without TLS to anything but this machine. (Kafka's settings
    refuse SASL without TLS already.)"""
    services = set(services)
    cassandra = endpoints.security.cassandra
    clear = cassandra.password is not None and not cassandra.tls
    if "cassandra" in services and clear and not _loopback(endpoints.cassandra_host):
        raise AccessRefused(
            f"WALSTREAM_CASSANDRA_PASSWORD would cross the network in the clear to {endpoints.cassandra_host}: "
            f"set WALSTREAM_CASSANDRA_TLS=true (and WALSTREAM_CASSANDRA_CA_FILE)"
        )
    search = endpoints.security.elasticsearch
    url = endpoints.elasticsearch_url
    host = urlsplit(url).hostname or ""
    clear = url.startswith("http://") and (search.password is not None or search.api_key is not None)
    if "elasticsearch" in services and clear and not _loopback(host):
        raise AccessRefused(
            f"the Elasticsearch credentials would cross the network in the clear to {host}: use an https:// "
            f"address in WALSTREAM_ELASTICSEARCH_URL"
        )


def _loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_kafka(kafka: Kafka, timeout: float = 15.0) -> None:
    access = kafka_access(kafka)
    errors: list[KafkaError] = []
    config = admin_config(access)
    config["error_cb"] = errors.append
    config["log_level"] = 0  # its errors are read from error_cb and explained below
    admin = AdminClient(config)
    try:
        admin.list_topics(timeout=timeout)
    except KafkaException:
        admin.poll(0.5)  # error callbacks are served by poll, not by list_topics
        # Probed once, and only when an answer needs it: does the listener speak TLS?
        speaks_tls = functools.cache(lambda: any(_speaks_tls(b) for b in access.bootstrap.split(",")))
        why = _kafka_refusal(access.bootstrap, access.security.username, errors, speaks_tls)
        if why is None and not access.security.tls and speaks_tls():
            # A TLS listener drops a plaintext client without a word: librdkafka sees only its brokers down.
            why = (
                f"Kafka at {access.bootstrap} speaks TLS and this client does not: set "
                f"WALSTREAM_KAFKA_SECURITY_PROTOCOL (SSL or SASL_SSL) and WALSTREAM_KAFKA_CA_FILE"
            )
        if why is not None:
            raise AccessRefused(why) from None


def _kafka_refusal(
    bootstrap: str, username: str | None, errors: list[KafkaError], speaks_tls: Callable[[], bool]
) -> str | None:
    for error in errors:
        text = error.str()
        if error.code() == KafkaError._AUTHENTICATION or "SASL authentication" in text:
            return (
                f"Kafka at {bootstrap} refused user {username!r}: check WALSTREAM_KAFKA_USERNAME and "
                f"WALSTREAM_KAFKA_PASSWORD (or _PASSWORD_FILE), and WALSTREAM_KAFKA_SASL_MECHANISM"
            )
        if "PLAINTEXT broker listener" in text and not speaks_tls():
            # librdkafka says this of any disconnect during a TLS handshake (a restarting broker too): only a
            # listener that does not speak TLS makes it a refusal.
            return (
                f"Kafka at {bootstrap} serves plaintext, not TLS: check WALSTREAM_KAFKA_SECURITY_PROTOCOL "
                f"and WALSTREAM_KAFKA_BOOTSTRAP"
            )
        if error.code() == KafkaError._SSL or "SSL handshake failed" in text or "certificate verify" in text:
            return (
                f"TLS with Kafka at {bootstrap} failed ({_first_line(text)}): check WALSTREAM_KAFKA_CA_FILE "
                f"and WALSTREAM_KAFKA_SECURITY_PROTOCOL"
            )
    return None


def check_cassandra(endpoints: Endpoints, timeout: float = 15.0) -> None:
    security = endpoints.security.cassandra
    where = f"{endpoints.cassandra_host}:{endpoints.cassandra_port}"
    cluster = new_cluster(endpoints.cassandra_host, endpoints.cassandra_port, timeout=timeout, security=security)
    try:
        cluster.connect().execute("SELECT release_version FROM system.local", timeout=timeout)
    except NoHostAvailable as exc:
        why = _cassandra_refusal(where, security.username, security.tls, list(exc.errors.values()))
        if why is not None:
            raise AccessRefused(why) from None
    except AuthenticationFailed as exc:
        why = _cassandra_refusal(where, security.username, security.tls, [exc])
        if why is not None:
            raise AccessRefused(why) from None
    except OperationTimedOut:
        pass  # slow or away: an outage, not a refusal
    finally:
        cluster.shutdown()


def _cassandra_refusal(where: str, username: str | None, tls: bool, errors: list[object]) -> str | None:
    speaks_tls = functools.cache(lambda: _speaks_tls(where))
    for error in errors:
        text = str(error)
        if isinstance(error, AuthenticationFailed) or "Authentication" in text or "requires authentication" in text:
            if username is None:
                return (
                    f"Cassandra at {where} requires a password: set WALSTREAM_CASSANDRA_USERNAME and "
                    f"WALSTREAM_CASSANDRA_PASSWORD (or _PASSWORD_FILE)"
                )
            return (
                f"Cassandra at {where} refused user {username!r}: check WALSTREAM_CASSANDRA_USERNAME and "
                f"WALSTREAM_CASSANDRA_PASSWORD (or _PASSWORD_FILE)"
            )
        if _tls_refusal(error, text):
            return (
                f"TLS with Cassandra at {where} failed ({_first_line(text)}): check WALSTREAM_CASSANDRA_CA_FILE "
                f"and WALSTREAM_CASSANDRA_VERIFY_HOSTNAME"
            )
        if not tls and speaks_tls():
            # A node that requires TLS drops a plaintext handshake without a word.
            return (
                f"Cassandra at {where} speaks TLS and this client does not: set WALSTREAM_CASSANDRA_TLS=true and "
                f"WALSTREAM_CASSANDRA_CA_FILE"
            )
    return None


def check_elasticsearch(endpoints: Endpoints, timeout: float = 15.0) -> None:
    security = endpoints.security.elasticsearch
    url = endpoints.elasticsearch_url
    es = new_client(url, security, request_timeout=timeout, max_retries=0)
    try:
        es.cluster.health()
    except AuthenticationException:
        if security.username is None and security.api_key is None:
            raise AccessRefused(
                f"Elasticsearch at {url} requires credentials: set WALSTREAM_ELASTICSEARCH_USERNAME and "
                f"WALSTREAM_ELASTICSEARCH_PASSWORD, or WALSTREAM_ELASTICSEARCH_API_KEY"
            ) from None
        raise AccessRefused(
            f"Elasticsearch at {url} refused the credentials: check WALSTREAM_ELASTICSEARCH_USERNAME and "
            f"WALSTREAM_ELASTICSEARCH_PASSWORD (or _API_KEY)"
        ) from None
    except TlsError as exc:
        raise AccessRefused(
            f"TLS with Elasticsearch at {url} failed ({_first_line(exc.message)}): check "
            f"WALSTREAM_ELASTICSEARCH_CA_FILE or WALSTREAM_ELASTICSEARCH_FINGERPRINT"
        ) from None
    except TransportConnectionError:
        if url.startswith("http://") and _speaks_tls(urlsplit(url).netloc.rpartition("@")[2]):
            raise AccessRefused(
                f"Elasticsearch at {url} serves https: use an https:// address in WALSTREAM_ELASTICSEARCH_URL"
            ) from None
    except (ConnectionTimeout, AuthorizationException, ApiError):
        pass  # slow, busy or away (an outage), or the credentials were taken and a privilege is missing
    finally:
        es.close()


def _tls_refusal(error: object, text: str) -> bool:
    """A TLS handshake that failed on its merits (the certificate, or a plaintext server), not one cut short."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return True
    return any(sign in text for sign in ("CERTIFICATE_VERIFY_FAILED", "WRONG_VERSION_NUMBER", "certificate verify"))


def _speaks_tls(address: str, timeout: float = 5.0) -> bool:
    """Whether ``host:port`` completes a TLS handshake (its certificate unchecked: this only asks which protocol
    it speaks, nothing is sent over it). False where nothing listens or it speaks something else."""
    host, _, port = address.strip().rpartition(":")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    name = host.strip("[]")
    try:
        with (
            socket.create_connection((name, int(port)), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=name),
        ):
            return True
    except (OSError, ValueError):
        return False


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0][:200] if text.strip() else "no detail"
