"""WriteStream's wire values: entries and answers encoded one by one concatenate into one message, and the
client's bookkeeping settles, refuses or marks UNKNOWN each entry as its stream says."""

from __future__ import annotations

import concurrent.futures

import grpc
import pytest

from streams.api import messages
from streams.api.messages import LifecycleSpec, MalformedMessage, StreamAnswer, WriteRequest
from streams.api.rejections import RejectCode, Rejection
from streams.client.stream import ApiError, Outstanding, message_of
from streams.ports import Delivery, Durable


def test_entries_encoded_one_by_one_join_into_one_request_in_order() -> None:
    requests = [
        WriteRequest("ns", "k1", 1, b'{"a":1}', ("search",), "ik", 7, LifecycleSpec(5, 6, 7)),
        WriteRequest("ns", "k2", 2),
        WriteRequest("other", "k\u00e9", 1, b"x" * 300, sequence=0),
    ]
    data = b"".join(messages.encode_stream_entry(i + 10, r) for i, r in enumerate(requests))
    assert messages.decode_stream_request(data) == [(10, requests[0]), (11, requests[1]), (12, requests[2])]


def test_answers_encoded_together_or_one_by_one_make_the_same_response() -> None:
    answers = [
        StreamAnswer(1, delivery=Delivery(Durable.TRUE, "", partition=2, offset=99, entry_id="e1")),
        StreamAnswer(2, rejection=Rejection(RejectCode.INVALID_ARGUMENT, "lifecycle.delay_ms", "must not be negative")),
        StreamAnswer(3, delivery=Delivery(Durable.UNKNOWN, "no acknowledgement", entry_id="e3")),
    ]
    assert messages.decode_stream_response(messages.encode_stream_answers(answers)) == answers
    joined = b"".join(messages.encode_stream_answers([a]) for a in answers)
    assert messages.decode_stream_response(joined) == answers


def test_malformed_stream_messages_are_refused_by_name() -> None:
    with pytest.raises(MalformedMessage, match="WriteStreamRequest"):
        messages.decode_stream_request(b"\xff\xff\xff")
    empty = messages.encode_stream_answers([StreamAnswer(5)])  # neither an answer nor a rejection
    with pytest.raises(MalformedMessage, match="neither"):
        messages.decode_stream_response(empty)


class Settled:
    """Futures of the entries tracked, and how often a window slot was freed."""

    def __init__(self) -> None:
        self.futures: dict[int, concurrent.futures.Future[Delivery]] = {}
        self.released = 0

    def track(self, out: Outstanding) -> int:
        future: concurrent.futures.Future[Delivery] = concurrent.futures.Future()
        request_id = out.add(future, self._release)
        self.futures[request_id] = future
        return request_id

    def _release(self) -> None:
        self.released += 1

    @property
    def deliveries(self) -> dict[int, Delivery]:
        return {i: f.result() for i, f in self.futures.items() if f.done() and f.exception() is None}

    @property
    def errors(self) -> dict[int, ApiError]:
        found = {i: f.exception() for i, f in self.futures.items() if f.done() and f.exception() is not None}
        return {i: e for i, e in found.items() if isinstance(e, ApiError)}


def test_each_answer_settles_its_own_entry_and_a_rejection_names_the_field() -> None:
    out, seen = Outstanding(), Settled()
    a, b = seen.track(out), seen.track(out)
    assert message_of([(a, b"A"), (b, b"B")], out) == b"AB"
    rejection = Rejection(RejectCode.INVALID_ARGUMENT, "key", "must not be empty")
    assert out.settle(StreamAnswer(b, rejection=rejection))
    assert out.settle(StreamAnswer(a, delivery=Delivery(Durable.TRUE, "", entry_id="x")))
    assert not out.settle(StreamAnswer(a, delivery=Delivery(Durable.TRUE, "")))  # answered already
    assert seen.deliveries[a].entry_id == "x"
    assert seen.errors[b].code is grpc.StatusCode.INVALID_ARGUMENT and seen.errors[b].field == "key"
    assert not out.waiting and not out.sent and seen.released == 2


def test_a_broken_stream_makes_sent_entries_unknown_and_unsent_ones_refused() -> None:
    out, seen = Outstanding(), Settled()
    sent, unsent = seen.track(out), seen.track(out)
    message_of([(sent, b"S")], out)
    assert out.fail_all(ConnectionError("reset by peer")) == 2
    assert seen.deliveries[sent].durable is Durable.UNKNOWN and "idempotency key" in seen.deliveries[sent].message
    assert seen.errors[unsent].code is grpc.StatusCode.UNAVAILABLE
    assert not out.waiting and not out.sent and seen.released == 2


def test_an_entry_given_up_before_it_was_sent_is_left_out_of_the_message() -> None:
    out, seen = Outstanding(), Settled()
    kept, dropped = seen.track(out), seen.track(out)
    del out.waiting[dropped]
    assert message_of([(kept, b"K"), (dropped, b"D")], out) == b"K"
    assert out.sent == {kept}
