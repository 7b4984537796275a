"""The settings of the SQS log (``WALSTREAM_SQS_*``), read by ``streams.config`` with all the others."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SqsSettings(BaseModel):
    """The SQS-compatible log of namespaces with ``backend: sqs``. Credentials come from the AWS SDK's standard
    chain (environment, profile, instance role); against the local stack's ElasticMQ any value does."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: The endpoint URL; unset means the local stack's ElasticMQ in local mode and Amazon SQS otherwise.
    endpoint: str | None = None
    region: str = "us-east-1"
    #: The longest delay one message may carry (SQS allows 900 s); a longer delay is re-sent with its remainder.
    max_delay_s: int = Field(default=900, ge=1, le=900)
    #: Receives the worker keeps in flight per namespace (each returns up to 10 messages).
    receives: int = Field(default=4, ge=1, le=64)
    #: How long a received message stays invisible to other workers while it is being applied.
    visibility_s: int = Field(default=60, ge=5, le=43_200)
    #: The long poll of one receive.
    wait_s: int = Field(default=2, ge=0, le=20)
