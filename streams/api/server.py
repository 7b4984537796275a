"""Runs the gRPC server: WalService plus health and reflection, TLS or mTLS, /metrics, /healthz and /readyz, and a
graceful, draining shutdown."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from connectors.endpoints import Kafka
from connectors.sqs.client import SqsAccess
from streams.api import messages
from streams.api.auth import Identifies, TokenRegistry, TokensFile
from streams.api.health import ApiHealth, KafkaWatch
from streams.api.listen import ListenError, claim_port
from streams.api.service import ServiceOptions, WalService
from streams.api.validation import Limits
from streams.client.sdk import AtomicWalWriter, WalWriter
from streams.health import HealthServer
from streams.metrics import Metrics
from streams.namespaces import Namespace

log = logging.getLogger(__name__)

#: Where the API's producers connect (for modules that must not import connectors themselves).
Bootstrap = Kafka


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files of the server's certificate and key; with ``client_ca`` clients must present a certificate it
    signed (mTLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True, slots=True)
class ServerOptions:
    #: Loopback unless told otherwise: the chart sets 0.0.0.0 for a pod, where the network policy guards it.
    host: str = "127.0.0.1"
    port: int = 50051  # 0 picks a free port (tests)
    max_in_flight: int = 256
    #: WriteStream: entries one stream may have awaiting answers before the server stops reading it.
    stream_window: int = 128
    #: The producer's linger.ms (``producer_overrides`` may still set another): every call awaits its answer, so
    #: the batching wait is short; entries in flight together still share batches.
    linger_ms: float = 1.0
    tokens_file: Path | None = None
    tls: TlsFiles | None = None
    #: Shutdown waits this long for calls in flight before cancelling them.
    grace_s: float = 10.0
    ack_timeout_s: float = 35.0
    idempotency_ttl_s: float = 600.0
    idempotency_max_keys: int = 100_000
    transactional_producers: int = 2
    #: Stable per replica to fence a zombie's transactions; None picks a random one per process.
    transactional_id_prefix: str | None = None
    transaction_timeout_s: float = 10.0
    #: The largest request accepted (gRPC refuses a bigger one with RESOURCE_EXHAUSTED before any handler runs).
    max_message_bytes: int = 8 * 1024 * 1024
    limits: Limits = field(default_factory=Limits)
    #: librdkafka settings on top of connectors.kafka.config.producer_config (tests use it to force timeouts).
    producer_overrides: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    #: Where the calls are counted (walstream_api_*); None counts nothing.
    metrics: Metrics | None = None
    #: /metrics, /healthz and /readyz of ``serve`` (None: not served; 0 picks a free port).
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    #: How often the producer's reach of Kafka is checked, and how long it may fail before /healthz says 503.
    kafka_check_s: float = 1.0
    kafka_unreachable_s: float = 60.0
    #: Share the port with other processes (SO_REUSEPORT); only a supervisor of several server processes sets it.
    reuse_port: bool = False
    #: Where namespaces with ``backend: sqs`` are written (None: their writes are refused, naming the setting).
    sqs: SqsAccess | None = None
    #: The longest delay one SQS message carries (WALSTREAM_SQS_MAX_DELAY_S).
    sqs_max_delay_s: int = 900


class RunningServer:
    """A started server; ``stop`` drains calls in flight, then flushes and closes the producers."""

    def __init__(
        self,
        server: grpc.aio.Server,
        port: int,
        service: WalService,
        health: health_aio.HealthServicer,
        writer: WalWriter,
        batches: AtomicWalWriter,
        grace_s: float,
        kafka: KafkaWatch,
        tokens: TokensFile | None = None,
    ) -> None:
        self.server = server
        #: Whether the producer reaches Kafka, checked in the background.
        self.kafka = kafka
        self.tokens = tokens
        self._watch = asyncio.create_task(tokens.watch()) if tokens is not None else None
        self.port = port
        self.service = service
        self._health = health
        self._writer = writer
        self._batches = batches
        self._grace_s = grace_s
        self._stopped = False

    async def stop(self, grace_s: float | None = None) -> int:
        """Stop taking calls, let running ones finish (up to the grace period), flush Kafka; returns how many
        messages were still unacknowledged after the flush (0 in a clean shutdown)."""
        if self._stopped:
            return 0
        self._stopped = True
        if self._watch is not None:
            self._watch.cancel()
        await self._health.enter_graceful_shutdown()  # load balancers stop routing here first
        self.service.begin_shutdown()  # open streams: new entries are sent back, the accepted ones answered
        await self.server.stop(self._grace_s if grace_s is None else grace_s)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.kafka.stop)
        pending: int = await loop.run_in_executor(None, self._writer.close, 30.0)
        await loop.run_in_executor(None, self._batches.close, 10.0)
        if pending:
            log.warning("%d messages were still unacknowledged after the final flush", pending)
        return pending

    async def wait(self) -> None:
        await self.server.wait_for_termination()


def _credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    key, cert = tls.key.read_bytes(), tls.cert.read_bytes()
    client_ca = tls.client_ca.read_bytes() if tls.client_ca is not None else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca, require_client_auth=bool(client_ca))


async def start_server(bootstrap: Kafka, namespaces: Mapping[str, Namespace], options: ServerOptions) -> RunningServer:
    """Build the service and start listening; the caller owns the returned server and must ``stop`` it."""
    tokens_file = TokensFile(options.tokens_file) if options.tokens_file is not None else None
    tokens: Identifies = tokens_file if tokens_file is not None else TokenRegistry()
    overrides = {"linger.ms": options.linger_ms, **options.producer_overrides}
    writer = WalWriter(
        bootstrap, namespaces, producer_overrides=overrides, sqs=options.sqs, sqs_max_delay_s=options.sqs_max_delay_s
    )
    batches = AtomicWalWriter(
        bootstrap,
        size=options.transactional_producers,
        transactional_id_prefix=options.transactional_id_prefix,
        timeout_s=options.transaction_timeout_s,
    )
    service = WalService(
        namespaces,
        writer,
        batches,
        tokens,
        ServiceOptions(
            max_in_flight=options.max_in_flight,
            stream_window=options.stream_window,
            ack_timeout_s=options.ack_timeout_s,
            idempotency_ttl_s=options.idempotency_ttl_s,
            idempotency_max_keys=options.idempotency_max_keys,
            limits=options.limits,
        ),
        metrics=options.metrics,
    )
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", options.max_message_bytes),
            # Off unless several server processes share the port on purpose: otherwise a second server on the
            # same port would silently share it instead of failing.
            ("grpc.so_reuseport", 1 if options.reuse_port else 0),
        ]
    )
    server.add_generic_rpc_handlers([service.handler()])
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        [messages.SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    address = f"{options.host}:{options.port}"
    try:
        if options.tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, _credentials(options.tls))
        await server.start()
    except RuntimeError as exc:
        writer.close(5.0)
        raise ListenError(f"cannot listen on {address}: {exc} (is the port already in use?)") from None
    except BaseException:
        writer.close(5.0)
        raise
    gauge = options.metrics.api_kafka_up if options.metrics is not None else None
    kafka = KafkaWatch(writer.reaches_kafka, gauge, interval_s=options.kafka_check_s).start()
    await health.set(messages.SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    log.info("walstream API listening on %s:%d (%s)", options.host, port, "TLS" if options.tls else "plaintext")
    if options.tls is None and not is_loopback(options.host):
        log.warning(
            "the API serves plaintext on %s, beyond this machine: tokens and payloads cross the network in the "
            "clear; set WALSTREAM_API_TLS_CERT and WALSTREAM_API_TLS_KEY, or bind 127.0.0.1",
            options.host,
        )
    return RunningServer(server, port, service, health, writer, batches, options.grace_s, kafka, tokens_file)


def is_loopback(host: str) -> bool:
    """Whether a bind address keeps the server on this machine (a name is looked at as written)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


#: Told where the server listens: its gRPC port and the port of its /metrics, /healthz and /readyz (or None).
Announce = Callable[[int, int | None], None]


async def serve_until_signalled(
    bootstrap: Kafka, namespaces: Mapping[str, Namespace], options: ServerOptions, announce: Announce
) -> int:
    """Serve until SIGINT or SIGTERM, then drain. /readyz answers (503) from before gRPC listens until the
    producer has Kafka's metadata; 0 is returned when every write was flushed."""
    metrics = options.metrics if options.metrics is not None else Metrics()
    options = replace(options, metrics=metrics)
    health = ApiHealth(options.kafka_unreachable_s)
    http = None
    if options.metrics_port is not None:
        http = HealthServer(metrics, health.live, health.ready, options.metrics_port, options.metrics_host).start()
    try:
        running = await start_server(bootstrap, namespaces, options)
        health.listening(running.kafka)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        if running.tokens is not None:
            loop.add_signal_handler(signal.SIGHUP, running.tokens.reload)
        announce(running.port, http.port if http is not None else None)
        await stop.wait()
        health.draining()
        print("shutting down: draining calls in flight", flush=True)
        pending = await running.stop()
    finally:
        if http is not None:
            http.stop()
    return 0 if pending == 0 else 1


def run_loop(main: Callable[[], Any]) -> Any:
    """Run a coroutine function on uvloop (grpc.aio runs on it; it serves the same calls with less CPU)."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


def serve(bootstrap: Kafka, namespaces: Mapping[str, Namespace], options: ServerOptions | None = None) -> int:
    """Serve in this process until SIGINT or SIGTERM, then shut down gracefully; the exit code is 0 when every
    write was flushed. ``streams.api.processes.serve_processes`` runs several such processes on one port."""
    options = options or ServerOptions()
    if options.port != 0 and not options.reuse_port:
        claim_port(options.host, options.port)

    def announce(port: int, _metrics_port: int | None) -> None:
        print(f"walstream API serving on {options.host}:{port}", flush=True)

    code: int = run_loop(lambda: serve_until_signalled(bootstrap, namespaces, options, announce))
    return code
