"""A namespace's queue as the SQS worker reads it (aiobotocore): long-polled receives, deletes, visibility
changes, and sends (entries re-queued with the rest of their delay, dead letters)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from connectors.sqs.client import BATCH, SqsAccess, SqsUnavailable, attribute_values, string_attributes, unavailable

#: SQS's longest visibility timeout.
MAX_VISIBILITY_S = 43_200


@dataclass(frozen=True, slots=True)
class Received:
    """One received message: its body as sent, how often it was received, its String attributes."""

    message_id: str
    receipt: str
    body: str
    receive_count: int
    attributes: Mapping[str, str]


class QueueClient:
    """The queue and dead-letter queue of one namespace. ``open`` resolves both and raises SqsUnavailable, naming
    the setting, when the endpoint does not answer or a queue is missing."""

    def __init__(self, access: SqsAccess, queue: str, dlq: str, visibility_s: int, wait_s: int, pool: int) -> None:
        self.access = access
        self.queue = queue
        self.dlq = dlq
        self._visibility_s = visibility_s
        self._wait_s = wait_s
        self._pool = pool
        self._context: Any = None
        self._client: Any = None
        self.queue_url = ""
        self.dlq_url = ""

    async def open(self) -> QueueClient:
        config = AioConfig(
            connect_timeout=5,
            read_timeout=self._wait_s + 10,
            retries={"max_attempts": 2, "mode": "standard"},
            max_pool_connections=self._pool,
        )
        self._context = get_session().create_client("sqs", config=config, **self.access.client_kwargs())
        self._client = await self._context.__aenter__()
        try:
            self.queue_url = await self._url(self.queue)
            self.dlq_url = await self._url(self.dlq)
        except BaseException:
            await self.close()
            raise
        return self

    async def _url(self, name: str) -> str:
        try:
            answer = await self._client.get_queue_url(QueueName=name)
        except ClientError as exc:
            if "NonExistentQueue" in str(exc) or "does not exist" in str(exc):
                raise SqsUnavailable(
                    f"queue {name} does not exist at {self.access.describe()}; create it with "
                    "`walstream namespaces apply`"
                ) from None
            raise unavailable(self.access, exc) from None
        except BotoCoreError as exc:
            raise unavailable(self.access, exc) from None
        return str(answer["QueueUrl"])

    async def receive(self) -> list[Received]:
        answer = await self._client.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=BATCH,
            WaitTimeSeconds=self._wait_s,
            VisibilityTimeout=self._visibility_s,
            MessageAttributeNames=["All"],
            AttributeNames=["ApproximateReceiveCount"],
        )
        return [
            Received(
                message_id=str(m["MessageId"]),
                receipt=str(m["ReceiptHandle"]),
                body=str(m.get("Body", "")),
                receive_count=int(m.get("Attributes", {}).get("ApproximateReceiveCount", "1")),
                attributes=attribute_values(m),
            )
            for m in answer.get("Messages", [])
        ]

    async def delete(self, receipts: Sequence[str]) -> list[str]:
        """Delete messages; returns the receipts SQS failed to delete (they are received again later)."""
        failed: list[str] = []
        for start in range(0, len(receipts), BATCH):
            chunk = receipts[start : start + BATCH]
            answer = await self._client.delete_message_batch(
                QueueUrl=self.queue_url, Entries=[{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(chunk)]
            )
            failed += [chunk[int(f["Id"])] for f in answer.get("Failed", [])]
        return failed

    async def hide(self, receipt: str, seconds: int) -> None:
        """Keep a received message invisible ``seconds`` from now (a retry's wait)."""
        await self._client.change_message_visibility(
            QueueUrl=self.queue_url, ReceiptHandle=receipt, VisibilityTimeout=max(0, min(seconds, MAX_VISIBILITY_S))
        )

    async def send(self, body: str, attributes: Mapping[str, str], delay_s: int = 0, dead: bool = False) -> str:
        """Send one message to the queue (or its dead-letter queue); returns its id once SQS stored it."""
        message: dict[str, Any] = {"QueueUrl": self.dlq_url if dead else self.queue_url, "MessageBody": body}
        values = string_attributes(dict(attributes))
        if values:
            message["MessageAttributes"] = values
        if delay_s > 0:
            message["DelaySeconds"] = delay_s
        answer = await self._client.send_message(**message)
        return str(answer["MessageId"])

    async def close(self) -> None:
        if self._context is not None:
            context, self._context, self._client = self._context, None, None
            await context.__aexit__(None, None, None)
