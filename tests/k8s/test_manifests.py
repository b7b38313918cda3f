"""The Kubernetes examples users copy: schema-valid, and naming only what the code serves and reads.

Built-in kinds are validated against the Kubernetes OpenAPI schemas bundled in
kubernetes-validate (offline); custom resources (the Prometheus Operator's PodMonitor) have no
bundled schema, so their required structure is checked here.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from aiohttp import web

from sidecar.config import Settings

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "k8s-examples"
KUBERNETES_VERSION = "1.30"  # its schema has native sidecars (restartPolicy on init containers)
MANIFESTS = sorted(EXAMPLES.glob("*.yaml"))
DOCUMENTS = [
    pytest.param(document, id=f"{path.name}:{document['kind']}:{document['metadata']['name']}")
    for path in MANIFESTS
    for document in yaml.safe_load_all(path.read_text())
    if document
]
SIDECAR_ENV = re.compile(r"\bSIDECAR_[A-Z0-9_]+\b")
METRIC = re.compile(r"\bsidecar_[a-z0-9_]+\b")


def function_node(path: Path, name: str) -> ast.FunctionDef:
    """The definition of function `name` in the source file `path`."""
    return next(
        node
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef) and node.name == name
    )


def read_env_names() -> set[str]:
    """The SIDECAR_* variables the settings read: every `from_env` of sidecar/config.py
    (`Settings.from_env` and those of the settings groups it reads) and of the settings modules
    of features (`sidecar/*_settings.py`)."""
    paths = [REPO / "sidecar" / "config.py", *sorted((REPO / "sidecar").glob("*_settings.py"))]
    readers = [
        n
        for path in paths
        for n in ast.walk(ast.parse(path.read_text()))
        if isinstance(n, ast.FunctionDef) and n.name == "from_env"
    ]
    return {
        node.value
        for reader in readers
        for node in ast.walk(reader)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.startswith("SIDECAR_")
    }


def health_routes() -> set[str]:
    """The paths the health port serves (sidecar/api/health.py)."""
    from sidecar.api import health

    return {route.path for route in health.routes() if isinstance(route, web.RouteDef)}


def exported_metrics() -> set[str]:
    """Every series name sidecar/metrics.py can export (histogram and counter suffixes added)."""
    tree = ast.parse((REPO / "sidecar" / "metrics.py").read_text())
    names = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and re.fullmatch(r"sidecar_[a-z0-9_]+", node.value)
    }
    suffixes = ("", "_total", "_bucket", "_sum", "_count", "_created")
    return {name + suffix for name in names for suffix in suffixes}


def unknown_env_names(text: str) -> set[str]:
    """SIDECAR_* names in `text` that the code does not read."""
    return set(SIDECAR_ENV.findall(text)) - read_env_names()


def sidecar_containers(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The containers running the sidecar image in a workload's pod template."""
    pod = document.get("spec", {}).get("template", {}).get("spec", {})
    for container in pod.get("initContainers", []) + pod.get("containers", []):
        if container["image"].startswith("sidecar:"):
            yield container


@pytest.mark.parametrize("document", DOCUMENTS)
def test_manifest_is_valid(document: dict[str, Any]) -> None:
    if document["apiVersion"] == "monitoring.coreos.com/v1":
        check_pod_monitor(document)
        return
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def check_pod_monitor(document: dict[str, Any]) -> None:
    """The fields the PodMonitor CRD requires, and that it scrapes what the sidecar serves."""
    assert document["kind"] == "PodMonitor"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", document["metadata"]["name"])
    spec = document["spec"]
    assert spec["selector"]["matchLabels"], "a PodMonitor selects pods by label"
    assert spec["podMetricsEndpoints"], "a PodMonitor needs at least one endpoint"
    ports = {
        port["name"]: port["containerPort"]
        for other in DOCUMENTS
        for container in sidecar_containers(other.values[0])
        for port in container.get("ports", [])
    }
    for endpoint in spec["podMetricsEndpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
        assert ports[endpoint["port"]] == Settings().health_port
        assert endpoint["path"] in health_routes()


def test_every_manifest_names_only_env_vars_the_code_reads() -> None:
    for path in [*MANIFESTS, REPO / "Dockerfile.cpu", REPO / "Dockerfile.cuda"]:
        assert unknown_env_names(path.read_text()) == set(), path.name


def test_the_env_check_catches_a_name_the_code_does_not_read() -> None:
    manifest = "env:\n- {name: SIDECAR_BATCH_MAX_SIZE, value: '8'}\n- {name: SIDECAR_BATCH_SIZE}\n"
    assert unknown_env_names(manifest) == {"SIDECAR_BATCH_SIZE"}
    assert {"SIDECAR_MODEL", "SIDECAR_UDS", "SIDECAR_HEALTH_PORT"} <= read_env_names()


@pytest.mark.parametrize("document", DOCUMENTS)
def test_sidecar_ports_and_probes_are_served(document: dict[str, Any]) -> None:
    defaults = Settings()
    for container in sidecar_containers(document):
        env = {item["name"]: item.get("value") for item in container.get("env", [])}
        api_port = int(env.get("SIDECAR_PORT") or defaults.port)
        health_port = int(env.get("SIDECAR_HEALTH_PORT") or defaults.health_port)
        ports = {port["name"]: port["containerPort"] for port in container.get("ports", [])}
        # Only the health port is declared: the inference API never leaves the pod.
        assert set(ports.values()) <= {health_port}, container["name"]
        assert api_port not in ports.values()
        if container.get("restartPolicy") != "Always":
            continue  # a run-to-completion init container (sidecar pull): no probes
        probes = [container[key] for key in ("startupProbe", "readinessProbe", "livenessProbe")]
        for probe in probes:
            get = probe["httpGet"]
            assert get["path"] in health_routes()
            assert ports.get(get["port"], get["port"]) == health_port


def test_hpa_scales_on_an_exported_metric() -> None:
    documents = [param.values[0] for param in DOCUMENTS]
    hpas = [d for d in documents if d["kind"] == "HorizontalPodAutoscaler"]
    assert hpas
    for hpa in hpas:
        for metric in hpa["spec"]["metrics"]:
            assert metric["pods"]["metric"]["name"] in exported_metrics()


def test_grafana_dashboard_uses_exported_metrics() -> None:
    dashboard = json.loads((EXAMPLES / "grafana-dashboard.json").read_text())
    expressions = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    expressions += [
        variable["query"]
        for variable in dashboard["templating"]["list"]
        if variable["type"] == "query"
    ]
    used = {name for expr in expressions for name in METRIC.findall(expr)}
    assert used and used <= exported_metrics(), used - exported_metrics()
    assert {"sidecar_queue_depth", "sidecar_request_duration_seconds_bucket"} <= used
