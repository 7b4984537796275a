"""The Helm chart: lint, Kubernetes schema validation of what it renders, and the promises the chart makes.

Needs helm and kubernetes-validate in ${WALSTREAM_TOOLS_DIR:-<repo>/.tools}/bin: `bash helm/install-tools.sh`.
A missing tool fails these tests; it never skips them.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "walstream"
EXAMPLES = CHART / "examples"
TOOLS_BIN = Path(os.environ.get("WALSTREAM_TOOLS_DIR") or REPO / ".tools") / "bin"
INSTALL_HINT = "run `bash helm/install-tools.sh` from the repository root"

RELEASE = "wal"
K8S_NAMESPACE = "walstream"
# The chart's kubeVersion floor and the newest version kubernetes-validate bundles.
KUBE_VERSIONS = ("1.25", "1.37")
# Custom resources: their schemas are not among Kubernetes' own, so only these are left to the checks below.
CRD_KINDS = frozenset({"ScaledObject", "ServiceMonitor"})

# Values files the chart must render cleanly: None is the chart's defaults. Besides the examples, test-only files
# cover what the examples leave out.
CASES: dict[str, Path | None] = {
    "defaults": None,
    "small": EXAMPLES / "small.yaml",
    "production": EXAMPLES / "production.yaml",
    "mtls": REPO / "tests" / "helm" / "values" / "mtls.yaml",
}

Manifest = dict[str, Any]


# -- tools and rendering -----------------------------------------------------------------------------------------------


def tool(name: str, bin_dir: Path = TOOLS_BIN) -> Path:
    """The path of a pinned tool; fails (never skips) the test when it is not installed."""
    path = bin_dir / name
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"{name} is not installed at {path}: {INSTALL_HINT}", pytrace=False)
    return path


@cache
def _helm_home() -> dict[str, str]:
    # Keep helm away from the user's own repositories, plugins and caches.
    home = Path(tempfile.mkdtemp(prefix="walstream-helm-"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    return {
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }


def helm(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **_helm_home()}
    return subprocess.run(
        [str(tool("helm")), *map(str, args)], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def values_args(values: Path | None) -> list[str | Path]:
    return ["-f", values] if values is not None else []


@cache
def render(case: str) -> tuple[Manifest, ...]:
    """Every manifest `helm template` renders for one values case, hooks included."""
    result = helm("template", RELEASE, CHART, "--namespace", K8S_NAMESPACE, *values_args(CASES[case]))
    assert result.returncode == 0, f"helm template failed for {case}:\n{result.stderr}"
    docs = tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)
    assert docs, f"helm template rendered nothing for {case}"
    return docs


def values_of(case: str) -> dict[str, Any]:
    """The chart's values for a case: defaults overlaid with the case's file (lists replace, as in Helm)."""

    def overlay(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
        merged = dict(base)
        for key, value in top.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = overlay(merged[key], value)
            else:
                merged[key] = value
        return merged

    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    path = CASES[case]
    return defaults if path is None else overlay(defaults, yaml.safe_load(path.read_text()) or {})


def of_kind(docs: tuple[Manifest, ...], kind: str) -> list[Manifest]:
    return [doc for doc in docs if doc["kind"] == kind]


def component(doc: Manifest) -> str | None:
    value = doc["metadata"].get("labels", {}).get("app.kubernetes.io/component")
    return None if value is None else str(value)


def pod_templates(docs: tuple[Manifest, ...]) -> Iterator[tuple[str, Manifest]]:
    """(name, pod spec) of every workload that runs pods."""
    for doc in docs:
        if doc["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]
        elif doc["kind"] == "CronJob":
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def is_custom_resource(doc: Manifest) -> bool:
    """Kubernetes' own API groups are core (no group), dot-less (apps, batch...) or end in .k8s.io."""
    group = doc["apiVersion"].rpartition("/")[0]
    return "." in group and not group.endswith(".k8s.io")


def fullname(name: str) -> str:
    return f"{RELEASE}-walstream-{name}"


all_cases = pytest.mark.parametrize("case", list(CASES))


# -- the tools themselves ----------------------------------------------------------------------------------------------


def test_a_missing_tool_fails_with_the_install_command(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match=r"bash helm/install-tools\.sh"):
        tool("helm", bin_dir=tmp_path)


def test_every_example_values_file_is_tested() -> None:
    assert set(EXAMPLES.glob("*.yaml")) <= {path for path in CASES.values() if path is not None}


# -- lint and Kubernetes schemas ---------------------------------------------------------------------------------------


@all_cases
def test_helm_lint_strict(case: str) -> None:
    result = helm("lint", "--strict", CHART, *values_args(CASES[case]))
    assert result.returncode == 0, f"helm lint --strict failed for {case}:\n{result.stdout}\n{result.stderr}"


@all_cases
def test_manifests_validate_against_kubernetes_schemas(case: str, tmp_path: Path) -> None:
    docs = render(case)
    core = [doc for doc in docs if doc["kind"] not in CRD_KINDS]
    manifest = tmp_path / f"{case}.yaml"
    manifest.write_text(yaml.safe_dump_all(core, sort_keys=False))
    versions = [arg for version in KUBE_VERSIONS for arg in ("-k", version)]
    result = subprocess.run(
        [str(tool("kubernetes-validate")), "--strict", *versions, str(manifest)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = result.stdout.splitlines()
    # A kind it has no schema for is only a WARN with exit 0: count the passes so nothing slips through unchecked.
    problems = [line for line in lines if not line.startswith("INFO ")]
    passed = [line for line in lines if line.startswith("INFO ") and " passed for resource " in line]
    assert not problems, "kubernetes-validate reported:\n" + "\n".join(problems)
    assert result.returncode == 0, f"kubernetes-validate exited {result.returncode}:\n{result.stdout}{result.stderr}"
    assert len(passed) == len(core) * len(KUBE_VERSIONS), result.stdout


@all_cases
def test_custom_resources_are_well_formed(case: str) -> None:
    """What can be checked of the CRD kinds that the Kubernetes schemas do not cover."""
    docs = render(case)
    custom = {doc["kind"] for doc in docs if is_custom_resource(doc)}
    assert custom <= CRD_KINDS, f"custom resources nobody validates: {custom - CRD_KINDS}"
    assert case != "production" or custom == CRD_KINDS
    deployments = {doc["metadata"]["name"] for doc in of_kind(docs, "Deployment")}
    for scaled in of_kind(docs, "ScaledObject"):
        assert scaled["apiVersion"] == "keda.sh/v1alpha1"
        spec = scaled["spec"]
        assert set(spec) <= {
            "scaleTargetRef",
            "minReplicaCount",
            "maxReplicaCount",
            "pollingInterval",
            "cooldownPeriod",
            "triggers",
        }
        assert spec["scaleTargetRef"]["name"] in deployments
        assert isinstance(spec["minReplicaCount"], int) and isinstance(spec["maxReplicaCount"], int)
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        assert spec["triggers"]
        for trigger in spec["triggers"]:
            assert trigger["type"] == "kafka"
            # KEDA trigger metadata is a map of strings.
            assert all(isinstance(value, str) for value in trigger["metadata"].values()), trigger
    services = of_kind(docs, "Service")
    for monitor in of_kind(docs, "ServiceMonitor"):
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        wanted = monitor["spec"]["selector"]["matchLabels"]
        selected = [s for s in services if wanted.items() <= s["metadata"]["labels"].items()]
        assert len(selected) == 1, f"ServiceMonitor selects {len(selected)} Services"
        ports = {port["name"] for port in selected[0]["spec"]["ports"]}
        assert {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]} <= ports


# -- the chart's promises ----------------------------------------------------------------------------------------------


@all_cases
def test_every_long_running_container_has_liveness_and_readiness_probes(case: str) -> None:
    docs = render(case)
    metrics_port = values_of(case)["ports"]["metrics"]
    deployments = of_kind(docs, "Deployment")
    assert deployments
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        for container in pod.get("initContainers", []) + pod["containers"]:
            where = f"{deployment['metadata']['name']}/{container['name']}"
            assert container.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/healthz", where
            assert container.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz", where
            for probe in ("livenessProbe", "readinessProbe"):
                assert container[probe]["httpGet"]["port"] == "metrics", where
            named = {port["name"]: port["containerPort"] for port in container.get("ports", [])}
            assert named.get("metrics") == metrics_port, where


@all_cases
def test_pods_run_as_non_root_with_a_read_only_root_filesystem(case: str) -> None:
    pods = list(pod_templates(render(case)))
    assert pods
    for name, pod in pods:
        security = pod.get("securityContext", {})
        assert security.get("runAsNonRoot") is True, name
        assert security.get("runAsUser", 0) != 0, name
        assert security.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        empty_dirs = {volume["name"] for volume in pod.get("volumes", []) if "emptyDir" in volume}
        for container in pod.get("initContainers", []) + pod["containers"]:
            where = f"{name}/{container['name']}"
            context = container.get("securityContext", {})
            assert context.get("readOnlyRootFilesystem") is True, where
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context.get("privileged", False) is False, where
            assert "ALL" in context.get("capabilities", {}).get("drop", []), where
            assert context.get("runAsUser", security.get("runAsUser")) == 10001, where
            mounts = {mount["mountPath"]: mount["name"] for mount in container.get("volumeMounts", [])}
            for path in ("/tmp", "/var/lib/walstream"):
                assert mounts.get(path) in empty_dirs, f"{where}: {path} is not an emptyDir"


@all_cases
def test_one_worker_deployment_per_group(case: str) -> None:
    docs = render(case)
    groups = values_of(case)["workers"]["groups"]
    workers = [doc for doc in of_kind(docs, "Deployment") if component(doc) == "worker"]
    assert sorted(doc["metadata"]["name"] for doc in workers) == sorted(fullname(f"worker-{g['name']}") for g in groups)
    for group in groups:
        (deployment,) = [doc for doc in workers if doc["metadata"]["name"] == fullname(f"worker-{group['name']}")]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["args"] == [
            "worker",
            "--group",
            group["name"],
            "--namespaces",
            ",".join(group["namespaces"]),
            "--role",
            "fanout",  # the retry tiers have their own Deployment and consumer group
            "--metrics-port",
            "9100",
        ]
        assert container["resources"] == group["resources"]


def test_worker_groups_of_the_examples() -> None:
    """Pins the counts the generic test derives, so a broken values_of cannot make it pass vacuously."""
    counts = {
        case: len([doc for doc in of_kind(render(case), "Deployment") if component(doc) == "worker"]) for case in CASES
    }
    assert counts == {"defaults": 1, "small": 1, "production": 2, "mtls": 1}


@all_cases
def test_keda_scales_each_group_on_its_namespaces_lag(case: str) -> None:
    docs = render(case)
    values = values_of(case)
    scaled = {doc["spec"]["scaleTargetRef"]["name"]: doc for doc in of_kind(docs, "ScaledObject")}
    deployments = {doc["metadata"]["name"]: doc for doc in of_kind(docs, "Deployment")}
    for group in values["workers"]["groups"]:
        name = fullname(f"worker-{group['name']}")
        enabled = group.get("keda", {}).get("enabled", values["workers"]["keda"]["enabled"])
        if not enabled:
            assert name not in scaled
            assert deployments[name]["spec"]["replicas"] == group["replicas"]
            continue
        assert "replicas" not in deployments[name]["spec"], "KEDA owns the replica count"
        triggers = [t["metadata"] for t in scaled[name]["spec"]["triggers"]]
        assert [(t["consumerGroup"], t["topic"]) for t in triggers] == [
            (f"walstream.{ns}", f"wal.{ns}") for ns in group["namespaces"]
        ]
    assert case != "production" or len(scaled) == 2


@all_cases
def test_namespaces_config_map_holds_every_namespace(case: str) -> None:
    docs = render(case)
    configured = values_of(case)["namespaces"]
    maps = {doc["metadata"]["name"]: doc for doc in of_kind(docs, "ConfigMap")}
    regular, hook = maps[fullname("namespaces")], maps[fullname("namespaces-apply")]
    assert hook["data"] == regular["data"], "the install hook must see the same namespaces as the workers"
    assert set(regular["data"]) == {f"{name}.yaml" for name in configured}
    for name, document in configured.items():
        parsed = yaml.safe_load(regular["data"][f"{name}.yaml"])
        assert isinstance(parsed, dict)
        assert parsed["name"] == name
        assert parsed == {**document, "name": name}


@all_cases
def test_namespaces_are_valid_walstream_namespaces(case: str) -> None:
    """The rendered documents load with walstream's own strict namespace validation."""
    from streams.namespaces import parse_namespace

    (config_map,) = [
        doc for doc in of_kind(render(case), "ConfigMap") if doc["metadata"]["name"] == fullname("namespaces")
    ]
    for file_name, text in config_map["data"].items():
        namespace = parse_namespace(yaml.safe_load(text), Path(file_name))
        assert f"{namespace.name}.yaml" == file_name


@all_cases
def test_namespaces_say_who_the_api_admits(case: str) -> None:
    """An empty or missing authorization list admits nobody through the API, so every namespace says both."""
    values = values_of(case)
    for name, document in values["namespaces"].items():
        authorization = document.get("authorization")
        assert isinstance(authorization, dict), f"{case}: namespaces.{name} has no authorization"
        assert {"producers", "deleters"} <= set(authorization), f"{case}: namespaces.{name}.authorization"
        assert authorization["producers"] or authorization["deleters"], f"{case}: namespaces.{name} admits nobody"
        identities = {identity for grant in authorization.values() for identity in grant} - {"*"}
        # Identities come from the tokens file. The defaults leave its Secret to the installer (NOTES says so).
        assert not identities or values["auth"]["existingSecret"] or case == "defaults", f"{case}: no tokens file"


@all_cases
def test_every_walstream_container_is_configured_by_environment(case: str) -> None:
    docs = render(case)
    values = values_of(case)
    expected = {
        "WALSTREAM_STACK_MODE": "external",
        "WALSTREAM_KAFKA_BOOTSTRAP": values["endpoints"]["kafkaBootstrap"],
        "WALSTREAM_CASSANDRA_CONTACT": values["endpoints"]["cassandraContact"],
        "WALSTREAM_ELASTICSEARCH_URL": values["endpoints"]["elasticsearchUrl"],
        "WALSTREAM_NAMESPACE_DIR": "/etc/walstream/namespaces",
        "WALSTREAM_DATA_DIR": "/var/lib/walstream",
    }
    for name, pod in pod_templates(docs):
        (container,) = pod["containers"]
        env = {item["name"]: item.get("value") for item in container["env"]}
        assert expected.items() <= env.items(), name
        mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        config_map = volumes[mounts["/etc/walstream/namespaces"]]["configMap"]["name"]
        assert config_map in {fullname("namespaces"), fullname("namespaces-apply")}, name
        is_api = name == f"Deployment/{fullname('api')}"
        secret = values["auth"]["existingSecret"]
        if is_api and secret:
            assert env["WALSTREAM_API_TOKENS_FILE"] == "/etc/walstream/auth/tokens.yaml"
            assert volumes[mounts["/etc/walstream/auth"]]["secret"]["secretName"] == secret
            assert volumes[mounts["/etc/walstream/auth"]]["secret"]["defaultMode"] == 0o440
        else:
            assert "WALSTREAM_API_TOKENS_FILE" not in env, name
    assert case != "production" or values["auth"]["existingSecret"]


@all_cases
def test_servers_listen_on_the_pod_ip(case: str) -> None:
    """walstream binds loopback unless told; probes, Prometheus and the API's Service reach the pod IP."""
    for name, pod in pod_templates(render(case)):
        (container,) = pod["containers"]
        env = {item["name"]: item.get("value") for item in container["env"]}
        assert env["WALSTREAM_METRICS_HOST"] == "0.0.0.0", name
        if name == f"Deployment/{fullname('api')}":
            assert env["WALSTREAM_API_HOST"] == "0.0.0.0"
        else:
            assert "WALSTREAM_API_HOST" not in env, name


# -- client security ---------------------------------------------------------------------------------------------------

SERVICES = ("kafka", "cassandra", "elasticsearch")
# The clusters each kind of pod talks to: the API and the retry worker use Kafka alone.
POD_VOLUMES = ("spec", "template", "spec", "volumes", "*")
ROLE_SERVICES = {
    "api": {"kafka"},
    "retry": {"kafka"},
    "worker": set(SERVICES),
    "namespaces-apply": set(SERVICES),
    "verify": set(SERVICES),
}
SECRETS_DIR = "/etc/walstream/secrets"
# Secrets walstream reads as values; the chart may only ever point at them as files (<name>_FILE).
SECRET_VARIABLES = {
    "WALSTREAM_KAFKA_PASSWORD",
    "WALSTREAM_CASSANDRA_PASSWORD",
    "WALSTREAM_ELASTICSEARCH_PASSWORD",
    "WALSTREAM_ELASTICSEARCH_API_KEY",
}


def secret_files(security: dict[str, Any], service: str) -> dict[str, tuple[str, str, str]]:
    """What a service's values ask to mount: variable -> (Secret name, key, path of the file)."""
    values = security.get(service) or {}
    prefix = f"WALSTREAM_{service.upper()}_"
    refs = {
        "PASSWORD_FILE": ("passwordSecret", "key", "password"),
        "API_KEY_FILE": ("apiKeySecret", "key", "api-key"),
        "CA_FILE": ("caSecret", "key", "ca.crt"),
        "CERT_FILE": ("clientCertSecret", "certKey", "tls.crt"),
        "KEY_FILE": ("clientCertSecret", "keyKey", "tls.key"),
    }
    files = {}
    for variable, (value, key, file) in refs.items():
        if ref := values.get(value):
            files[prefix + variable] = (ref["name"], ref[key], f"{SECRETS_DIR}/{service}/{file}")
    return files


def walstream_pods(docs: tuple[Manifest, ...]) -> Iterator[tuple[str, str, Manifest, Manifest]]:
    """(name, role, pod spec, its one container) of every walstream workload."""
    for name, pod in pod_templates(docs):
        (doc,) = [d for d in docs if f"{d['kind']}/{d['metadata']['name']}" == name]
        role = component(doc)
        assert role in ROLE_SERVICES, name
        (container,) = pod["containers"]
        yield name, role, pod, container


def test_the_security_cases_cover_every_setting() -> None:
    """Between them, the cases set every security value, so the tests below check each one somewhere."""
    seen: dict[str, set[str]] = {service: set() for service in SERVICES}
    for case in CASES:
        for service, settings in values_of(case)["security"].items():
            seen[service] |= {key for key, value in settings.items() if value not in (None, "", False)}
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["security"]["properties"]
    assert seen == {service: set(schema[service]["properties"]) for service in SERVICES}


@all_cases
def test_cluster_secrets_are_mounted_as_files_where_they_are_used(case: str) -> None:
    security = values_of(case)["security"]
    for name, role, pod, container in walstream_pods(render(case)):
        env = {item["name"]: item for item in container["env"]}
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
        for service in SERVICES:
            where = f"{name} ({service})"
            files = secret_files(security, service) if service in ROLE_SERVICES[role] else {}
            directory = f"{SECRETS_DIR}/{service}"
            if not files:
                assert f"{service}-secrets" not in volumes, where
                assert directory not in mounts, where
                assert not [
                    var for var in env if var.startswith(f"WALSTREAM_{service.upper()}_") and var.endswith("_FILE")
                ]
                continue
            mount = mounts[directory]
            assert mount["readOnly"] is True, where
            projected = volumes[mount["name"]]["projected"]
            assert projected["defaultMode"] == 0o440, where
            mounted = {
                (source["secret"]["name"], item["key"]): f"{directory}/{item['path']}"
                for source in projected["sources"]
                for item in source["secret"]["items"]
            }
            assert mounted == {(secret, key): path for secret, key, path in files.values()}, where
            for variable, (_, _, path) in files.items():
                assert env[variable] == {"name": variable, "value": path}, where
        assert not SECRET_VARIABLES & set(env), f"{name}: a secret as a plain variable"
        assert not [item for item in env.values() if "valueFrom" in item], f"{name}: a secret in the environment"


@all_cases
def test_security_settings_reach_the_pods_that_talk_to_each_cluster(case: str) -> None:
    security = values_of(case)["security"]
    kafka, cassandra, elasticsearch = (security[service] for service in SERVICES)
    expected = {
        "kafka": {
            "WALSTREAM_KAFKA_SECURITY_PROTOCOL": None if kafka["protocol"] == "PLAINTEXT" else kafka["protocol"],
            "WALSTREAM_KAFKA_SASL_MECHANISM": kafka["saslMechanism"] if kafka["protocol"] == "SASL_SSL" else None,
            "WALSTREAM_KAFKA_USERNAME": kafka["username"] or None,
        },
        "cassandra": {
            "WALSTREAM_CASSANDRA_USERNAME": cassandra["username"] or None,
            "WALSTREAM_CASSANDRA_TLS": "true" if cassandra["tls"] else None,
            "WALSTREAM_CASSANDRA_VERIFY_HOSTNAME": str(cassandra["verifyHostname"]).lower()
            if cassandra["tls"]
            else None,
        },
        "elasticsearch": {
            "WALSTREAM_ELASTICSEARCH_USERNAME": elasticsearch["username"] or None,
            "WALSTREAM_ELASTICSEARCH_FINGERPRINT": elasticsearch["fingerprint"] or None,
        },
    }
    for name, role, _, container in walstream_pods(render(case)):
        env = {item["name"]: item.get("value") for item in container["env"]}
        for service, settings in expected.items():
            for variable, value in settings.items():
                assert env.get(variable) == (value if service in ROLE_SERVICES[role] else None), f"{name}: {variable}"


@all_cases
def test_walstream_accepts_the_environment_of_every_container(case: str, tmp_path: Path) -> None:
    """Each container's environment loads with walstream's own settings: no unknown variable, no setting without
    its partner. Secret files are stood in for by local ones."""
    from streams.config import CassandraSecurity, ElasticsearchSecurity, StackMode, load_settings

    for name, role, _, container in walstream_pods(render(case)):
        env = {item["name"]: item["value"] for item in container["env"]}
        for variable, path in env.items():
            if variable.removesuffix("_FILE") in SECRET_VARIABLES:
                local = tmp_path / path.lstrip("/")
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_text(f"secret of {variable}\n")
                env[variable] = str(local)
        settings = load_settings(env, uid=10001)
        assert settings.mode is StackMode.EXTERNAL, name
        assert settings.runtime.metrics_host == "0.0.0.0", name
        assert settings.kafka.protocol == values_of(case)["security"]["kafka"]["protocol"], name
        for service, unset in {"cassandra": CassandraSecurity(), "elasticsearch": ElasticsearchSecurity()}.items():
            if service not in ROLE_SERVICES[role]:
                assert getattr(settings, service) == unset, f"{name}: {service} settings in a pod that does not use it"
        for variable in SECRET_VARIABLES & {key.removesuffix("_FILE") for key in env}:
            service, field = variable.removeprefix("WALSTREAM_").lower().split("_", 1)
            secret = getattr(getattr(settings, service), field)
            assert secret.get_secret_value() == f"secret of {variable}_FILE", f"{name}: {variable}"


@all_cases
def test_secrets_are_referenced_only_as_read_only_volumes(case: str) -> None:
    """The chart holds no secret material: Secrets are named only as sources of pod volumes, never in a
    ConfigMap, an annotation or the environment; and it creates no Secret of its own."""
    docs = render(case)
    assert not of_kind(docs, "Secret")
    security = values_of(case)["security"]
    names = {secret for service in SERVICES for secret, _, _ in secret_files(security, service).values()}
    if values_of(case)["auth"]["existingSecret"]:
        names.add(values_of(case)["auth"]["existingSecret"])
    pod_volumes = [POD_VOLUMES, ("spec", "jobTemplate", *POD_VOLUMES)]
    allowed = {
        *((*volumes, "projected", "sources", "*", "secret", "name") for volumes in pod_volumes),
        *((*volumes, "secret", "secretName") for volumes in pod_volumes),
    }

    def places(node: Any, path: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
        if isinstance(node, dict):
            for key, value in node.items():
                yield from places(value, (*path, str(key)))
        elif isinstance(node, list):
            for item in node:
                yield from places(item, (*path, "*"))
        elif node in names:
            yield path

    for doc in docs:
        for path in places(doc, ()):
            assert path in allowed, f"{doc['kind']}/{doc['metadata']['name']}: a Secret named at {'.'.join(path)}"
    assert case not in {"production", "mtls"} or names


def test_the_defaults_render_no_cluster_security() -> None:
    docs = render("defaults")
    assert SECRETS_DIR not in yaml.safe_dump_all(docs)
    endpoints = {"WALSTREAM_KAFKA_BOOTSTRAP", "WALSTREAM_CASSANDRA_CONTACT", "WALSTREAM_ELASTICSEARCH_URL"}
    prefixes = tuple(f"WALSTREAM_{service.upper()}_" for service in SERVICES)
    for name, _, pod, container in walstream_pods(docs):
        variables = {item["name"] for item in container["env"]} - endpoints
        assert not [variable for variable in variables if variable.startswith(prefixes)], name
        assert not [volume for volume in pod["volumes"] if "projected" in volume], name


@all_cases
def test_api_service_autoscaling_and_commands(case: str) -> None:
    docs = render(case)
    values = values_of(case)
    deployments = {doc["metadata"]["name"]: doc for doc in of_kind(docs, "Deployment")}
    api = deployments[fullname("api")]
    (container,) = api["spec"]["template"]["spec"]["containers"]
    processes = str(values["api"].get("processes", 1))
    assert container["args"] == ["api", "--port", "50051", "--metrics-port", "9100", "--processes", processes]
    (service,) = [doc for doc in of_kind(docs, "Service") if doc["metadata"]["name"] == fullname("api")]
    assert {(p["name"], p["port"]) for p in service["spec"]["ports"]} == {("grpc", 50051), ("metrics", 9100)}
    assert service["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()
    hpas = of_kind(docs, "HorizontalPodAutoscaler")
    if values["api"]["autoscaling"]["enabled"]:
        (hpa,) = hpas
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"]["name"] == fullname("api")
        assert "replicas" not in api["spec"]
    else:
        assert not hpas
        assert api["spec"]["replicas"] == values["api"]["replicas"]
    (retry,) = [deployments[fullname("retry")]["spec"]["template"]["spec"]["containers"][0]]
    assert retry["args"] == ["worker", "--retry", "--metrics-port", "9100"]
    for name, deployment in deployments.items():
        pdbs = [p for p in of_kind(docs, "PodDisruptionBudget") if p["metadata"]["name"] == name]
        for pdb in pdbs:
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


@all_cases
def test_namespaces_apply_runs_as_a_pre_install_and_pre_upgrade_hook(case: str) -> None:
    docs = render(case)
    (job,) = of_kind(docs, "Job")
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["namespaces", "apply"]
    # What the Job needs must be created before it: hooks run before the release's ordinary resources exist.
    hook_weight = int(annotations["helm.sh/hook-weight"])
    pod = job["spec"]["template"]["spec"]
    by_name = {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    needed = [("ConfigMap", volumes["namespaces"]["configMap"]["name"])]
    if values_of(case)["serviceAccount"]["create"]:
        needed.append(("ServiceAccount", pod["serviceAccountName"]))
    for key in needed:
        needed_annotations = by_name[key]["metadata"].get("annotations", {})
        assert "pre-install" in needed_annotations.get("helm.sh/hook", ""), key
        assert int(needed_annotations["helm.sh/hook-weight"]) < hook_weight, key


@all_cases
def test_verify_runs_on_a_schedule_only_when_enabled(case: str) -> None:
    values = values_of(case)["verifyCronJob"]
    jobs = of_kind(render(case), "CronJob")
    if not values["enabled"]:
        assert jobs == []
        return
    assert [job["metadata"]["name"] for job in jobs] == [fullname(f"verify-{ns}") for ns in values["namespaces"]]
    for ns, job in zip(values["namespaces"], jobs, strict=True):
        assert job["spec"]["schedule"] == values["schedule"]
        assert job["spec"]["concurrencyPolicy"] == "Forbid"
        pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        assert pod["restartPolicy"] == "Never"
        (container,) = pod["containers"]
        assert container["args"][:5] == ["verify", ns, "--json", "--metrics-file", values["metricsFile"]]
        assert container["args"][5:] == values["extraArgs"]


@all_cases
def test_the_grafana_dashboard_ships_only_when_enabled(case: str) -> None:
    values = values_of(case)["grafanaDashboard"]
    maps = [doc for doc in of_kind(render(case), "ConfigMap") if component(doc) == "dashboard"]
    if not values["enabled"]:
        assert maps == []
        return
    (config_map,) = maps
    metadata = config_map["metadata"]
    assert metadata["name"] == fullname("dashboard")
    assert metadata["labels"][values["label"]] == values["labelValue"]
    assert metadata["namespace"] == (values["namespace"] or K8S_NAMESPACE)
    assert metadata.get("annotations", {}) == values["annotations"]
    shipped = json.loads(config_map["data"]["walstream.json"])
    assert shipped == json.loads((CHART / "dashboards" / "walstream.json").read_text())


def test_the_dashboards_label_is_the_sidecars_by_default_and_configurable() -> None:
    defaults = values_of("defaults")["grafanaDashboard"]
    assert defaults["enabled"] is False
    assert (defaults["label"], defaults["labelValue"]) == ("grafana_dashboard", "1")
    result = helm(
        "template", RELEASE, CHART, "--namespace", K8S_NAMESPACE, "--set", "grafanaDashboard.enabled=true",
        "--set", "grafanaDashboard.label=dashboards.example.com/grafana", "--set-string",
        "grafanaDashboard.labelValue=walstream", "--show-only", "templates/configmap-dashboard.yaml",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (config_map,) = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert config_map["metadata"]["labels"]["dashboards.example.com/grafana"] == "walstream"
    assert "grafana_dashboard" not in config_map["metadata"]["labels"]
    assert json.loads(config_map["data"]["walstream.json"])["uid"] == "walstream-overview"


# -- values.schema.json ------------------------------------------------------------------------------------------------

BAD_VALUES = {
    "top-level typo": ("workres:\n  groups: []\n", "additional properties 'workres' not allowed"),
    "replicas as a string": ('api:\n  replicas: "2"\n', "/api/replicas"),
    "group replicas as a string": (
        "workers:\n  groups:\n    - name: main\n      namespaces: [orders]\n      replicas: two\n      resources: {}\n",
        "/workers/groups/0/replicas",
    ),
    "group key typo": (
        "workers:\n  groups:\n    - name: main\n      namespace: [orders]\n      replicas: 1\n      resources: {}\n",
        "/workers/groups/0",
    ),
    "nested typo": ("api:\n  autoscalling:\n    enabled: false\n", "additional properties 'autoscalling' not allowed"),
    "bad endpoint": ("endpoints:\n  cassandraContact: cassandra\n", "/endpoints/cassandraContact"),
    "bad namespace name": (
        "namespaces:\n  Orders:\n    partitions: 3\n    targets: {a: {}}\n",
        "'Orders' does not match pattern",
    ),
    # SASL without TLS sends passwords in the clear: walstream does not offer it.
    "SASL without TLS": (
        "security:\n  kafka:\n    protocol: SASL_PLAINTEXT\n",
        "at '/security/kafka/protocol': value must be one of 'PLAINTEXT', 'SSL', 'SASL_SSL'",
    ),
    "unknown SASL mechanism": ("security:\n  kafka:\n    saslMechanism: GSSAPI\n", "/security/kafka/saslMechanism"),
    "a password written into the values": (
        "security:\n  kafka:\n    password: hunter2\n",
        "additional properties 'password' not allowed",
    ),
    "a Secret reference without its key": (
        "security:\n  cassandra:\n    passwordSecret: {name: walstream-cassandra}\n",
        "at '/security/cassandra/passwordSecret': missing property 'key'",
    ),
    "a client certificate without its key": (
        "security:\n  kafka:\n    clientCertSecret: {name: walstream-kafka-tls, certKey: tls.crt}\n",
        "at '/security/kafka/clientCertSecret': missing property 'keyKey'",
    ),
    "a Secret reference with a stray key": (
        "security:\n  elasticsearch:\n    apiKeySecret: {name: es, key: api-key, optional: true}\n",
        "additional properties 'optional' not allowed",
    ),
    "a dashboard switch as a string": ('grafanaDashboard:\n  enabled: "yes"\n', "/grafanaDashboard/enabled"),
    "a dashboard label that is no label": (
        "grafanaDashboard:\n  label: grafana dashboard\n",
        "/grafanaDashboard/label",
    ),
    "Cassandra TLS as a string": ('security:\n  cassandra:\n    tls: "yes"\n', "/security/cassandra/tls"),
    "a fingerprint that is not SHA-256": (
        "security:\n  elasticsearch:\n    fingerprint: AB:CD\n",
        "/security/elasticsearch/fingerprint",
    ),
}


@pytest.mark.parametrize("name", list(BAD_VALUES))
def test_values_schema_rejects_bad_values(name: str, tmp_path: Path) -> None:
    text, message = BAD_VALUES[name]
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    commands: list[list[str | Path]] = [["template", RELEASE, CHART], ["lint", "--strict", CHART]]
    for command in commands:
        result = helm(*command, "-f", bad)
        output = result.stdout + result.stderr
        assert result.returncode != 0, f"helm {command[0]} accepted {name!r}:\n{text}"
        assert "schema" in output and message in output, output


KAFKA_SASL = "security:\n  kafka:\n    protocol: SASL_SSL\n"
HTTPS_ES = "endpoints:\n  elasticsearchUrl: https://elasticsearch:9200\n"
A_SECRET = "{name: walstream-creds, key: password}"
A_CA = "{name: data-ca, key: ca.crt}"
A_FINGERPRINT = ":".join(["AB"] * 32)

# Combinations the schema cannot refuse, which walstream would refuse at start: the chart refuses them first.
BAD_SECURITY = {
    "SASL_SSL without a username": (
        KAFKA_SASL + f"    passwordSecret: {A_SECRET}\n",
        "security.kafka.username: protocol SASL_SSL needs a username",
    ),
    "SASL_SSL without a password": (
        KAFKA_SASL + "    username: walstream\n",
        "security.kafka.passwordSecret: protocol SASL_SSL needs the password from a Secret",
    ),
    "Kafka credentials without SASL_SSL": (
        f"security:\n  kafka:\n    protocol: SSL\n    username: walstream\n    passwordSecret: {A_SECRET}\n",
        "security.kafka.passwordSecret: SASL credentials need protocol SASL_SSL (it is SSL)",
    ),
    "a Kafka CA without TLS": (
        f"security:\n  kafka:\n    caSecret: {A_CA}\n",
        "security.kafka.caSecret and security.kafka.clientCertSecret: TLS files need protocol SSL or SASL_SSL",
    ),
    "a Cassandra username without a password": (
        "security:\n  cassandra:\n    username: walstream\n",
        "security.cassandra.passwordSecret: security.cassandra.username needs the password from a Secret",
    ),
    "a Cassandra password without a username": (
        f"security:\n  cassandra:\n    passwordSecret: {A_SECRET}\n",
        "security.cassandra.username: security.cassandra.passwordSecret needs the username it belongs to",
    ),
    "a Cassandra CA without TLS": (
        f"security:\n  cassandra:\n    caSecret: {A_CA}\n",
        "security.cassandra.caSecret and security.cassandra.clientCertSecret: TLS files need security.cassandra.tls",
    ),
    "an Elasticsearch username and an API key": (
        f"security:\n  elasticsearch:\n    username: walstream\n    passwordSecret: {A_SECRET}\n"
        f"    apiKeySecret: {A_SECRET}\n",
        "security.elasticsearch.username and security.elasticsearch.apiKeySecret are alternatives: set one",
    ),
    "an Elasticsearch username without a password": (
        "security:\n  elasticsearch:\n    username: walstream\n",
        "security.elasticsearch.passwordSecret: security.elasticsearch.username needs the password from a Secret",
    ),
    "an Elasticsearch CA and a fingerprint": (
        HTTPS_ES + f"security:\n  elasticsearch:\n    caSecret: {A_CA}\n    fingerprint: {A_FINGERPRINT}\n",
        "security.elasticsearch.caSecret and security.elasticsearch.fingerprint are alternatives: set one",
    ),
    "an Elasticsearch CA over http": (
        f"security:\n  elasticsearch:\n    caSecret: {A_CA}\n",
        'endpoints.elasticsearchUrl "http://elasticsearch:9200" is not https://',
    ),
    "Secrets without an fsGroup to read them": (
        f"podSecurityContext:\n  fsGroup: null\nsecurity:\n  elasticsearch:\n    apiKeySecret: {A_SECRET}\n",
        "podSecurityContext.fsGroup: the security and auth Secrets are mounted readable by the pod's fsGroup",
    ),
    "a tokens Secret without an fsGroup to read it": (
        "podSecurityContext:\n  fsGroup: null\nauth:\n  existingSecret: walstream-api-tokens\n",
        "podSecurityContext.fsGroup: the security and auth Secrets are mounted readable by the pod's fsGroup",
    ),
    "a password as a plain variable": (
        "extraEnv:\n  - name: WALSTREAM_KAFKA_PASSWORD\n    value: hunter2\n",
        "extraEnv: WALSTREAM_KAFKA_PASSWORD is set by the chart from security.kafka.passwordSecret",
    ),
    "a password file beside the chart's": (
        "extraEnv:\n  - name: WALSTREAM_ELASTICSEARCH_API_KEY_FILE\n    value: /mnt/es/api-key\n",
        "extraEnv: WALSTREAM_ELASTICSEARCH_API_KEY_FILE is set by the chart from security.elasticsearch.apiKeySecret",
    ),
    "a bind host of its own": (
        "extraEnv:\n  - name: WALSTREAM_METRICS_HOST\n    value: 127.0.0.1\n",
        "extraEnv: the chart sets WALSTREAM_METRICS_HOST to 0.0.0.0",
    ),
}


@pytest.mark.parametrize("name", list(BAD_SECURITY))
def test_security_settings_that_cannot_work_are_refused(name: str, tmp_path: Path) -> None:
    text, message = BAD_SECURITY[name]
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    result = helm("template", RELEASE, CHART, "-f", bad)
    assert result.returncode != 0, f"helm template accepted {name!r}:\n{text}"
    assert message in result.stderr, result.stderr


def test_a_group_naming_an_undefined_namespace_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "workers:\n  groups:\n    - name: main\n      namespaces: [nope]\n      replicas: 1\n      resources: {}\n"
    )
    result = helm("template", RELEASE, CHART, "-f", bad)
    assert result.returncode != 0
    assert 'lists namespace "nope", which is not defined under namespaces' in result.stderr


def test_worker_group_names_must_be_unique(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    group = "    - name: main\n      namespaces: [orders]\n      replicas: 1\n      resources: {}\n"
    bad.write_text("workers:\n  groups:\n" + group + group)
    result = helm("template", RELEASE, CHART, "-f", bad)
    assert result.returncode != 0
    assert 'the group name "main" is used twice' in result.stderr


def test_the_image_runs_as_the_user_the_chart_expects() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    defaults = values_of("defaults")
    assert f"USER {defaults['securityContext']['runAsUser']}" in dockerfile
    assert 'ENTRYPOINT ["walstream"]' in dockerfile
