"""A change-topic subscriber: materializes a namespace's `wal.<ns>.cdc` into a dict of key -> document.

    python examples/cdc_subscriber.py orders [--bootstrap 127.0.0.1:19092]

Reads the topic from its start to its current end and prints the documents as JSON. The change topic is a
per-key history in sequence order, so applying its events in topic order reproduces the stores. After a
worker crash an event may be repeated (identical: same entry id, op and sequence); applying only events newer
than the key's last one makes those repeats harmless.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from connectors.kafka.consumer import read_to_end
from streams import topics
from streams.codec import Codec
from streams.model import ChangeOp


def materialize(bootstrap: str, namespace: str) -> dict[str, Any]:
    """Every live key of the namespace with its newest document, as the change topic tells it."""
    codec = Codec()
    documents: dict[str, Any] = {}
    newest: dict[str, int] = {}  # key -> sequence of the last event applied
    for record in read_to_end(bootstrap, topics.cdc_topic(namespace)):
        event = codec.decode_change_event(record.value)
        if event.source.sequence <= newest.get(event.key, -1):
            continue  # a repeat after a worker crash
        newest[event.key] = event.source.sequence
        if event.op is ChangeOp.DELETE:
            documents.pop(event.key, None)
        else:
            documents[event.key] = json.loads(event.after or b"null")
    return documents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("namespace")
    parser.add_argument("--bootstrap", default="127.0.0.1:19092", help="Kafka bootstrap servers")
    args = parser.parse_args()
    print(json.dumps(materialize(args.bootstrap, args.namespace), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
