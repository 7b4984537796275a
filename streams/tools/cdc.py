"""`walstream cdc tail`: a namespace's change events as JSON lines."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any

from connectors.endpoints import Endpoints
from connectors.kafka.consumer import follow
from streams import topics
from streams.codec import Codec, DecodeError


def change_event_json(codec: Codec, value: bytes) -> dict[str, Any]:
    event = codec.decode_change_event(value)
    after: Any = None
    if event.after is not None:
        try:
            after = json.loads(event.after)
        except ValueError:
            after = event.after.hex()
    return {
        "op": event.op.value,
        "key": event.key,
        "after": after,
        "source": {
            "namespace": event.source.namespace,
            "partition": event.source.partition,
            "offset": event.source.offset,
            "sequence": event.source.sequence,
            "entry_id": event.source.entry_id,
        },
        "ts_ms": event.ts_ms,
    }


def read_cdc(
    endpoints: Endpoints, namespace: str, max_events: int, idle_timeout: float, from_beginning: bool
) -> Iterable[dict[str, Any]]:
    """The namespace's change events as dicts; an event that does not decode says so instead."""
    codec = Codec()
    records = follow(
        endpoints.kafka,
        topics.cdc_topic(namespace),
        from_beginning=from_beginning,
        idle_timeout_s=idle_timeout,
        max_records=max_events,
    )
    for record in records:
        try:
            yield change_event_json(codec, record.value)
        except DecodeError as exc:
            yield {"undecodable": str(exc), "partition": record.partition, "offset": record.offset}


def tail_cdc(endpoints: Endpoints, namespace: str, max_events: int, idle_timeout: float, from_beginning: bool) -> None:
    for event in read_cdc(endpoints, namespace, max_events, idle_timeout, from_beginning):
        sys.stdout.write(json.dumps(event) + "\n")
        sys.stdout.flush()
