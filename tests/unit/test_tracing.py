"""Trace context: taken from the active OpenTelemetry context, absent without one, never over a caller's own."""

from __future__ import annotations

from opentelemetry import context, trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from streams.tracing import current_trace_headers, kafka_trace_headers, with_trace

SPAN = SpanContext(
    trace_id=0x0AF7651916CD43DD8448EB211C80319C, span_id=0xB7AD6B7169203331, is_remote=True, trace_flags=TraceFlags(1)
)
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_no_active_context_adds_nothing() -> None:
    assert current_trace_headers() == {}
    assert with_trace(None) == {}
    assert with_trace({"a": "b"}) == {"a": "b"}


def test_the_active_span_is_carried() -> None:
    token = context.attach(trace.set_span_in_context(NonRecordingSpan(SPAN)))
    try:
        assert with_trace(None) == {"traceparent": TRACEPARENT}
        assert with_trace({"traceparent": "mine"}) == {"traceparent": "mine"}
    finally:
        context.detach(token)
    assert with_trace(None) == {}


def test_kafka_headers_hold_only_trace_context() -> None:
    headers = {"traceparent": TRACEPARENT, "tracestate": "k=v", "other": "x"}
    assert kafka_trace_headers(headers) == [("traceparent", TRACEPARENT.encode()), ("tracestate", b"k=v")]
