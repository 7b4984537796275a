"""JSON payloads: the prebuilt encoder gives exactly the reference encoder's bytes, and its errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.namespaces import PayloadSpec
from streams.payload import PayloadCodec, encode_json

REFERENCE = json.JSONEncoder(separators=(",", ":"), sort_keys=True)

_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.text(max_size=10), _VALUES, max_size=6))
def test_json_bytes_equal_the_reference_encoder(document: dict[str, Any]) -> None:
    assert encode_json(document) == REFERENCE.encode(document).encode()
    assert PayloadCodec(PayloadSpec()).encode(document) == REFERENCE.encode(document).encode()


def test_errors_are_the_reference_encoders_and_leave_the_encoder_working() -> None:
    circular: dict[str, Any] = {}
    circular["self"] = circular
    with pytest.raises(ValueError, match="Circular reference"):
        encode_json(circular)
    with pytest.raises(TypeError, match="not JSON serializable"):
        encode_json({"a": {"b": object()}})
    shared = {"x": 1}
    assert encode_json({"b": shared, "a": [shared, shared]}) == b'{"a":[{"x":1},{"x":1}],"b":{"x":1}}'
    assert encode_json({"é": "名前", "n": 1.5}) == REFERENCE.encode({"é": "名前", "n": 1.5}).encode()
