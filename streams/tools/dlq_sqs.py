"""The dead-letter queue of an SQS namespace for `walstream dlq list|show|replay`: letters are read by receiving
every message once (hidden meanwhile, shown again at once after), replayed by sending the entry back to the
namespace's queue and deleting the letter once the send is stored."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from connectors.sqs.client import BATCH, SqsAccess, attribute_values, decode_body, queue_url, sync_client
from streams import topics
from streams.codec import Codec, DecodeError
from streams.model import DeadLetter, ErrorClass, Origin
from streams.tools.dlq import Letter, ReplayReport
from streams.worker.sqs_followups import ATTEMPTS, ERROR_CLASS, FAILED_AT, FIRST_ERROR, PENDING_TARGETS, REASON

#: How long a listing hides the letters it has seen (so one pass sees each once); shown again right after.
_LISTING_HIDE_S = 60


@dataclass(frozen=True, slots=True)
class QueueLetter(Letter):
    """A dead letter of an SQS namespace: ``offset`` is its place in this listing."""

    message_id: str = ""
    receipt: str = ""
    body: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


def read_queue_letters(access: SqsAccess, namespace: str, codec: Codec | None = None) -> list[QueueLetter]:
    """Every message of the namespace's dead-letter queue, as dead letters (oldest first)."""
    codec = codec or Codec()
    client = sync_client(access)
    name = topics.sqs_dlq_queue(namespace)
    url = queue_url(client, access, name)
    seen: dict[str, dict[str, Any]] = {}
    try:
        while True:
            messages = _receive_hidden(client, url)
            fresh = [m for m in messages if m["MessageId"] not in seen]
            seen.update({m["MessageId"]: m for m in fresh})
            if not fresh:
                break
        for message in seen.values():  # visible again for the next reader
            client.change_message_visibility(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"], VisibilityTimeout=0)
    finally:
        client.close()
    ordered = sorted(seen.values(), key=lambda m: int(m.get("Attributes", {}).get("SentTimestamp", "0")))
    return [_letter(index, message, name, codec) for index, message in enumerate(ordered)]


def _letter(index: int, message: dict[str, Any], dlq: str, codec: Codec) -> QueueLetter:
    attributes = attribute_values(message)
    body = str(message.get("Body", ""))
    raw = decode_body(body)
    entry = None
    if raw is not None:
        try:
            entry = codec.decode_entry(raw)
        except DecodeError:
            entry = None
    sent = int(message.get("Attributes", {}).get("SentTimestamp", "0"))
    if ERROR_CLASS in attributes:
        reason = attributes.get(REASON, "")
        error_class = attributes[ERROR_CLASS]
        attempts = int(attributes.get(ATTEMPTS, "0") or 0)
        failed_at = int(attributes.get(FAILED_AT, str(sent)) or sent)
    else:  # moved by the queue's redrive policy: received too often without being deleted
        reason = "no reason recorded: moved by the queue's redrive policy after too many receives without an outcome"
        error_class, attempts, failed_at = ErrorClass.EXHAUSTED.value, 0, sent
    if attributes.get(FIRST_ERROR):
        reason += f" (first error: {attributes[FIRST_ERROR]})"
    pending = tuple(t for t in attributes.get(PENDING_TARGETS, "").split(",") if t)
    letter = DeadLetter(
        raw=raw if raw is not None else body.encode("utf-8", "replace"),
        entry=entry,
        reason=reason or "-",
        error_class=error_class,
        attempts=attempts,
        pending_targets=pending,
        origin=Origin(dlq, 0, index),
        failed_at_ms=failed_at or int(time.time() * 1000),
    )
    return QueueLetter(0, index, letter, str(message["MessageId"]), "", body, attributes)


def replay_queue_letters(
    access: SqsAccess,
    namespace: str,
    letters: Sequence[Letter],
    skip_ids: frozenset[str],
    say: Callable[[str], None],
) -> ReplayReport:
    """Send each chosen letter's entry back to the namespace's queue (same id and sequence: idempotent), then
    delete the letter. The letters are received again to get a receipt valid now."""
    report = ReplayReport()
    wanted: set[str] = set()
    for item in letters:
        assert isinstance(item, QueueLetter)
        if item.letter.entry is None:
            report.not_replayable += 1
        elif item.entry_id in skip_ids:
            report.skipped.append(item.entry_id)
        else:
            wanted.add(item.message_id)
    client = sync_client(access)
    try:
        log_url = queue_url(client, access, topics.sqs_queue(namespace))
        dlq_url = queue_url(client, access, topics.sqs_dlq_queue(namespace))
        done: set[str] = set()
        others: dict[str, str] = {}  # letters received on the way, shown again at the end
        idle = 0
        while wanted - done and idle < 3:
            received = _receive_hidden(client, dlq_url)
            messages = [m for m in received if m["MessageId"] in wanted - done]
            others.update({m["MessageId"]: m["ReceiptHandle"] for m in received if m["MessageId"] not in wanted})
            idle = 0 if messages else idle + 1
            for message in messages:
                keep = {
                    k: {"DataType": "String", "StringValue": v}
                    for k, v in attribute_values(message).items()
                    if not k.startswith("walstream-") or k == "walstream-entry-id"
                }
                try:
                    client.send_message(
                        QueueUrl=log_url,
                        MessageBody=message["Body"],
                        **({"MessageAttributes": keep} if keep else {}),
                    )
                except Exception as exc:  # noqa: BLE001 - counted; the letter stays in the dead-letter queue
                    report.failed += 1
                    say(f"message {message['MessageId']}: not replayed ({exc})")
                    done.add(message["MessageId"])
                    continue
                client.delete_message(QueueUrl=dlq_url, ReceiptHandle=message["ReceiptHandle"])
                report.replayed += 1
                done.add(message["MessageId"])
        report.failed += len(wanted - done)
        for receipt in others.values():
            client.change_message_visibility(QueueUrl=dlq_url, ReceiptHandle=receipt, VisibilityTimeout=0)
    finally:
        client.close()
    return report


def _receive_hidden(client: Any, url: str) -> list[dict[str, Any]]:
    """Up to a batch of letters with their attributes, hidden from other readers while a command looks at them."""
    answer = client.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=BATCH,
        WaitTimeSeconds=1,
        VisibilityTimeout=_LISTING_HIDE_S,
        MessageAttributeNames=["All"],
        AttributeNames=["All"],
    )
    return list(answer.get("Messages", []))
