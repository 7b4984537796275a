"""The worker of namespaces with ``backend: sqs``: long-polled receives feed the same pipeline core as the Kafka
worker's agent (FanoutProcessor, Applier, sinks), and a message is deleted only once its outcome is durable."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass

from connectors.endpoints import Endpoints
from connectors.kafka.admin import KafkaAdmin
from connectors.kafka.producer import DurableProducer
from connectors.sqs.client import ENDPOINT_SETTING, SqsAccess, SqsUnavailable, decode_body
from connectors.sqs.consumer import QueueClient, Received
from streams import topics
from streams.codec import Codec, DecodeError
from streams.core.dependencies import Dependencies
from streams.core.flood import FloodGuard
from streams.core.schedule import due_ms, queue_delay_s
from streams.health import HealthServer
from streams.metrics import Metrics
from streams.model import Origin
from streams.namespaces import Namespace
from streams.pipeline.apply import Record
from streams.pipeline.build import build_applier, delete_pacers
from streams.pipeline.fanout import FanoutProcessor
from streams.sqs_settings import SqsSettings
from streams.worker.process import WORKER_DELIVERY_TIMEOUT_MS, dependency_names
from streams.worker.sqs_followups import QueueFollowUps, QueueTable, Tracker
from streams.worker.targets import Connections, build_sinks, topic_specs

log = logging.getLogger(__name__)

#: A message received this close before its entry is due waits in the worker; an earlier one goes back to the
#: queue with the rest of its delay. SQS delays are whole seconds, rounded down so none is released late.
HOLD_MS = 3_000
#: A pipeline batch: what the receives brought within this long, at most this many messages.
BATCH_WITHIN_S = 0.05
BATCH_MAX = 500
BATCHES_IN_FLIGHT = 3


@dataclass(frozen=True, slots=True)
class SqsWorkerOptions:
    sqs: SqsSettings
    flood_hold_s: float = 30.0
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"


def require_sqs(namespaces: Sequence[Namespace], endpoints: Endpoints) -> SqsAccess:
    """The SQS endpoint, or an error naming the setting when SQS namespaces have none."""
    if endpoints.sqs is None:
        names = ", ".join(ns.name for ns in namespaces)
        raise SqsUnavailable(
            f"namespace(s) {names} use backend sqs and no SQS endpoint is configured; set {ENDPOINT_SETTING}"
        )
    return endpoints.sqs


class QueueRunner:
    """One SQS namespace: ``receives`` long-poll loops (up to 10 messages each) feeding pipeline batches."""

    def __init__(
        self,
        ns: Namespace,
        queue: QueueClient,
        kafka: DurableProducer,
        connections: Connections,
        metrics: Metrics,
        options: SqsWorkerOptions,
        dependencies: Dependencies,
    ) -> None:
        self.ns = ns
        self.queue = queue
        self.codec = Codec()
        self.tracker = Tracker()
        self.table = QueueTable()
        self.options = options
        self.applied_batches = 0
        follow_ups = QueueFollowUps(ns.name, queue, self.tracker, kafka, self.codec)
        self._applier = build_applier(
            ns,
            build_sinks(ns, connections, kafka),
            follow_ups,
            metrics,
            guard=FloodGuard(ns.name, ns.retry.dlq_max_per_minute, metrics),
            pacers=delete_pacers(ns),
            codec=self.codec,
            hold_s=options.flood_hold_s,
            dependencies=dependencies,
        )
        self._processor = FanoutProcessor(self._applier, self.table)
        self._held: set[asyncio.Task[None]] = set()  # messages due within HOLD_MS, waiting to be applied

    async def run(self, stop: asyncio.Event) -> None:
        """Receive loops fill an inbox; one loop takes what arrived together (up to ``BATCH_MAX`` messages) as
        one pipeline batch, with up to ``BATCHES_IN_FLIGHT`` batches pipelined (the FanoutProcessor keeps them in
        order)."""
        inbox: asyncio.Queue[Received] = asyncio.Queue(maxsize=BATCH_MAX * 2)
        loops = [asyncio.create_task(self._receive(stop, inbox)) for _ in range(self.options.sqs.receives)]
        batching = asyncio.create_task(self._batches(stop, inbox))
        try:
            await asyncio.gather(*loops)
            await batching
        finally:
            for task in [*loops, batching]:
                task.cancel()
            await asyncio.gather(*loops, batching, return_exceptions=True)

    async def _receive(self, stop: asyncio.Event, inbox: asyncio.Queue[Received]) -> None:
        while not stop.is_set():
            try:
                messages = await self.queue.receive()
            except Exception as exc:  # noqa: BLE001 - the queue is away; try again shortly
                log.warning("receive from %s failed: %s", self.queue.queue, exc, extra={"namespace": self.ns.name})
                await asyncio.sleep(1.0)
                continue
            for message in messages:
                await inbox.put(message)

    async def _batches(self, stop: asyncio.Event, inbox: asyncio.Queue[Received]) -> None:
        slots = asyncio.Semaphore(BATCHES_IN_FLIGHT)
        running: set[asyncio.Task[None]] = set()
        while not (stop.is_set() and inbox.empty()):
            try:
                first = await asyncio.wait_for(inbox.get(), timeout=0.5)
            except TimeoutError:
                continue
            batch = [first]
            until = time.monotonic() + BATCH_WITHIN_S
            while len(batch) < BATCH_MAX:
                try:
                    batch.append(await asyncio.wait_for(inbox.get(), timeout=max(until - time.monotonic(), 0.0)))
                except TimeoutError:
                    break
            await slots.acquire()
            task = asyncio.create_task(self.handle(batch))
            running.add(task)
            task.add_done_callback(running.discard)
            task.add_done_callback(lambda _: slots.release())
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        if self._held:
            await asyncio.gather(*self._held, return_exceptions=True)

    async def handle(self, messages: Sequence[Received]) -> None:
        """Apply what is due, hold what is due within moments, send the rest back with the rest of its delay."""
        now = int(time.time() * 1000)
        ready: list[tuple[Received, bytes]] = []
        held: list[tuple[Received, bytes]] = []
        later: list[tuple[Received, int]] = []
        for message in messages:
            raw = decode_body(message.body)
            value = raw if raw is not None else message.body.encode("utf-8", "replace")
            due = 0
            if raw is not None:
                with contextlib.suppress(DecodeError):
                    due = due_ms(self.codec.decode_entry(raw))
            if due - now > HOLD_MS:
                later.append((message, due))
            elif due > now:
                held.append((message, value))
            else:
                ready.append((message, value))
        if later:
            await self._requeue(later)
        if ready:
            await self._apply(ready)
        if held:  # waits on its own, so the batches behind it do not
            wait = max(due_ms(self.codec.decode_entry(value)) for _, value in held) - time.time() * 1000
            task = asyncio.create_task(self._apply_at(max(wait, 0.0) / 1000, held))
            self._held.add(task)
            task.add_done_callback(self._held.discard)

    async def _apply_at(self, wait_s: float, batch: Sequence[tuple[Received, bytes]]) -> None:
        await asyncio.sleep(wait_s)
        await self._apply(batch)

    async def _requeue(self, later: Sequence[tuple[Received, int]]) -> None:
        """A delay longer than one message may carry: sent again with the rest of it, then the old one deleted."""
        cap = self.options.sqs.max_delay_s
        done: list[str] = []
        for message, due in later:
            delay = max(queue_delay_s(due, int(time.time() * 1000), cap), 0)
            try:
                await self.queue.send(message.body, message.attributes, delay)
            except Exception as exc:  # noqa: BLE001 - it comes back after its visibility timeout
                log.warning("re-queueing a delayed entry failed: %s", exc, extra={"namespace": self.ns.name})
                continue
            done.append(message.receipt)
        if done:
            with contextlib.suppress(Exception):
                await self.queue.delete(done)

    async def _apply(self, batch: Sequence[tuple[Received, bytes]]) -> None:
        offsets = [self.tracker.add(message) for message, _ in batch]
        records = [
            Record(
                key=None,
                value=value,
                origin=Origin(self.queue.queue, 0, offset),
                attempt=max(message.receive_count - 1, 0),
                first_error=self.tracker.messages[offset].first_error,
            )
            for offset, (message, value) in zip(offsets, batch, strict=True)
        ]
        try:
            await self._processor.process(records)
        except Exception as exc:  # noqa: BLE001 - not deleted: the messages are received again later
            log.warning(
                "a batch of %d messages of %s was not applied durably (%s); they come back after their visibility "
                "timeout",
                len(records),
                self.ns.name,
                exc,
                extra={"namespace": self.ns.name},
            )
            self._processor = FanoutProcessor(self._applier, self.table)
            for offset in offsets:
                self.tracker.messages.pop(offset, None)
            return
        receipts = [self.tracker.messages[o].message.receipt for o in offsets if not self.tracker.messages[o].kept]
        for offset in offsets:
            self.tracker.messages.pop(offset, None)
        try:
            failed = await self.queue.delete(receipts)
        except Exception as exc:  # noqa: BLE001 - applied already; a second delivery is idempotent
            log.warning("deleting applied messages failed: %s", exc, extra={"namespace": self.ns.name})
            return
        if failed:
            log.warning("%d applied messages were not deleted; they are applied again, idempotently", len(failed))
        self.applied_batches += 1


class SqsWorker:
    """Every SQS namespace of one `walstream worker` process, on one event loop."""

    def __init__(
        self, endpoints: Endpoints, namespaces: Sequence[Namespace], options: SqsWorkerOptions, metrics: Metrics
    ) -> None:
        if not namespaces:
            raise ValueError("a worker needs at least one namespace")
        self.endpoints = endpoints
        self.access = require_sqs(namespaces, endpoints)
        self.namespaces = list(namespaces)
        self.options = options
        self.metrics = metrics
        self.dependencies = Dependencies(metrics, dependency_names(self.namespaces))
        self.runners: list[QueueRunner] = []
        self._stop: asyncio.Event | None = None

    def ensure_topics(self) -> None:
        admin = KafkaAdmin(self.endpoints.kafka)
        for ns in self.namespaces:
            admin.ensure_topics(topic_specs(ns))

    async def serve(self) -> None:
        self._stop = stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        sqs = self.options.sqs
        kafka = DurableProducer(self.endpoints.kafka, {"delivery.timeout.ms": WORKER_DELIVERY_TIMEOUT_MS})
        connections = Connections(self.endpoints)
        queues: list[QueueClient] = []
        try:
            for ns in self.namespaces:
                queue = QueueClient(
                    self.access,
                    topics.sqs_queue(ns.name),
                    topics.sqs_dlq_queue(ns.name),
                    sqs.visibility_s,
                    sqs.wait_s,
                    pool=sqs.receives * 2 + 8,
                )
                queues.append(await queue.open())
                runner = QueueRunner(ns, queue, kafka, connections, self.metrics, self.options, self.dependencies)
                self.runners.append(runner)
                log.info(
                    "reading queue %s at %s with %d receives in flight",
                    queue.queue,
                    self.access.describe(),
                    sqs.receives,
                    extra={"namespace": ns.name},
                )
            await asyncio.gather(*(runner.run(stop) for runner in self.runners))
        finally:
            for queue in queues:
                await queue.close()
            await connections.close()
            await asyncio.get_running_loop().run_in_executor(None, kafka.close)

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; returns the exit code."""
        self.ensure_topics()
        server = None
        if self.options.metrics_port is not None:
            server = HealthServer(
                self.metrics, self._health, self._health, self.options.metrics_port, self.options.metrics_host
            ).start()
            log.info("metrics and health on port %d", server.port)
        try:
            asyncio.run(self.serve())
        finally:
            if server is not None:
                server.stop()
        return 0

    def _health(self) -> tuple[bool, dict[str, object]]:
        return bool(self.runners), {"namespaces": [r.ns.name for r in self.runners], "backend": "sqs"}
