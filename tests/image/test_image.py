"""The container image on the local stack, run exactly as the Helm chart configures its pods.

`make image-test` builds the image and runs these with `--image walstream:<appVersion>`. The chart is rendered with
its default values, except for what must point at this machine (the stack's endpoints, free ports, a scratch
namespace); each container of the rendered Job and Deployments then runs under podman with the rendered
arguments, environment, working directory, mounts (emptyDirs as tmpfs, the namespaces ConfigMap as a read-only
folder) and security context (user, read-only root filesystem, no capabilities, no privilege escalation), on the
host network. Every container is stopped and removed by its id.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cassandra.cluster import Session
from elasticsearch import Elasticsearch

from connectors.endpoints import Endpoints
from streams.client.grpc import WalClient, write_request
from streams.client.sdk import SyncWalWriter
from streams.model import Op
from streams.namespaces import load_namespace
from streams.ports import Durable
from tests.helm.test_chart import CHART, helm
from tests.integration.pipeline import (
    ScratchNamespace,
    cassandra_rows,
    es_docs,
    expected_rows,
    free_port,
    model_of,
    namespace_document,
    wait_until,
)

REPO = Path(__file__).resolve().parents[2]
CONTAINERS_CONF = REPO / ".image" / "containers.conf"
RELEASE = "smoke"
UID = 10001
ENTRIES = 300

pytestmark = pytest.mark.integration


# -- podman --------------------------------------------------------------------------------------------------------


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    if not CONTAINERS_CONF.is_file():
        pytest.fail(f"{CONTAINERS_CONF} is missing: build the image with `make image` first", pytrace=False)
    env = {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}
    return subprocess.run(["podman", *args], capture_output=True, text=True, env=env, timeout=timeout, check=False)


def checked(*args: str, timeout: float = 120) -> str:
    result = podman(*args, timeout=timeout)
    assert result.returncode == 0, f"podman {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
    return result.stdout


def full_name(ref: str) -> str:
    """podman's name for a local image: an unqualified name lives under localhost/."""
    return ref if "/" in ref.split(":")[0] else f"localhost/{ref}"


# -- the chart's pods as podman runs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pod:
    """One rendered container with the pod fields podman needs."""

    name: str
    pod: dict[str, Any]
    container: dict[str, Any]

    @property
    def args(self) -> list[str]:
        return [str(a) for a in self.container.get("args", [])]

    def run_options(self, namespace_dir: Path) -> list[str]:
        c, pod = self.container, self.pod
        assert "command" not in c, f"{self.name}: the chart overrides the image's entrypoint"
        options = ["--network", "host", "--workdir", c["workingDir"]]
        security = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
        if security.get("runAsUser") is not None:
            options += ["--user", f"{security['runAsUser']}:{security.get('runAsGroup', security['runAsUser'])}"]
        if security.get("readOnlyRootFilesystem"):
            options.append("--read-only")
        if security.get("allowPrivilegeEscalation") is False:
            options += ["--security-opt", "no-new-privileges"]
        for cap in security.get("capabilities", {}).get("drop", []):
            options += ["--cap-drop", cap.lower()]
        for var in c.get("env", []):
            assert "value" in var, f"{self.name}: {var['name']} is not a plain value"
            options += ["--env", f"{var['name']}={var['value']}"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for mount in c.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "emptyDir" in volume:
                # Owned by the container's user, as Kubernetes makes an emptyDir writable for the pod.
                options += ["--mount", f"type=tmpfs,destination={mount['mountPath']},U=true"]
            elif "configMap" in volume:
                mode = "ro" if mount.get("readOnly") else "rw"
                options += ["--volume", f"{namespace_dir}:{mount['mountPath']}:{mode}"]
            else:
                raise AssertionError(f"{self.name}: volume {mount['name']} is neither an emptyDir nor a ConfigMap")
        return options


@dataclass(frozen=True)
class Rendered:
    image: str
    namespace: str
    namespace_dir: Path
    grpc_port: int
    metrics_port: int
    pods: dict[str, Pod]

    def run(self, role: str, *, detach: bool, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        pod = self.pods[role]
        mode = ["--detach"] if detach else ["--rm"]
        return podman("run", *mode, *pod.run_options(self.namespace_dir), *extra, self.image, *pod.args, timeout=300)


def _render(
    endpoints: Endpoints, namespace: dict[str, Any], grpc_port: int, metrics_port: int, folder: Path
) -> list[Any]:
    # The default worker group, for the scratch namespace.
    (group,) = yaml.safe_load((CHART / "values.yaml").read_text())["workers"]["groups"]
    values = {
        "endpoints": {
            "kafkaBootstrap": endpoints.kafka_bootstrap,
            "cassandraContact": f"{endpoints.cassandra_host}:{endpoints.cassandra_port}",
            "elasticsearchUrl": endpoints.elasticsearch_url,
        },
        "ports": {"grpc": grpc_port, "metrics": metrics_port},
        "replicationFactor": 1,
        "namespaces": {namespace["name"]: namespace},
        "workers": {"groups": [{**group, "namespaces": [namespace["name"]]}]},
    }
    values_file = folder / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    result = helm("template", RELEASE, CHART, "--namespace", "walstream", "-f", values_file)
    assert result.returncode == 0, f"helm template failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _pods(docs: list[Any]) -> dict[str, Pod]:
    pods: dict[str, Pod] = {}
    for doc in docs:
        if doc["kind"] not in {"Deployment", "Job"}:
            continue
        role = doc["metadata"]["labels"]["app.kubernetes.io/component"]
        spec = doc["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        pods[role] = Pod(f"{doc['kind']}/{doc['metadata']['name']}", spec, container)
    return pods


@pytest.fixture(scope="module")
def image(request: pytest.FixtureRequest) -> str:
    ref = str(request.config.getoption("--image"))
    result = podman("image", "exists", full_name(ref))
    assert result.returncode == 0, f"image {ref} is not in podman's store: run `make image`"
    return ref


@pytest.fixture(scope="module")
def rendered(
    image: str, endpoints: Endpoints, tmp_path_factory: pytest.TempPathFactory, stores: tuple[Session, Elasticsearch]
) -> Iterator[Rendered]:
    name = f"img{os.urandom(4).hex()}"
    document = namespace_document(name)
    grpc_port, metrics_port = free_port(), free_port()
    docs = _render(endpoints, document, grpc_port, metrics_port, tmp_path_factory.mktemp("chart"))
    pods = _pods(docs)
    # The namespace files exactly as the chart's ConfigMaps hold them (the release's, and the pre-install hook's
    # copy), in a folder podman mounts read-only.
    config_maps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    mounted = {
        role: config_maps[v["configMap"]["name"]]
        for role, pod in pods.items()
        for v in pod.pod["volumes"]
        if v["name"] == "namespaces"
    }
    files = mounted["worker"]
    assert all(data == files for data in mounted.values()), "the pods mount different namespace files"
    namespace_dir = tmp_path_factory.mktemp("namespaces")
    namespace_dir.chmod(0o755)
    for file_name, text in files.items():
        (namespace_dir / file_name).write_text(text)
        (namespace_dir / file_name).chmod(0o644)
    yield Rendered(image, name, namespace_dir, grpc_port, metrics_port, pods)
    namespace = load_namespace(namespace_dir / f"{name}.yaml")
    ScratchNamespace(namespace, namespace_dir, endpoints).drop(*stores)


@pytest.fixture
def containers() -> Iterator[list[str]]:
    """Ids of the containers a test started: stopped and removed by id afterwards, whatever happened."""
    started: list[str] = []
    yield started
    for cid in started:
        podman("rm", "--force", "--time", "10", cid)


def _start(rendered: Rendered, role: str, containers: list[str]) -> str:
    result = rendered.run(role, detach=True)
    assert result.returncode == 0, f"{role} did not start:\n{result.stderr}"
    cid = result.stdout.strip()
    containers.append(cid)
    return cid


def _logs(cid: str) -> str:
    return podman("logs", "--tail", "40", cid).stdout + podman("logs", "--tail", "40", cid).stderr


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except OSError:
        return 0


def _running(cid: str) -> bool:
    return podman("inspect", "--format", "{{.State.Running}}", cid).stdout.strip() == "true"


def _ready(cid: str, port: int) -> bool:
    """/readyz answers 200; a container that exited fails the wait at once, with its log."""
    if not _running(cid):
        raise AssertionError(f"container {cid[:12]} exited:\n{_logs(cid)}")
    return _http_status(f"http://127.0.0.1:{port}/readyz") == 200


def _stop(cid: str) -> int:
    """SIGTERM, as Kubernetes stops a pod; the exit code once the container has stopped."""
    checked("stop", "--time", "60", cid, timeout=120)
    return int(checked("inspect", "--format", "{{.State.ExitCode}}", cid).strip())


# -- the tests -----------------------------------------------------------------------------------------------------


def test_chart_defaults_name_the_image_that_make_image_builds(image: str) -> None:
    docs = [d for d in yaml.safe_load_all(_default_render()) if d]
    images = {c["image"] for pod in _pods(docs).values() for c in [pod.container]}
    assert images == {image}, f"the chart's default values run {images}, make image builds {image}"


def _default_render() -> str:
    result = helm("template", RELEASE, CHART, "--namespace", "walstream")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_image_runs_walstream_as_a_non_root_user(image: str) -> None:
    config = json.loads(checked("image", "inspect", "--format", "{{json .Config}}", full_name(image)))
    assert config["Entrypoint"] == ["walstream"]
    assert config["User"] == f"{UID}:{UID}"
    result = podman("run", "--rm", "--read-only", image, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: walstream")
    assert checked("run", "--rm", "--read-only", "--entrypoint", "id", image, "-u").strip() == str(UID)


def test_namespaces_validate_reads_the_mounted_namespace_files(rendered: Rendered) -> None:
    pod = rendered.pods["namespaces-apply"]
    result = podman(
        "run", "--rm", *pod.run_options(rendered.namespace_dir), rendered.image, "namespaces", "validate", timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert rendered.namespace in result.stdout + result.stderr


def test_worker_from_the_chart_applies_entries_to_both_stores(
    rendered: Rendered, endpoints: Endpoints, stores: tuple[Session, Elasticsearch], containers: list[str]
) -> None:
    job = rendered.run("namespaces-apply", detach=False)
    assert job.returncode == 0, f"the namespaces-apply Job failed:\n{job.stdout}\n{job.stderr}"

    worker = _start(rendered, "worker", containers)
    wait_until(lambda: _ready(worker, rendered.metrics_port), 180, "the worker's /readyz", lambda: _logs(worker))
    # What the worker may and may not do inside its container.
    assert checked("exec", worker, "id", "-u").strip() == str(UID)
    probe = podman("exec", worker, "touch", "/opt/walstream/probe")
    assert probe.returncode != 0 and "Read-only file system" in probe.stderr, probe

    namespace = load_namespace(rendered.namespace_dir / f"{rendered.namespace}.yaml")
    writer = SyncWalWriter(endpoints.kafka_bootstrap, {namespace.name: namespace})
    try:
        entries = []
        for i in range(ENTRIES):
            key = f"k{i % 100}"
            if i % 7 == 6:
                entries.append(writer.prepare(namespace.name, key, Op.DELETE))
            else:
                entries.append(writer.prepare(namespace.name, key, Op.UPSERT, {"color": "teal", "qty": i}))
        results = [f.result(timeout=60) for f in [writer.submit_entry(e) for e in entries]]
        assert all(r.ok for r in results), [r for r in results if not r.ok][:3]
    finally:
        writer.close()

    expected = expected_rows(model_of(entries))
    session, es = stores

    def converged() -> bool:  # the namespaces-apply Job made the table and the index
        return cassandra_rows(session, rendered.namespace) == expected and es_docs(es, rendered.namespace) == expected

    wait_until(converged, 180, f"{len(expected)} rows and documents from the worker", lambda: _logs(worker))
    assert _running(worker)
    assert _stop(worker) == 0, _logs(worker)


def test_api_from_the_chart_is_ready_and_writes_to_the_log(rendered: Rendered, containers: list[str]) -> None:
    api = _start(rendered, "api", containers)
    wait_until(lambda: _ready(api, rendered.metrics_port), 180, "the API's /readyz", lambda: _logs(api))
    with WalClient(f"127.0.0.1:{rendered.grpc_port}") as client:
        response = client.write_to_log(write_request(rendered.namespace, "api-1", "UPSERT", {"color": "red", "qty": 1}))
    assert response.durable is Durable.TRUE, response.message
    assert _stop(api) == 0, _logs(api)


def test_no_container_of_the_image_is_left_running(rendered: Rendered) -> None:
    # Runs last: every container above was removed by its id.
    running = checked("ps", "--filter", f"ancestor={full_name(rendered.image)}", "--format", "{{.ID}}")
    assert running.strip() == ""
