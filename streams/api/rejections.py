"""The reasons the API refuses a call before writing anything: a status code, the field at fault and why."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

#: Trailing metadata of a refusal naming the request field it is about.
FIELD_METADATA = "walstream-field"


class RejectCode(StrEnum):
    """The gRPC status codes a refusal uses (names match grpc.StatusCode members)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"  # the request itself is wrong; resending it unchanged never helps
    NOT_FOUND = "NOT_FOUND"  # the namespace does not exist
    UNAUTHENTICATED = "UNAUTHENTICATED"  # no valid token where one is needed
    PERMISSION_DENIED = "PERMISSION_DENIED"  # a known identity the namespace does not list
    FAILED_PRECONDITION = "FAILED_PRECONDITION"  # the call cannot work for this namespace as it is configured
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"  # load shedding: retry later, with backoff
    UNAVAILABLE = "UNAVAILABLE"  # the server is shutting down: retry elsewhere


@dataclass(frozen=True, slots=True)
class Rejection:
    code: RejectCode
    field: str  # the dotted request field at fault, such as "lifecycle.delay_ms"; "" when no single field is
    message: str

    def details(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class Rejected(Exception):
    """Raised to refuse a call; nothing has been written."""

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(rejection.details())
        self.rejection = rejection


def invalid(field: str, message: str) -> Rejected:
    return Rejected(Rejection(RejectCode.INVALID_ARGUMENT, field, message))
