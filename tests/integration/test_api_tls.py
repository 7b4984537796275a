"""TLS and mTLS: the server's credentials come from PEM files; clients without the right certificates get nowhere."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from connectors.endpoints import Endpoints
from streams.api.server import TlsFiles
from streams.client.grpc import ApiError, ClientTls, WalClient, write_request
from streams.ports import Durable
from tests.integration.test_api_harness import (
    drop_created_topics,  # noqa: F401 - an autouse fixture
    running_api,
    write_namespace,
)

pytestmark = pytest.mark.integration


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    assert openssl is not None, "the openssl command makes the test certificates"
    subprocess.run([openssl, *args], cwd=cwd, check=True, capture_output=True)


def _issue(folder: Path, name: str, subject: str, extensions: str) -> None:
    """An EC key and a certificate for it signed by the test CA in ``folder``."""
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key", cwd=folder)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=folder)
    (folder / f"{name}.ext").write_text(extensions)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-sha256", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=folder,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pki")
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key", cwd=folder)
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=walstream-test-ca", "-days", "2", "-sha256",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-out", "ca.pem", cwd=folder,
    )  # fmt: skip
    _issue(
        folder,
        "server",
        "/CN=localhost",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    _issue(folder, "client", "/CN=checkout", "extendedKeyUsage=clientAuth\n")
    return folder


def test_tls_server_accepts_a_client_that_trusts_its_ca(endpoints: Endpoints, pki: Path, tmp_path: Path) -> None:
    ns = write_namespace(tmp_path, endpoints.kafka_bootstrap)
    tls = TlsFiles(cert=pki / "server.pem", key=pki / "server.key")
    with running_api(endpoints.kafka_bootstrap, [ns], tls=tls) as api:
        trusted = ClientTls(root_certificates=(pki / "ca.pem").read_bytes())
        with WalClient(api.target, tls=trusted) as client:
            assert client.write_to_log(write_request(ns.name, "k", "UPSERT", {"sku": "t"})).durable is Durable.TRUE
        with WalClient(api.target, timeout_s=3) as plaintext, pytest.raises(ApiError) as refused:
            plaintext.write_to_log(write_request(ns.name, "k", "UPSERT", {"sku": "t"}))
        assert refused.value.code == grpc.StatusCode.UNAVAILABLE


def test_mtls_server_requires_a_client_certificate(endpoints: Endpoints, pki: Path, tmp_path: Path) -> None:
    ns = write_namespace(tmp_path, endpoints.kafka_bootstrap)
    tls = TlsFiles(cert=pki / "server.pem", key=pki / "server.key", client_ca=pki / "ca.pem")
    ca = (pki / "ca.pem").read_bytes()
    with running_api(endpoints.kafka_bootstrap, [ns], tls=tls) as api:
        with WalClient(api.target, tls=ClientTls(root_certificates=ca), timeout_s=3) as anonymous:
            with pytest.raises(ApiError) as refused:
                anonymous.write_to_log(write_request(ns.name, "k", "UPSERT", {"sku": "t"}))
            assert refused.value.code == grpc.StatusCode.UNAVAILABLE
        mutual = ClientTls(
            root_certificates=ca,
            certificate_chain=(pki / "client.pem").read_bytes(),
            private_key=(pki / "client.key").read_bytes(),
        )
        with WalClient(api.target, tls=mutual) as client:
            assert client.write_to_log(write_request(ns.name, "k", "UPSERT", {"sku": "t"})).durable is Durable.TRUE
