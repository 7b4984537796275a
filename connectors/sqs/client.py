"""How walstream reaches an SQS-compatible endpoint, the queues of a namespace, and errors that name the setting."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

#: The setting to name when the endpoint does not answer.
ENDPOINT_SETTING = "WALSTREAM_SQS_ENDPOINT"
#: A message's attribute values are cut to this many characters (SQS allows 256 KiB per message in all).
MAX_ATTRIBUTE_CHARS = 2000
#: Amazon SQS's most per receive and per batch call.
BATCH = 10


class SqsUnavailable(RuntimeError):
    """The SQS endpoint does not answer, or refuses walstream; the message names the setting to check."""


@dataclass(frozen=True, slots=True)
class SqsAccess:
    """Where the SQS API answers. ``endpoint`` None is Amazon SQS of ``region``. Credentials follow the AWS SDK's
    standard chain, unless ``static_credentials`` (the local stack's ElasticMQ accepts any)."""

    endpoint: str | None
    region: str = "us-east-1"
    static_credentials: bool = False

    def client_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"region_name": self.region}
        if self.endpoint is not None:
            kwargs["endpoint_url"] = self.endpoint
        if self.static_credentials:
            kwargs.update(aws_access_key_id="walstream", aws_secret_access_key="walstream")
        return kwargs

    def describe(self) -> str:
        return self.endpoint or f"Amazon SQS in {self.region}"


def local_access(endpoint: str | None, region: str) -> SqsAccess:
    """An endpoint on this machine gets fixed credentials (ElasticMQ checks none); any other uses the chain."""
    local = endpoint is not None and any(h in endpoint for h in ("//127.0.0.1:", "//localhost:", "//[::1]:"))
    return SqsAccess(endpoint, region, static_credentials=local)


def sync_client(access: SqsAccess, timeout_s: float = 10.0, pool: int = 32) -> Any:
    """A boto3 SQS client (thread-safe) for synchronous code: the SDK's writer, the CLI, `namespaces apply`."""
    config = Config(
        connect_timeout=min(timeout_s, 5.0),
        read_timeout=timeout_s,
        retries={"max_attempts": 2, "mode": "standard"},
        max_pool_connections=pool,
    )
    return boto3.session.Session().client("sqs", config=config, **access.client_kwargs())


def unavailable(access: SqsAccess, exc: BaseException) -> SqsUnavailable:
    if isinstance(exc, EndpointConnectionError):
        return SqsUnavailable(
            f"the SQS endpoint {access.describe()} does not answer ({exc}); check {ENDPOINT_SETTING} "
            "(and that the stack's elasticmq runs: `walstream stack status`)"
        )
    return SqsUnavailable(f"the SQS endpoint {access.describe()} refused the call: {exc}; check {ENDPOINT_SETTING}")


def queue_url(client: Any, access: SqsAccess, name: str) -> str:
    """The URL of queue ``name``; SqsUnavailable names what is wrong (no endpoint, or no such queue)."""
    try:
        return str(client.get_queue_url(QueueName=name)["QueueUrl"])
    except ClientError as exc:
        if "NonExistentQueue" in str(exc.response.get("Error", {}).get("Code", "")) or "does not exist" in str(exc):
            raise SqsUnavailable(
                f"queue {name} does not exist at {access.describe()}; create it with `walstream namespaces apply`"
            ) from None
        raise unavailable(access, exc) from None
    except BotoCoreError as exc:
        raise unavailable(access, exc) from None


def ensure_queues(access: SqsAccess, log: str, dlq: str, visibility_s: int, max_receives: int) -> dict[str, bool]:
    """Create the log queue and its dead-letter queue (the log's redrive policy points at it). Idempotent: an
    existing queue keeps its messages and takes these attributes. Returns queue name -> created now."""
    client = sync_client(access)
    try:
        existing = set(client.list_queues(QueueNamePrefix=log).get("QueueUrls", []))
        names = {url.rsplit("/", 1)[-1] for url in existing}
        dlq_url = client.create_queue(QueueName=dlq)["QueueUrl"]
        arn = client.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        attributes = {
            "VisibilityTimeout": str(visibility_s),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": str(max_receives)}),
        }
        if log in names:
            url = queue_url(client, access, log)
            client.set_queue_attributes(QueueUrl=url, Attributes=attributes)
        else:
            client.create_queue(QueueName=log, Attributes=attributes)
    except (BotoCoreError, ClientError) as exc:
        raise unavailable(access, exc) from None
    finally:
        client.close()
    return {log: log not in names, dlq: dlq not in names}


def encode_body(value: bytes) -> str:
    """A message body is text: the Avro single-object entry in base64."""
    return base64.b64encode(value).decode("ascii")


def decode_body(body: str) -> bytes | None:
    """The bytes of a message body, or None when it is not base64."""
    try:
        return base64.b64decode(body.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None


def string_attributes(values: dict[str, str]) -> dict[str, dict[str, str]]:
    """SQS message attributes of type String (empty values left out: SQS refuses them)."""
    return {
        name: {"DataType": "String", "StringValue": value[:MAX_ATTRIBUTE_CHARS]}
        for name, value in values.items()
        if value
    }


def attribute_values(message: dict[str, Any]) -> dict[str, str]:
    """A received message's String attributes, by name."""
    found = message.get("MessageAttributes") or {}
    return {name: str(spec.get("StringValue", "")) for name, spec in found.items()}
