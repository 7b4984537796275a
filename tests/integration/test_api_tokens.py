"""Rotating a token in the tokens file: the new one works and the removed one is refused without a restart, calls
in flight finish, and a broken new file keeps the tokens in use."""

from __future__ import annotations

import concurrent.futures
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from connectors.endpoints import Endpoints
from streams.client.grpc import ApiError, WalClient, write_request
from streams.ports import Durable
from tests.integration.test_api_harness import (
    drop_created_topics,  # noqa: F401 - an autouse fixture
    end_offsets,
    grew_by,
    running_api,
    write_namespace,
)

pytestmark = pytest.mark.integration


def _replace(path: Path, text: str) -> None:
    """Swap the file in one step, as a Secret volume or a deploy tool does."""
    fresh = path.with_suffix(".new")
    fresh.write_text(text, encoding="utf-8")
    os.replace(fresh, path)


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _answer(target: str, namespace: str, token: str) -> Durable | grpc.StatusCode:
    with WalClient(target, token=token, timeout_s=30) as client:
        try:
            return client.write_to_log(write_request(namespace, "rotated", "UPSERT", {"sku": "r"})).durable
        except ApiError as refused:
            return refused.code


def test_a_rotated_token_takes_effect_without_a_restart(
    endpoints: Endpoints, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bootstrap = endpoints.kafka_bootstrap
    ns = write_namespace(tmp_path, bootstrap, producers=["checkout"])
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("tok-old: checkout\n", encoding="utf-8")
    with running_api(bootstrap, [ns], tokens_file=tokens) as api:
        assert _answer(api.target, ns.name, "tok-old") is Durable.TRUE
        before = end_offsets(bootstrap, ns)
        release = api.hold_writes()
        with concurrent.futures.ThreadPoolExecutor(4) as pool, WalClient(api.target, token="tok-old") as client:
            held = [
                pool.submit(client.write_to_log, write_request(ns.name, f"held-{i}", "UPSERT", {"sku": "h"}))
                for i in range(4)
            ]
            _wait_for(lambda: api.service.limiter.in_flight == 4, "four calls in flight")
            api.service.before_write = None  # later calls go straight through; the four stay held

            _replace(tokens, "tok-new: checkout\n")
            _wait_for(lambda: _answer(api.target, ns.name, "tok-new") is Durable.TRUE, "the new token to be accepted")
            assert _answer(api.target, ns.name, "tok-old") == grpc.StatusCode.UNAUTHENTICATED

            release()
            # Accepted with the old token before the rotation: they finish, none is dropped.
            assert [f.result(30).durable for f in held] == [Durable.TRUE] * 4
        assert grew_by(before, end_offsets(bootstrap, ns)) == 4 + 1  # the held four and the new token's write

        # A broken new version keeps the tokens in use and says why.
        with caplog.at_level(logging.ERROR, logger="streams.api.auth"):
            _replace(tokens, "tok-newer: [not, an, identity]\n")
            _wait_for(lambda: "tokens file not reloaded" in caplog.text, "the ERROR about the broken file")
        assert _answer(api.target, ns.name, "tok-new") is Durable.TRUE
        assert "tok-newer" not in caplog.text, "a token must never be logged"
