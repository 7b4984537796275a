"""Bearer tokens to identities, and which identities a namespace accepts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from streams.api.auth import ANONYMOUS, Caller, TokenRegistry, TokensFileError, authorize, load_tokens
from streams.api.rejections import RejectCode, Rejected
from streams.namespaces import Namespace, parse_namespace


def _namespace(producers: list[str]) -> Namespace:
    return parse_namespace(
        {
            "name": "orders",
            "targets": {"search": {"type": "elasticsearch", "index": "o", "fields": {"a": "keyword"}}},
            "authorization": {"producers": producers},
        }
    )


def _code(call: object) -> RejectCode:
    with pytest.raises(Rejected) as refused:
        call()  # type: ignore[operator]
    assert refused.value.rejection.field == "authorization"
    return refused.value.rejection.code


REGISTRY = TokenRegistry({"s3cret": "checkout", f"sha256:{hashlib.sha256(b'hashed').hexdigest()}": "billing"})


def test_identify() -> None:
    assert REGISTRY.identify(None) == ANONYMOUS
    assert REGISTRY.identify("Bearer s3cret") == Caller("checkout")
    assert REGISTRY.identify("bearer   s3cret") == Caller("checkout")
    assert REGISTRY.identify("Bearer hashed") == Caller("billing")
    assert _code(lambda: REGISTRY.identify("Bearer nope")) is RejectCode.UNAUTHENTICATED
    assert _code(lambda: REGISTRY.identify("Basic s3cret")) is RejectCode.UNAUTHENTICATED
    assert _code(lambda: REGISTRY.identify("Bearer")) is RejectCode.UNAUTHENTICATED
    assert _code(lambda: REGISTRY.identify("Bearer a b")) is RejectCode.UNAUTHENTICATED
    assert _code(lambda: REGISTRY.identify(f"Bearer sha256:{hashlib.sha256(b'hashed').hexdigest()}")) is (
        RejectCode.UNAUTHENTICATED
    ), "the digest itself is not a token"


def test_open_namespace_accepts_anyone() -> None:
    authorize(_namespace([]), ANONYMOUS)
    authorize(_namespace([]), Caller("whoever"))


def test_locked_namespace() -> None:
    locked = _namespace(["checkout"])
    authorize(locked, Caller("checkout"))
    assert _code(lambda: authorize(locked, Caller("billing"))) is RejectCode.PERMISSION_DENIED
    assert _code(lambda: authorize(locked, ANONYMOUS)) is RejectCode.UNAUTHENTICATED


def test_load_tokens(tmp_path: Path) -> None:
    file = tmp_path / "tokens.yaml"
    file.write_text(f"t1: alpha\nsha256:{hashlib.sha256(b't2').hexdigest()}: beta\n")
    registry = load_tokens(file)
    assert len(registry) == 2
    assert registry.identify("Bearer t2") == Caller("beta")
    (tmp_path / "empty.yaml").write_text("")
    assert len(load_tokens(tmp_path / "empty.yaml")) == 0


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("t1: alpha\nt1: beta\n", "repeated key"),
        ("- t1\n", "must map tokens"),
        ("t1: ''\n", "identity"),
        ("t1: [a]\n", "identity"),
        ("12: alpha\n", "token"),
        ("'a b': alpha\n", "token"),
        ("sha256:abc: alpha\n", "64 lowercase hex"),
        ("t1: [unclosed\n", "invalid YAML"),
    ],
)
def test_bad_tokens_files_are_refused(tmp_path: Path, text: str, problem: str) -> None:
    file = tmp_path / "tokens.yaml"
    file.write_text(text)
    with pytest.raises(TokensFileError, match=problem):
        load_tokens(file)


def test_missing_tokens_file(tmp_path: Path) -> None:
    with pytest.raises(TokensFileError, match="cannot read"):
        load_tokens(tmp_path / "nope.yaml")
