"""Maps bearer tokens to producer identities and decides whether a caller may write to a namespace."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import yaml

from streams.api.rejections import RejectCode, Rejected, Rejection
from streams.namespaces import Namespace
from streams.namespaces.spec import ANYONE

log = logging.getLogger(__name__)

#: A tokens-file key written as a digest rather than the token itself: ``sha256:<64 hex digits>``.
_DIGEST_KEY = re.compile(r"sha256:(?P<hex>[0-9a-f]{64})")
_BEARER = re.compile(r"Bearer +(?P<token>\S+)", re.IGNORECASE)


class TokensFileError(ValueError):
    """The tokens file cannot be used; the message names the file and the entry."""


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: a producer identity, or None for a call without a token."""

    identity: str | None


ANONYMOUS = Caller(None)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Identifies(Protocol):
    def identify(self, authorization: str | None) -> Caller: ...


class TokenRegistry:
    """Token -> identity, kept as SHA-256 digests so the process never holds the tokens themselves after loading."""

    def __init__(self, tokens: Mapping[str, str] | None = None) -> None:
        self._by_digest: dict[str, str] = {}
        for key, identity in (tokens or {}).items():
            match = _DIGEST_KEY.fullmatch(key)
            self._by_digest[match["hex"] if match else _digest(key)] = identity

    def __len__(self) -> int:
        return len(self._by_digest)

    def identify(self, authorization: str | None) -> Caller:
        """The caller behind an ``authorization`` metadata value; no value is anonymous.

        A value that is present but malformed or names no known token is refused (UNAUTHENTICATED), even where
        the namespace is open: a misconfigured client should learn it at its first call.
        """
        if authorization is None:
            return ANONYMOUS
        match = _BEARER.fullmatch(authorization.strip())
        if match is None:
            raise Rejected(Rejection(RejectCode.UNAUTHENTICATED, "authorization", "metadata must be 'Bearer <token>'"))
        identity = self._by_digest.get(_digest(match["token"]))
        if identity is None:
            raise Rejected(Rejection(RejectCode.UNAUTHENTICATED, "authorization", "unknown token"))
        return Caller(identity)


class Grant(StrEnum):
    """What a call asks to do, and the namespace's list that must admit the caller for it."""

    WRITE = "producers"
    DELETE = "deleters"

    @property
    def verb(self) -> str:
        return "write to" if self is Grant.WRITE else "delete in"


def authorize(ns: Namespace, caller: Caller, grant: Grant = Grant.WRITE) -> None:
    """Refuse a caller the namespace's list for ``grant`` does not admit. An empty list admits nobody (a
    namespace is closed unless it says otherwise) and ``"*"`` admits anyone, anonymous callers included."""
    allowed = getattr(ns.authorization, grant.value)
    if ANYONE in allowed:
        return
    if not allowed:
        raise Rejected(
            Rejection(
                RejectCode.PERMISSION_DENIED,
                "authorization",
                f"namespace {ns.name!r} admits nobody to {grant.verb} it: list identities in "
                f"authorization.{grant.value} (or {ANYONE!r} for anyone)",
            )
        )
    if caller.identity is None:
        raise Rejected(
            Rejection(
                RejectCode.UNAUTHENTICATED,
                "authorization",
                f"namespace {ns.name!r} admits only listed {grant.value}; send 'authorization: Bearer <token>'",
            )
        )
    if caller.identity not in allowed:
        raise Rejected(
            Rejection(
                RejectCode.PERMISSION_DENIED,
                "authorization",
                f"producer {caller.identity!r} may not {grant.verb} namespace {ns.name!r} "
                f"(not in authorization.{grant.value})",
            )
        )


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML that refuses a repeated key: a token listed twice would silently keep only one identity."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(key_node, deep=True) for key_node, _ in node.value]
        repeated = [i + 1 for i, k in enumerate(keys) if k in keys[:i]]
        if repeated:
            raise yaml.constructor.ConstructorError(
                None, None, f"entry {repeated[0]} repeats an earlier token (tokens are never shown)", node.start_mark
            )
        return super().construct_mapping(node, deep=deep)


def load_tokens(path: str | os.PathLike[str]) -> TokenRegistry:
    """Read a YAML mapping of token (or ``sha256:<hex digest of the token>``) -> producer identity."""
    file = Path(path)
    try:
        document = yaml.load(file.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # a SafeLoader
    except OSError as exc:
        raise TokensFileError(f"{file}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise TokensFileError(f"{file}: not UTF-8 text") from None
    except yaml.YAMLError as exc:
        # Only what is wrong and where: PyYAML's own message quotes the line, which holds a token.
        problem = getattr(exc, "problem", None) or "cannot be parsed"
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise TokensFileError(f"{file}: invalid YAML{where}: {problem}") from None
    if document is None:
        return TokenRegistry()
    if not isinstance(document, dict):
        raise TokensFileError(f"{file}: the top level must map tokens to identities, got {type(document).__name__}")
    for index, (token, identity) in enumerate(document.items()):
        if not isinstance(token, str) or not token.strip() or any(c.isspace() for c in token):
            raise TokensFileError(f"{file}: entry {index + 1}: a token must be a non-empty string without spaces")
        if token.startswith("sha256:") and _DIGEST_KEY.fullmatch(token) is None:
            raise TokensFileError(f"{file}: entry {index + 1}: a sha256: key needs 64 lowercase hex digits")
        if not isinstance(identity, str) or not identity.strip():
            raise TokensFileError(f"{file}: entry {index + 1}: the identity must be a non-empty string")
    return TokenRegistry(document)


class TokensFile:
    """The tokens file, reloaded when it changes (its size, time or inode, so a Kubernetes Secret's symlink swap
    counts) or on ``reload()`` (SIGHUP). Each call identifies its caller with the tokens current when it
    arrives, so calls in flight are never dropped. A broken new version keeps the tokens in use and logs an
    ERROR naming the problem; the next change is tried again."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._stamp = self._stat()
        self._registry = load_tokens(self.path)

    def __len__(self) -> int:
        return len(self._registry)

    def identify(self, authorization: str | None) -> Caller:
        return self._registry.identify(authorization)

    def changed(self) -> bool:
        return self._stat() != self._stamp

    def reload(self) -> bool:
        """Load the file again; True when the new tokens are in use."""
        stamp = self._stat()
        try:
            registry = load_tokens(self.path)
        except TokensFileError as exc:
            self._stamp = stamp  # tried: wait for the next change rather than logging every second
            log.error("tokens file not reloaded, the previous tokens stay in use: %s", exc)
            return False
        self._registry, self._stamp = registry, stamp
        log.info("tokens file reloaded: %d tokens", len(registry))
        return True

    async def watch(self, interval_s: float = 1.0) -> None:
        """Reload whenever the file changes, until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                if self.changed():
                    self.reload()
            except Exception:  # the watcher must outlive any surprise, or revoked tokens would stay valid
                log.exception("tokens file check failed; trying again")

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)
