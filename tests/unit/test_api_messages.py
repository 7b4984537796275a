"""Protobuf round trips of the API's values, code generation from the .proto, and the in-flight limiter."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from streams.api import codegen, messages
from streams.api.messages import (
    BatchEntrySpec,
    BatchRequest,
    BatchResponse,
    BulkDeleteRequest,
    BulkDeleteResponse,
    EntryAck,
    LifecycleSpec,
    MalformedMessage,
    WriteRequest,
)
from streams.api.shedding import InFlightLimiter
from streams.model import Op
from streams.ports import Delivery, Durable


def test_write_request_round_trip_keeps_an_unset_sequence_apart_from_zero() -> None:
    request = WriteRequest("ns", "k", 1, b"{}", ("a", "b"), "ik", None, LifecycleSpec(5, 6, 7))
    assert messages.decode_write_request(messages.encode_write_request(request)) == request
    zero = WriteRequest("ns", "k", 2, sequence=0)
    assert messages.decode_write_request(messages.encode_write_request(zero)).sequence == 0


def test_unknown_op_values_survive_decoding_for_validation_to_refuse() -> None:
    request = WriteRequest("ns", "k", 42)
    assert messages.decode_write_request(messages.encode_write_request(request)).op == 42
    assert messages.op_of(42) is None
    assert messages.op_of(messages.op_code(Op.DELETE)) is Op.DELETE
    assert messages.op_code("UPSERT") == 1


def test_batch_and_bulk_round_trips() -> None:
    batch = BatchRequest("ns", (BatchEntrySpec("a", 1, b"{}", sequence=3), BatchEntrySpec("b", 2)), "ik", 99)
    assert messages.decode_batch_request(messages.encode_batch_request(batch)) == batch
    bulk = BulkDeleteRequest("ns", ("a", "b"), ("t",), 1, 2, 3, "ik", 4)
    assert messages.decode_bulk_delete_request(messages.encode_bulk_delete_request(bulk)) == bulk


def test_responses_round_trip() -> None:
    write = Delivery(Durable.UNKNOWN, "timeout", partition=2, offset=40, entry_id="e")
    assert messages.decode_write_response(messages.encode_write_response(write)) == write
    acks = (EntryAck("a", 0, 1), EntryAck("b", 1, 7))
    batch = BatchResponse(Durable.TRUE, "", "bid", acks)
    assert messages.decode_batch_response(messages.encode_batch_response(batch)) == batch
    bulk = BulkDeleteResponse(Durable.FALSE, "no", acks, 1)
    assert messages.decode_bulk_delete_response(messages.encode_bulk_delete_response(bulk)) == bulk


@pytest.mark.parametrize("data", [b"\x0a\xff", b"\x0a\x02\xff\xfe", b"\xff\xff\xff\xff"])
def test_malformed_bytes_raise_malformed_message(data: bytes) -> None:
    with pytest.raises(MalformedMessage):
        messages.decode_write_request(data)


def test_a_response_without_a_durable_value_is_malformed() -> None:
    with pytest.raises(MalformedMessage):
        messages.decode_write_response(b"")


def test_service_paths() -> None:
    assert messages.SERVICE_NAME == "walstream.v1.WalService"
    assert messages.WRITE_TO_LOG == "/walstream.v1.WalService/WriteToLog"


def test_codegen_writes_modules_and_regenerates_when_the_proto_is_newer(tmp_path: Path) -> None:
    source = tmp_path / "proto"
    shutil.copytree(codegen.PROTO_ROOT, source)
    out = tmp_path / "gen"
    assert codegen.is_stale(codegen.WAL_PROTO, source, out)
    module = codegen.generate(codegen.WAL_PROTO, source, out)
    assert module == out / "walstream" / "v1" / "wal_pb2.py"
    assert module.with_suffix(".pyi").exists()
    assert (out / ".gitignore").read_text().strip().endswith("*")
    assert not codegen.is_stale(codegen.WAL_PROTO, source, out)
    proto = source / codegen.WAL_PROTO
    later = module.stat().st_mtime_ns + 5_000_000_000
    os.utime(proto, ns=(later, later))
    assert codegen.is_stale(codegen.WAL_PROTO, source, out)


def test_codegen_reports_protoc_errors(tmp_path: Path) -> None:
    source = tmp_path / "proto"
    (source / "walstream" / "v1").mkdir(parents=True)
    (source / codegen.WAL_PROTO).write_text('syntax = "proto3"; message Broken { string a = ; }')
    with pytest.raises(codegen.CodegenError):
        codegen.generate(codegen.WAL_PROTO, source, tmp_path / "gen")


def test_limiter_never_queues() -> None:
    limiter = InFlightLimiter(2)
    assert limiter.try_acquire() and limiter.try_acquire()
    assert not limiter.try_acquire()
    assert (limiter.in_flight, limiter.shed) == (2, 1)
    limiter.release()
    assert limiter.try_acquire()
    limiter.release()
    limiter.release()
    with pytest.raises(RuntimeError):
        limiter.release()
    with pytest.raises(ValueError):
        InFlightLimiter(0)
