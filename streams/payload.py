"""Turns an entry's payload bytes into the document its targets store, per the namespace's payload format."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fastavro import parse_schema, schemaless_reader

from streams.namespaces import PayloadSpec

#: One encoder for every JSON payload: building one per call costs more than the encoding.
_JSON = json.JSONEncoder(separators=(",", ":"), sort_keys=True)


def _compiled_json() -> Callable[[Any, int], Sequence[str]] | None:
    """``_JSON``'s C encoder, built once: ``JSONEncoder.encode`` builds it anew on every call, which costs as much
    as the encoding itself. None without the C accelerator."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    encoder: Callable[[Any, int], Sequence[str]] = make(
        {},  # circular-reference markers, left empty by every encoding that completes
        _JSON.default,
        json.encoder.encode_basestring_ascii,
        None,
        _JSON.key_separator,
        _JSON.item_separator,
        _JSON.sort_keys,
        _JSON.skipkeys,
        _JSON.allow_nan,
    )
    return encoder


_JSON_FAST = _compiled_json()


def encode_json(document: Mapping[str, Any]) -> bytes:
    """``_JSON.encode(document)`` as bytes. A failure of the prebuilt encoder (a value JSON cannot hold) is answered
    by ``_JSON`` itself, the same bytes or its error, and the prebuilt one is replaced: a failure can leave markers
    behind in it."""
    global _JSON_FAST
    if _JSON_FAST is not None and type(document) is dict:
        try:
            return "".join(_JSON_FAST(document, 0)).encode()
        except Exception:  # noqa: BLE001 - the reference encoder below gives the answer or the error
            _JSON_FAST = _compiled_json()
    return _JSON.encode(document).encode()


class PayloadError(ValueError):
    """The payload does not match the namespace's format (the entry can never be applied as it is)."""


class PayloadCodec:
    """JSON objects or Avro records (schemaless body, the namespace's record schema)."""

    def __init__(self, spec: PayloadSpec) -> None:
        self.spec = spec
        self._schema = parse_schema(spec.avro_schema, named_schemas={}) if spec.avro_schema is not None else None

    def decode(self, payload: bytes) -> Mapping[str, Any]:
        if len(payload) > self.spec.max_bytes:
            raise PayloadError(
                f"payload of {len(payload)} bytes is over the namespace's limit of {self.spec.max_bytes}"
            )
        if self._schema is None:
            try:
                document = json.loads(payload)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise PayloadError(f"payload is not JSON: {exc}") from None
            if not isinstance(document, dict):
                raise PayloadError(f"payload must be a JSON object, got {type(document).__name__}")
            return document
        buffer = io.BytesIO(payload)
        try:
            record = schemaless_reader(buffer, self._schema, None)
        except Exception as exc:  # noqa: BLE001 - fastavro raises many types for bad bytes
            raise PayloadError(f"payload does not match the namespace's Avro schema: {exc}") from None
        if buffer.tell() != len(payload) or not isinstance(record, dict):
            raise PayloadError("payload does not match the namespace's Avro schema: trailing or missing bytes")
        return record

    def encode(self, document: Mapping[str, Any]) -> bytes:
        """Used by producers and tools: the exact bytes `decode` accepts."""
        if self._schema is None:
            return encode_json(document)
        from fastavro import schemaless_writer

        out = io.BytesIO()
        try:
            schemaless_writer(out, self._schema, dict(document))
        except (ValueError, TypeError, KeyError) as exc:
            raise PayloadError(f"document does not match the namespace's Avro schema: {exc}") from None
        return out.getvalue()
