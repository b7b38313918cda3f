"""The image as users run it (DESIGN section 10): a pod's sidecar, from outside and from its app."""

from __future__ import annotations

import json
import re
import shutil
import socket
import time
from pathlib import Path

import pytest

from tests.container.conftest import Pod, PodFactory, readable

pytestmark = pytest.mark.container

DIMENSION = 384  # all-MiniLM-L6-v2
HF_REPO = "sentence-transformers/all-MiniLM-L6-v2"
HF_COMMIT = "c9745ed1d9f207416be6d2e6f8de32d1f16199bf"


def test_cold_start_to_ready(pod: Pod, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print(f"\ncold start in the container (start to /readyz 200): {pod.cold_start_s:.1f} s")
    assert pod.cold_start_s < 120


def test_app_embeds_over_tcp_and_the_socket(pod: Pod) -> None:
    body = {"inputs": ["a sidecar in a pod", "another sentence"]}
    tcp_status, tcp = pod.app_request("tcp", "POST", "/v1/predict", body)
    uds_status, uds = pod.app_request("uds", "POST", "/v1/predict", body)
    assert (tcp_status, uds_status) == (200, 200)
    assert [len(r["embedding"]) for r in tcp["results"]] == [DIMENSION, DIMENSION]
    assert tcp["results"] == uds["results"]
    status, openai = pod.app_request("uds", "POST", "/v1/embeddings", {"input": "hello"})
    assert status == 200 and len(openai["data"][0]["embedding"]) == DIMENSION


def test_health_port_answers_outside_the_pod(pod: Pod) -> None:
    assert pod.health("/livez")[0] == 200
    assert pod.health("/readyz")[0] == 200
    assert pod.health("/startupz")[0] == 200
    assert pod.metric("sidecar_ready") == 1
    # The health listener serves no inference route.
    assert pod.health("/v1/models")[0] == 404


def test_inference_port_is_not_reachable_outside_the_pod(pod: Pod) -> None:
    pod.container.reload()
    assert set(pod.container.attrs["NetworkSettings"]["Ports"]) == {"9090/tcp"}
    address = pod.container.attrs["NetworkSettings"]["IPAddress"]
    with socket.create_connection((address, 9090), timeout=5):
        pass  # the health port listens on every interface
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((address, 8080), timeout=5).close()


def test_runs_as_non_root_read_only_without_capabilities(pod: Pod) -> None:
    host_config = pod.container.attrs["HostConfig"]
    assert host_config["ReadonlyRootfs"] is True
    assert host_config["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in host_config["SecurityOpt"]
    script = (
        "import os, sys\n"
        "status = dict(line.split(':\\t') for line in open('/proc/self/status').read().splitlines()"
        " if ':\\t' in line)\n"
        "try:\n"
        "    open('/opt/sidecar/written', 'w')\n"
        "    writable = True\n"
        "except OSError:\n"
        "    writable = False\n"
        "print(os.getuid(), os.getgid(), status['CapEff'].strip(), status['NoNewPrivs'].strip(),"
        " writable)\n"
    )
    exit_code, output = pod.container.exec_run(["python", "-c", script])
    assert exit_code == 0, output
    assert output.decode().split() == ["10001", "10001", "0000000000000000", "1", "False"]
    # The serving process itself (tini's child), not only what exec starts.
    exit_code, output = pod.container.exec_run(
        ["python", "-c", "print(open('/proc/1/status').read())"]
    )
    assert "Uid:\t10001" in output.decode()


def test_serving_process_runs_on_jemalloc(pod: Pod) -> None:
    # The allocator that keeps resident memory at a plateau (README "Memory"): loaded by the
    # serving process itself, not merely named in the image's environment.
    script = (
        "import os\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    cmd = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')\n"
        "    if b'serve' in cmd and b'tini' not in cmd[0] and int(pid) != os.getpid():\n"
        "        maps = open(f'/proc/{pid}/maps').read()\n"
        "        print(pid, 'jemalloc' if 'libjemalloc' in maps else 'glibc')\n"
    )
    exit_code, output = pod.container.exec_run(["python", "-c", script])
    assert exit_code == 0, output
    lines = output.decode().split("\n")
    found = [line.split()[1] for line in lines if line.strip()]
    assert found == ["jemalloc"], output.decode()


def test_healthcheck_turns_healthy(pod: Pod) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pod.container.reload()
        health = pod.container.attrs["State"]["Health"]
        if health["Status"] == "healthy":
            return
        time.sleep(0.5)
    pytest.fail(f"healthcheck: {health}")


def test_no_model_setting_serves_the_demo_model(pods: PodFactory) -> None:
    demo = pods.start({})
    status, body = demo.app_request("uds", "POST", "/v1/predict", {"inputs": ["hi"]})
    assert status == 200
    assert body["model"] == "all-MiniLM-L6-v2"
    assert len(body["results"][0]["embedding"]) == DIMENSION


def test_starts_offline_from_a_hugging_face_cache(
    pods: PodFactory, model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    hf_home = tmp_path_factory.mktemp("hf-home")
    storage = hf_home / "hub" / ("models--" + HF_REPO.replace("/", "--"))
    shutil.copytree(model_dir, storage / "snapshots" / HF_COMMIT)
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(HF_COMMIT)
    cached = pods.start(
        {"SIDECAR_MODEL": f"hf://{HF_REPO}", "HF_HUB_OFFLINE": "1"},
        {str(readable(hf_home)): "/var/cache/huggingface"},
    )
    status, body = cached.app_request("tcp", "POST", "/v1/predict", {"inputs": ["hi"]})
    assert status == 200
    assert body["model_version"] == HF_COMMIT
    assert len(body["results"][0]["embedding"]) == DIMENSION


def test_docker_stop_under_load_completes_accepted_work_and_exits_0(
    pods: PodFactory, model_dir: Path
) -> None:
    num_requests = 8
    # Deadlines far off: on a busy machine the queued work may take long, and a 504 is no drain bug.
    env = {
        "SIDECAR_MODEL": "/models",
        "SIDECAR_REQUEST_TIMEOUT_MS": "300000",
        "SIDECAR_DRAIN_TIMEOUT_S": "300",
    }
    loaded = pods.start(env, {str(model_dir): "/models"})
    loaded.app_start("load", "uds", str(num_requests), "16", "/tmp/load")

    def read_load() -> str:
        return loaded.app_run("read", "/tmp/load").strip()

    deadline = time.monotonic() + 60
    while read_load() != "sent":
        assert time.monotonic() < deadline, "the app did not send its requests"
        time.sleep(0.05)
    # Every request is in: the first is queued, and the others were written before it was.
    while loaded.metric("sidecar_queue_depth") == 0:
        assert time.monotonic() < deadline, "nothing queued"
        time.sleep(0.02)
    time.sleep(0.2)
    loaded.container.stop(timeout=330)
    assert loaded.container.wait(timeout=60)["StatusCode"] == 0
    while (result := read_load()) == "sent":  # the app is collecting the last responses
        assert time.monotonic() < deadline + 60, "the app got no answer to some requests"
        time.sleep(0.05)
    statuses = json.loads(result)
    assert statuses == [200] * num_requests
    assert json.loads(loaded.app_run("exists", "/var/run/sidecar/sidecar.sock")) is False
    logs = loaded.container.logs().decode()
    in_flight = re.search(r"draining: (\d+) requests in flight", logs)
    assert in_flight and int(in_flight.group(1)) > 0, "stopped with nothing to drain"
    assert "stopped" in logs
