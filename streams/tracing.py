"""W3C trace context: taken from the caller, carried in the entry and its Kafka headers, handed on downstream."""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import context, propagate

TRACE_HEADERS = ("traceparent", "tracestate")


def current_trace_headers() -> dict[str, str]:
    """The active OpenTelemetry context as W3C headers (empty when there is none, or no SDK is installed)."""
    if not context.get_current():
        # Nothing is active (no span, no baggage): no propagator has anything to inject, and asking them all costs
        # more than the rest of an SDK write.
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {k: v for k, v in carrier.items() if k in TRACE_HEADERS}


def with_trace(headers: Mapping[str, str] | None) -> dict[str, str]:
    """The entry's headers, with the caller's trace context added unless one is given already."""
    merged = dict(headers or {})
    if "traceparent" not in merged:
        merged.update(current_trace_headers())
    return merged


def kafka_trace_headers(headers: Mapping[str, str]) -> list[tuple[str, bytes]]:
    """The trace headers of an entry, as Kafka record headers."""
    return [(k, headers[k].encode()) for k in TRACE_HEADERS if k in headers]
