"""A worker's Faust runtime without the sinks, for the contract tests: the same app, transport and Batcher.

    python -m tests.integration.faust_harness TOPIC GROUP OUT [--crash-at PARTITION:OFFSET] [--delay S]
        [--lose-at PARTITION:OFFSET]

It consumes TOPIC in consumer group GROUP exactly as a fan-out agent does (chunked delivery, a Batcher with
pipelined batches, acknowledgements in order) and appends one line per delivered chunk to OUT:

    chunk <partition> <first offset> <last offset> <records>

written when the chunk is processed, before it is acknowledged. With --crash-at it exits at once (code 70,
nothing acknowledged) when a chunk containing that record is processed, as a worker killed mid-chunk would.
With --lose-at the first chunk fetched with that record is never handed to the agent (its partition's position
has moved past it all the same): the fault the consumer's lost-fetch check must repair.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import faust
from faust.types import TP

from streams.pipeline.batching import Batcher
from streams.worker.app import _Consumer, new_app, use_uvloop


def lose_chunk(partition: int, offset: int) -> None:
    """Drop the first chunk of ``partition`` that holds ``offset`` between the fetch and the agent, once."""
    fetch = _Consumer.getmany
    lost: list[int] = []

    async def lossy(self: _Consumer, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
        async for tp, message in fetch(self, timeout):
            records = message.value if isinstance(message.value, list) else []
            if not lost and tp.partition == partition and records and records[0].offset <= offset <= message.offset:
                lost.append(message.offset)
                print(
                    f"harness lost chunk {partition} {records[0].offset} {message.offset}", file=sys.stderr, flush=True
                )
                continue
            yield tp, message

    _Consumer.getmany = lossy  # type: ignore[method-assign]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("topic")
    parser.add_argument("group")
    parser.add_argument("out")
    parser.add_argument("--bootstrap", default=os.environ.get("HARNESS_BOOTSTRAP", "127.0.0.1:19092"))
    parser.add_argument("--crash-at", help="PARTITION:OFFSET")
    parser.add_argument("--delay", type=float, default=0.0, help="up to this many seconds of work per batch")
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--lose-at", help="PARTITION:OFFSET")
    args = parser.parse_args()
    crash = tuple(int(x) for x in args.crash_at.split(":")) if args.crash_at else None
    if args.lose_at:
        lose_chunk(*(int(x) for x in args.lose_at.split(":")))
    out = Path(args.out)

    use_uvloop()
    app = new_app(args.group, args.bootstrap, out.parent / f"data-{os.getpid()}")
    app.chunk(args.topic)
    topic = app.topic(args.topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    def write(line: str) -> None:
        with out.open("a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    async def agent(stream: Any) -> None:
        manual = stream.noack()

        async def process(events: list[Any]) -> None:
            if args.delay:
                await asyncio.sleep(random.uniform(0, args.delay))
            for event in events:
                records = event.value
                if not records:  # an empty chunk: only transaction markers or aborted records were read
                    write(f"empty {event.message.partition} {event.message.offset} {event.message.offset} 0")
                    continue
                partition, first, last = records[0].partition, records[0].offset, event.message.offset
                if crash is not None and crash[0] == partition and first <= crash[1] <= last:
                    write(f"crash {partition} {first} {last} {len(records)}")
                    sys.stderr.flush()
                    os._exit(70)
                write(f"chunk {partition} {first} {last} {len(records)}")

        async def ack(events: list[Any]) -> None:
            for event in events:
                await manual.ack(event)

        def fatal(exc: BaseException) -> None:
            print(f"harness batch failed: {exc!r}", file=sys.stderr, flush=True)
            os._exit(71)

        batcher = Batcher(process, ack, args.batch, 0.05, fatal, size=lambda e: len(e.value))
        async for event in manual.events():
            await batcher.add(event)
        await batcher.flush()

    app.agent(topic, name="harness")(agent)
    worker = faust.Worker(app, loglevel="WARNING", quiet=True, redirect_stdouts=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
