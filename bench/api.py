"""Throughput and latency of the WriteToLog gRPC API against raw confluent-kafka produce on the same broker, same run.

    .venv/bin/python bench/api.py [--duration 10] [--concurrency 64] [--payload-bytes 128]

What it measures (DESIGN.md, "How we measure"):

* raw bounds, same topic, same encoded WalEntry bytes, the API's producer settings (acks=all, idempotence, lz4,
  its 1 ms linger):
  - ``raw max``: one confluent-kafka producer pipelining N records as fast as Python hands them over;
  - ``raw closed``: the same producer with ``--concurrency`` writes in flight, each awaiting its ack (the shape of
    the API load, so its latency is the like-for-like bound);
* ``api max``: a WriteToLog server in its own process (``streams.api.processes.serve_processes``) and ``--concurrency``
  asyncio callers in this process, closed loop, for ``--duration`` seconds; every answer must be durable=TRUE;
* ``api half``: an open-loop load at half of the measured ``api max`` rate; latency counts from each call's
  scheduled start, so a stall is not hidden (no coordinated omission);
* ``api stream``: WriteStream on the same server, ``--concurrency`` entries in flight over one stream per channel,
  closed loop; its ratio to ``raw closed`` is the like-for-like figure;
* ``api max, 2 processes``: the unary closed loop again against ``--processes 2`` (SO_REUSEPORT; the kernel
  spreads the channels, not the calls, over the processes).

Prints a table and one JSON line (prefixed ``BENCH_JSON``). Everything it creates (namespace topics, the temporary
folder, the server process, stopped by its pid) is removed at the end, also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402
from confluent_kafka import Producer  # noqa: E402

from connectors.kafka.admin import KafkaAdmin  # noqa: E402
from connectors.kafka.config import producer_config  # noqa: E402
from connectors.kafka.producer import DurableProducer  # noqa: E402
from streams import topics  # noqa: E402
from streams.api.server import ServerOptions  # noqa: E402
from streams.codec import Codec  # noqa: E402
from streams.config import StackMode, load_settings  # noqa: E402
from streams.model import Op, new_entry  # noqa: E402
from streams.namespaces import Namespace, load_namespace  # noqa: E402
from streams.ports import Durable  # noqa: E402
from streams.worker.targets import topic_specs  # noqa: E402


class BenchError(RuntimeError):
    """The benchmark cannot run or its results are not trustworthy (for example a write was not durable)."""


@dataclass(frozen=True, slots=True)
class Figure:
    name: str
    acks: int
    seconds: float
    p50_ms: float
    p99_ms: float
    p999_ms: float = float("nan")

    @property
    def per_second(self) -> float:
        return self.acks / self.seconds if self.seconds else 0.0


def percentile(values: Sequence[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def figure(name: str, latencies_s: Sequence[float], seconds: float) -> Figure:
    return Figure(
        name,
        len(latencies_s),
        seconds,
        percentile(latencies_s, 0.5) * 1e3,
        percentile(latencies_s, 0.99) * 1e3,
        percentile(latencies_s, 0.999) * 1e3,
    )


# -- setup -------------------------------------------------------------------------------------------------------------


def resolve_bootstrap(explicit: str | None) -> str:
    if explicit:
        return explicit
    settings = load_settings()
    if settings.mode is StackMode.EXTERNAL:
        return settings.external.kafka_bootstrap
    if settings.mode is not StackMode.LOCAL:
        raise BenchError(f"WALSTREAM_STACK_MODE={settings.mode.value}: pass --bootstrap")
    from connectors.local.stack import LocalStack

    stack = LocalStack(settings.local)
    if "kafka" not in stack.pids():
        raise BenchError("the local Kafka is not running; start it with `walstream stack up`")
    return stack.endpoints().kafka_bootstrap


def make_namespace(folder: Path, partitions: int) -> Path:
    name = f"bench{uuid.uuid4().hex[:10]}"
    document = {
        "name": name,
        "partitions": partitions,
        "payload": {"format": "json"},
        "targets": {"search": {"type": "elasticsearch", "index": name, "fields": {"sku": "keyword"}}},
        "authorization": {"producers": ["*"]},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def payload_of(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes (at least the empty-field minimum)."""
    base = len(b'{"sku":""}')
    return json.dumps({"sku": "x" * max(0, size - base)}, separators=(",", ":")).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def server_process(
    bootstrap: str, namespace_file: Path, port: int, max_in_flight: int, processes: int = 1
) -> Iterator[int]:
    """The API server in its own process (so it has its own interpreter lock), with ``processes`` server
    processes under it when more than one; stopped by its pid."""
    command = [sys.executable, str(Path(__file__).resolve()), "--serve", bootstrap, str(namespace_file), str(port)]
    command += ["--max-in-flight", str(max_in_flight), "--processes", str(processes)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield process.pid
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        if process.returncode not in (0, -signal.SIGTERM):
            err = process.stderr.read().decode(errors="replace")[-2000:] if process.stderr else ""
            print(f"server exited with {process.returncode}: {err}", file=sys.stderr)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process and its live children have used so far (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        children.update(int(c) for c in (task / "children").read_text().split())
    return own + sum(cpu_seconds(child) for child in children)


def wait_serving(target: str, timeout_s: float = 60.0) -> None:
    from streams.client.grpc import ApiError, WalClient

    deadline = time.monotonic() + timeout_s
    with WalClient(target, timeout_s=2) as client:
        while True:
            try:
                if client.health() == "SERVING":
                    return
            except ApiError:
                pass
            if time.monotonic() > deadline:
                raise BenchError(f"the API server at {target} did not become healthy in {timeout_s:.0f}s")
            time.sleep(0.2)


# -- raw bounds --------------------------------------------------------------------------------------------------------


def raw_values(ns: Namespace, payload: bytes, count: int) -> list[tuple[bytes, bytes]]:
    codec = Codec()
    return [
        (f"raw-{i}".encode(), codec.encode_entry(new_entry(ns.name, f"raw-{i}", Op.UPSERT, payload)))
        for i in range(count)
    ]


def raw_max(bootstrap: str, topic: str, values: Sequence[tuple[bytes, bytes]]) -> Figure:
    producer = Producer(producer_config(bootstrap, {"linger.ms": ServerOptions().linger_ms}))
    latencies: list[float] = []
    failures: list[str] = []

    def produce_all() -> None:
        for key, value in values:
            sent = time.perf_counter()

            def report(err: object, _msg: object, sent: float = sent) -> None:
                if err is not None:
                    failures.append(str(err))
                else:
                    latencies.append(time.perf_counter() - sent)

            while True:
                try:
                    producer.produce(topic, key=key, value=value, on_delivery=report)
                    break
                except BufferError:
                    producer.poll(0.01)
            producer.poll(0)

    started = time.perf_counter()
    produce_all()
    producer.flush(60)
    elapsed = time.perf_counter() - started
    if failures:
        raise BenchError(f"raw produce failed: {failures[:3]}")
    return figure("raw max (pipelined)", latencies, elapsed)


async def raw_closed(bootstrap: str, topic: str, values: Sequence[tuple[bytes, bytes]], concurrency: int,
                     duration_s: float) -> Figure:  # fmt: skip
    # The API's producer settings (its shorter linger), so the API is compared with what its own producer can do.
    producer = DurableProducer(bootstrap, {"linger.ms": ServerOptions().linger_ms})
    latencies: list[float] = []
    stop_at = time.perf_counter() + duration_s

    async def worker(offset: int) -> None:
        index = offset
        while time.perf_counter() < stop_at:
            key, value = values[index % len(values)]
            started = time.perf_counter()
            delivery = await producer.send(topic, key, value)
            if delivery.durable is not Durable.TRUE:
                raise BenchError(f"raw closed-loop produce not durable: {delivery.message}")
            latencies.append(time.perf_counter() - started)
            index += concurrency

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    await asyncio.get_running_loop().run_in_executor(None, producer.close, 30.0)
    return figure(f"raw closed ({concurrency} in flight)", latencies, elapsed)


# -- API load ----------------------------------------------------------------------------------------------------------


def quiet_collector() -> None:
    """The bench process holds every request and the earlier phases' figures: a full collection scanning them
    stalls this client for tens of milliseconds, which would show up as the server's latency. They live until the
    end of the run anyway, so they are moved out of the collector's way before each API phase."""
    gc.collect()
    gc.freeze()


def _requests(ns: Namespace, payload: bytes, count: int) -> list[bytes]:
    from streams.api import messages
    from streams.client.grpc import write_request

    return [messages.encode_write_request(write_request(ns.name, f"api-{i}", "UPSERT", payload)) for i in range(count)]


async def api_closed(target: str, requests: Sequence[bytes], concurrency: int, duration_s: float, warmup_s: float,
                     channels: int) -> Figure:  # fmt: skip
    import grpc

    from streams.api import messages

    quiet_collector()
    pool = [grpc.aio.insecure_channel(target) for _ in range(channels)]
    calls = [channel.unary_unary(messages.WRITE_TO_LOG) for channel in pool]
    latencies: list[float] = []
    problems: list[str] = []
    measuring_from = time.perf_counter() + warmup_s
    stop_at = measuring_from + duration_s

    async def worker(offset: int) -> None:
        call = calls[offset % len(calls)]
        index = offset
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            answer = messages.decode_write_response(await call(requests[index % len(requests)], timeout=30))
            if answer.durable is not Durable.TRUE:
                problems.append(f"{answer.durable.value}: {answer.message}")
            elif started >= measuring_from:
                latencies.append(time.perf_counter() - started)
            index += concurrency

    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - measuring_from
    for channel in pool:
        await channel.close()
    if problems:
        raise BenchError(f"{len(problems)} API writes were not durable, e.g. {problems[:3]}")
    return figure(f"api max ({concurrency} in flight)", latencies, elapsed)


def _stream_requests(ns: Namespace, payload: bytes, count: int) -> list[tuple[int, bytes]]:
    """Pre-encoded WriteStream entries (request id = index + 1), so the client's own cost stays small."""
    from streams.api import messages
    from streams.client.grpc import write_request

    return [
        (i + 1, messages.encode_stream_entry(i + 1, write_request(ns.name, f"stream-{i}", "UPSERT", payload)))
        for i in range(count)
    ]


async def api_stream(target: str, requests: Sequence[tuple[int, bytes]], concurrency: int, duration_s: float,
                     warmup_s: float, channels: int) -> Figure:  # fmt: skip
    """WriteStream, closed loop: ``concurrency`` entries in flight in total, spread over one stream per channel;
    each answer lets the next entry go. Like the SDK's client, the entries that may go at the same moment go in
    one message."""
    import grpc

    quiet_collector()

    from streams.api import messages

    pool = [grpc.aio.insecure_channel(target) for _ in range(channels)]
    latencies: list[float] = []
    problems: list[str] = []
    measuring_from = time.perf_counter() + warmup_s
    stop_at = measuring_from + duration_s

    async def one_stream(index: int, in_flight: int) -> None:
        call = pool[index].stream_stream(messages.WRITE_STREAM)(timeout=duration_s + warmup_s + 60)
        free = in_flight
        room = asyncio.Event()
        room.set()
        sent_at: dict[int, float] = {}
        position = index

        async def send() -> None:
            nonlocal position, free
            while time.perf_counter() < stop_at:
                await room.wait()
                parts = []
                now = time.perf_counter()
                while free:
                    free -= 1
                    request_id, data = requests[position % len(requests)]
                    position += channels
                    # Ids must be unique among a stream's entries awaiting answers: wrap-around is far beyond that.
                    sent_at[request_id] = now
                    parts.append(data)
                room.clear()
                await call.write(b"".join(parts))
            await call.done_writing()

        sender = asyncio.create_task(send())
        async for data in call:
            now = time.perf_counter()
            for answer in messages.decode_stream_response(data):
                started = sent_at.pop(answer.request_id)
                free += 1
                if answer.delivery is None or answer.delivery.durable is not Durable.TRUE:
                    problems.append(str(answer.rejection or answer.delivery))
                elif started >= measuring_from and now <= stop_at:
                    latencies.append(now - started)
            room.set()
        await sender

    shares = [concurrency // channels + (1 if i < concurrency % channels else 0) for i in range(channels)]
    await asyncio.gather(*(one_stream(i, share) for i, share in enumerate(shares) if share))
    elapsed = stop_at - measuring_from
    for channel in pool:
        await channel.close()
    if problems:
        raise BenchError(f"{len(problems)} stream entries were not durable, e.g. {problems[:3]}")
    return figure(f"api stream ({concurrency} in flight)", latencies, elapsed)


async def api_open(target: str, requests: Sequence[bytes], rate: float, duration_s: float, channels: int) -> Figure:
    import grpc

    quiet_collector()

    from streams.api import messages

    pool = [grpc.aio.insecure_channel(target) for _ in range(channels)]
    calls = [channel.unary_unary(messages.WRITE_TO_LOG) for channel in pool]
    latencies: list[float] = []
    problems: list[str] = []
    total = int(rate * duration_s)
    start = time.perf_counter() + 0.2

    shed: list[int] = []

    async def one(index: int, scheduled: float) -> None:
        try:
            data = await calls[index % len(calls)](requests[index % len(requests)], timeout=30)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            shed.append(index)  # the server's load shedding, counted apart from the acks
            return
        answer = messages.decode_write_response(data)
        if answer.durable is not Durable.TRUE:
            problems.append(answer.message)
        latencies.append(time.perf_counter() - scheduled)

    tasks = []
    for index in range(total):
        scheduled = start + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index, scheduled)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    for channel in pool:
        await channel.close()
    if problems:
        raise BenchError(f"{len(problems)} API writes were not durable, e.g. {problems[:3]}")
    return figure(f"api half ({rate:.0f}/s offered, {len(shed)} shed)", latencies, elapsed)


# -- main --------------------------------------------------------------------------------------------------------------


def serve_main(bootstrap: str, namespace_file: str, port: int, max_in_flight: int, processes: int) -> int:
    from streams.api.processes import serve_processes
    from streams.api.server import ServerOptions

    ns = load_namespace(namespace_file)
    options = ServerOptions(host="127.0.0.1", port=port, max_in_flight=max_in_flight)
    return serve_processes(bootstrap, {ns.name: ns}, options, processes)


def run(args: argparse.Namespace) -> dict[str, object]:
    bootstrap = resolve_bootstrap(args.bootstrap)
    payload = payload_of(args.payload_bytes)
    admin = KafkaAdmin(bootstrap)
    with tempfile.TemporaryDirectory(prefix="walstream-bench-api-") as tmp:
        ns_file = make_namespace(Path(tmp), args.partitions)
        ns = load_namespace(ns_file)
        admin.ensure_topics(topic_specs(ns))
        topic = topics.wal_topic(ns.name)
        try:
            values = raw_values(ns, payload, args.raw_messages)
            print(f"namespace {ns.name}: {args.partitions} partitions, payload {len(payload)} B, "
                  f"WalEntry record {len(values[0][1])} B", flush=True)  # fmt: skip
            figures = [raw_max(bootstrap, topic, values)]
            figures.append(asyncio.run(raw_closed(bootstrap, topic, values, args.concurrency, args.duration)))
            port = free_port()
            target = f"127.0.0.1:{port}"
            requests = _requests(ns, payload, 50_000)
            stream_requests = _stream_requests(ns, payload, 100_000)
            with server_process(bootstrap, ns_file, port, max(args.concurrency * 2, 256)) as pid:
                wait_serving(target)
                cpu_before, wall_before = cpu_seconds(pid), time.perf_counter()
                api_max = asyncio.run(
                    api_closed(target, requests, args.concurrency, args.duration, args.warmup, args.channels)
                )
                server_cpu = cpu_seconds(pid) - cpu_before
                server_busy = server_cpu / (time.perf_counter() - wall_before)
                figures.append(api_max)
                half = api_max.per_second / 2
                figures.append(asyncio.run(api_open(target, requests, half, args.duration, args.channels)))
                cpu_before = cpu_seconds(pid)
                stream = asyncio.run(
                    api_stream(target, stream_requests, args.concurrency, args.duration, args.warmup, args.channels)
                )
                stream_cpu = cpu_seconds(pid) - cpu_before
                figures.append(stream)
            port = free_port()
            target = f"127.0.0.1:{port}"
            with server_process(bootstrap, ns_file, port, max(args.concurrency * 2, 256), processes=2):
                wait_serving(target)
                two = asyncio.run(
                    api_closed(target, requests, args.concurrency, args.duration, args.warmup, args.channels)
                )
                figures.append(replace(two, name=f"api max, 2 processes ({args.concurrency} in flight)"))
        finally:
            admin.delete_topics(ns.topics())
    raw_best, raw_like = figures[0], figures[1]
    api_max, api_half, stream, two = figures[2], figures[3], figures[4], figures[5]
    print(f"\n{'':38} {'acks/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'acks':>8}")
    for f in figures:
        print(f"{f.name:38} {f.per_second:10.0f} {f.p50_ms:8.2f} {f.p99_ms:8.2f} {f.p999_ms:9.2f} {f.acks:8d}")
    ratio_max = api_max.per_second / raw_best.per_second
    ratio_like = api_max.per_second / raw_like.per_second
    ratio_stream = stream.per_second / raw_like.per_second
    print(f"\nunary api max / raw max: {ratio_max:.3f}   unary api max / raw closed: {ratio_like:.3f}")
    print(f"WriteStream / raw closed (same {args.concurrency} in flight): {ratio_stream:.3f}")
    print(f"unary rate: {api_max.per_second:.0f}/s with --processes 1, {two.per_second:.0f}/s with --processes 2")
    print(
        f"unary p99 at half load ({half:.0f}/s offered): {api_half.p99_ms:.2f} ms "
        f"(p50 {api_half.p50_ms:.2f} ms, p99.9 {api_half.p999_ms:.2f} ms)"
    )
    # The CPU was measured over warm-up plus measurement; the rate holds for both.
    per_write_us = server_cpu / max(api_max.per_second * (args.duration + args.warmup), 1) * 1e6
    per_entry_us = stream_cpu / max(stream.per_second * (args.duration + args.warmup), 1) * 1e6
    print(f"server process at unary max load: {server_busy:.0%} of one core; {per_write_us:.0f} us CPU per write")
    print(f"server CPU per WriteStream entry: {per_entry_us:.0f} us")
    result: dict[str, object] = {
        "figures": [{**asdict(f), "per_second": f.per_second} for f in figures],
        "ratio_api_to_raw_max": ratio_max,
        "ratio_api_to_raw_closed": ratio_like,
        "ratio_stream_to_raw_closed": ratio_stream,
        "unary_rate_processes_1": api_max.per_second,
        "unary_rate_processes_2": two.per_second,
        "half_load_rate": half,
        "p99_half_load_ms": api_half.p99_ms,
        "p999_half_load_ms": api_half.p999_ms,
        "server_cores_busy_at_max": server_busy,
        "server_cpu_us_per_unary_write": per_write_us,
        "server_cpu_us_per_stream_entry": per_entry_us,
        "payload_bytes": len(payload),
        "concurrency": args.concurrency,
        "cpus": os.cpu_count(),
    }
    print("BENCH_JSON " + json.dumps(result))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--bootstrap", help="Kafka bootstrap (default: the configured stack's)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of API load before measuring")
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight in the closed-loop phases")
    parser.add_argument("--channels", type=int, default=4, help="gRPC channels (connections) the callers share")
    parser.add_argument("--payload-bytes", type=int, default=128, help="payload size (Netflix's model: 128 B)")
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--raw-messages", type=int, default=100_000, help="records in the raw max phase")
    parser.add_argument("--serve", nargs=3, metavar=("BOOTSTRAP", "NAMESPACE_FILE", "PORT"), help=argparse.SUPPRESS)
    parser.add_argument("--max-in-flight", type=int, default=256, help=argparse.SUPPRESS)
    parser.add_argument("--processes", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        bootstrap, namespace_file, port = args.serve
        return serve_main(bootstrap, namespace_file, int(port), args.max_in_flight, args.processes)
    try:
        run(args)
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
