"""Bearer tokens to identities, and which identities a namespace accepts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from streams.api.auth import (
    ANONYMOUS,
    Caller,
    Grant,
    TokenRegistry,
    TokensFile,
    TokensFileError,
    authorize,
    load_tokens,
)
from streams.api.rejections import RejectCode, Rejected
from streams.namespaces import Namespace, NamespaceError, parse_namespace


def _namespace(producers: list[str], deleters: list[str] | None = None) -> Namespace:
    return parse_namespace(
        {
            "name": "orders",
            "targets": {"search": {"type": "elasticsearch", "index": "o", "fields": {"a": "keyword"}}},
            "authorization": {"producers": producers, "deleters": deleters or []},
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


def test_a_namespace_without_producers_admits_nobody() -> None:
    closed = _namespace([])
    assert _code(lambda: authorize(closed, ANONYMOUS)) is RejectCode.PERMISSION_DENIED
    assert _code(lambda: authorize(closed, Caller("checkout"))) is RejectCode.PERMISSION_DENIED


def test_a_star_admits_anyone() -> None:
    open_ = _namespace(["*"], ["*"])
    for caller in (ANONYMOUS, Caller("whoever")):
        authorize(open_, caller)
        authorize(open_, caller, Grant.DELETE)


def test_deletes_need_their_own_grant() -> None:
    ns = _namespace(["checkout", "admin"], ["admin"])
    authorize(ns, Caller("checkout"))
    assert _code(lambda: authorize(ns, Caller("checkout"), Grant.DELETE)) is RejectCode.PERMISSION_DENIED
    authorize(ns, Caller("admin"), Grant.DELETE)
    assert _code(lambda: authorize(ns, ANONYMOUS, Grant.DELETE)) is RejectCode.UNAUTHENTICATED
    # Writing to an open namespace does not open its deletes.
    writable = _namespace(["*"])
    authorize(writable, ANONYMOUS)
    assert _code(lambda: authorize(writable, ANONYMOUS, Grant.DELETE)) is RejectCode.PERMISSION_DENIED


def test_a_star_stands_alone() -> None:
    with pytest.raises(NamespaceError, match="admits anyone"):
        _namespace(["*", "checkout"])


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
        ("t1: alpha\nt1: beta\n", "repeats an earlier token"),
        ("- t1\n", "must map tokens"),
        ("t1: ''\n", "identity"),
        ("t1: [a]\n", "identity"),
        ("12: alpha\n", "token"),
        ("'a b': alpha\n", "token"),
        ("sha256:abc: alpha\n", "64 lowercase hex"),
        ("t1: [unclosed\n", "invalid YAML"),
        ("secret-token-1: alpha\nsecret-token-1: beta\n", "entry 2"),
        ("secret-token-1: [unclosed\n", "line 2"),
    ],
)
def test_bad_tokens_files_are_refused(tmp_path: Path, text: str, problem: str) -> None:
    file = tmp_path / "tokens.yaml"
    file.write_text(text)
    with pytest.raises(TokensFileError, match=problem) as refused:
        load_tokens(file)
    assert "secret-token" not in str(refused.value), "the error names the problem, never the token"


def test_a_tokens_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "tokens.yaml"
    file.write_bytes(b"t1: \xff\xfe\n")
    with pytest.raises(TokensFileError, match="UTF-8"):
        load_tokens(file)


def test_missing_tokens_file(tmp_path: Path) -> None:
    with pytest.raises(TokensFileError, match="cannot read"):
        load_tokens(tmp_path / "nope.yaml")


def test_the_tokens_file_is_reloaded_when_it_changes_and_a_broken_one_keeps_the_old(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text("tok-old: checkout\n", encoding="utf-8")
    tokens = TokensFile(path)
    assert tokens.identify("Bearer tok-old") == Caller("checkout") and not tokens.changed()
    path.write_text("tok-new: checkout\n", encoding="utf-8")
    assert tokens.changed() and tokens.reload()
    assert tokens.identify("Bearer tok-new") == Caller("checkout")
    assert _code(lambda: tokens.identify("Bearer tok-old")) is RejectCode.UNAUTHENTICATED
    path.write_text("tok-newer: [1, 2]\n", encoding="utf-8")
    assert not tokens.reload(), "a broken file is not taken"
    assert tokens.identify("Bearer tok-new") == Caller("checkout")
    assert not tokens.changed(), "a broken version is tried once, not again every second"
