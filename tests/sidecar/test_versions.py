"""Model versions in one pod: discovery, swap with drain and free, failed versions (real servers,
real snapshot files copied into a model root as a user would)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from loaders import DesiredState
from tests.sidecar.conftest import StartServer
from tests.sidecar.versioned import (
    TEXTS,
    admin_session,
    build_versions,
    copy_version,
    expected_vectors,
    make_root,
    states,
    until,
)


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_versions(tmp_path_factory.mktemp("staging"), "7", "8")


@pytest.fixture(scope="module")
def outputs(snapshots: dict[str, Path]) -> dict[str, np.ndarray]:
    return {name: expected_vectors(path) for name, path in snapshots.items()}


async def predict(s, *, headers: dict[str, str] | None = None, path: str = "/v1/predict"):
    async with s.tcp.post(path, json={"inputs": TEXTS}, headers=headers or {}) as r:
        body = await r.json()
        return r.status, r.headers.get("X-Model-Version"), body


def vectors(body: dict) -> np.ndarray:
    return np.asarray([row["embedding"] for row in body["results"]], dtype=np.float32)


async def test_a_plain_snapshot_is_one_version(start_server: StartServer, tiny_embed_dir) -> None:
    s = await start_server(tiny_embed_dir)
    status, header, body = await predict(s)
    assert (status, header, body["model_version"]) == (200, "1", "1")
    async with s.tcp.get("/v1/models") as r:
        card = (await r.json())["data"][0]
        assert r.headers["X-Model-Version"] == "1"
    assert card["versions"] == [{"version": "1", "state": "ready", "reason": None}]
    assert card["traffic"]["stable"] == "1"
    async with s.tcp.post("/v1/embeddings", json={"input": "x"}) as r:
        assert (await r.json())["model_version"] == "1"
        assert r.headers["X-Model-Version"] == "1"


async def test_the_newest_version_is_stable_without_a_desired_state(
    start_server: StartServer, snapshots, outputs, tmp_path: Path
) -> None:
    root = tmp_path / "sentiment"
    root.mkdir()
    for name in ("7", "8"):
        copy_version(snapshots[name], root, name)
    (root / ".tmp-9").mkdir()  # a copy under way is no version
    s = await start_server(root, SIDECAR_MODEL_POLL_S="0")
    status, header, body = await predict(s)
    assert (status, header, body["model"], body["model_version"]) == (200, "8", "sentiment", "8")
    np.testing.assert_allclose(vectors(body), outputs["8"], atol=1e-5)
    async with s.tcp.get("/v1/models") as r:
        listed = {v["version"]: v["state"] for v in (await r.json())["data"][0]["versions"]}
    assert listed == {"7": "unloaded", "8": "ready"}


async def test_versions_json_names_the_stable_version(
    start_server: StartServer, snapshots, outputs, tmp_path: Path
) -> None:
    root = make_root(tmp_path, snapshots, {"stable": "7"})
    s = await start_server(root, SIDECAR_MODEL_POLL_S="0.05")
    status, header, body = await predict(s)
    assert (status, header) == (200, "7")
    np.testing.assert_allclose(vectors(body), outputs["7"], atol=1e-5)
    # The file changes (a ConfigMap update): the loop swaps, and the old version is freed.
    (root / "versions.json").write_text(json.dumps({"stable": "8"}))

    async def swapped() -> bool:
        return (await predict(s))[1] == "8"

    await until(swapped)
    status, header, body = await predict(s)
    np.testing.assert_allclose(vectors(body), outputs["8"], atol=1e-5)
    registry = s.service.registry
    await until(lambda: _state_is(registry, "7", "unloaded"))
    assert registry.versions["7"].served is None
    assert registry.history == ["7"]
    async with s.health.get("/metrics") as r:
        metrics = await r.text()
    assert "sidecar_model_swap_seconds_count 1.0" in metrics
    info = [line for line in metrics.splitlines() if line.startswith("sidecar_model_info{")]
    assert len(info) == 1 and 'version="8"' in info[0]


async def _state_is(registry, name: str, state: str) -> bool:
    version = registry.versions.get(name)
    return version is not None and version.state.value == state


async def test_a_version_copied_in_becomes_stable(
    start_server: StartServer, snapshots, outputs, tmp_path: Path
) -> None:
    root = make_root(tmp_path, {"7": snapshots["7"]})
    s = await start_server(root, SIDECAR_MODEL_POLL_S="0.05")
    assert (await predict(s))[1] == "7"
    staging = tmp_path / "with-digests"
    shutil.copytree(snapshots["8"], staging)
    digest = hashlib.sha256((staging / "model.safetensors").read_bytes()).hexdigest()
    (staging / "SHA256SUMS").write_text(f"{digest}  model.safetensors\n")  # verified on load
    copy_version(staging, root, "8")

    async def swapped() -> bool:
        return (await predict(s))[1] == "8"

    await until(swapped)
    np.testing.assert_allclose(vectors((await predict(s))[2]), outputs["8"], atol=1e-5)


def _truncated(snapshot: Path, root: Path, name: str = "8") -> None:
    target = copy_version(snapshot, root, name)
    weights = target / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])  # the copy stopped half-way


def _corrupt_header(snapshot: Path, root: Path) -> None:
    target = copy_version(snapshot, root, "8")
    weights = target / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:16] = b"\x00\xff\xfe{[}]\x01"  # the JSON header is no longer JSON
    weights.write_bytes(bytes(data))


def _no_tokenizer(snapshot: Path, root: Path) -> None:
    target = copy_version(snapshot, root, "8")
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json"):
        (target / name).unlink()


def _wrong_digest(snapshot: Path, root: Path) -> None:
    target = copy_version(snapshot, root, "8")
    (target / "SHA256SUMS").write_text("0" * 64 + "  model.safetensors\n")


def _whole(snapshot: Path, root: Path) -> None:
    copy_version(snapshot, root, "8")


@pytest.mark.parametrize(
    ("damage", "env", "reason"),
    [
        (_truncated, {}, "model.safetensors"),
        (_corrupt_header, {}, "model.safetensors"),
        (_no_tokenizer, {}, "tokenizer"),
        (_wrong_digest, {}, "sha256"),
        # Room for one version only: the swap would need two (availability policy).
        (_whole, {"SIDECAR_VERSIONS_MAX_BYTES": "6000000"}, "out of memory"),
    ],
    ids=["truncated", "corrupt-header", "no-tokenizer", "wrong-digest", "out-of-memory"],
)
async def test_a_failed_version_never_becomes_stable_and_the_old_one_serves(
    start_server: StartServer,
    snapshots,
    outputs,
    tmp_path: Path,
    socket_dir: str,
    damage,
    env: dict[str, str],
    reason: str,
) -> None:
    root = make_root(tmp_path, {"7": snapshots["7"]})
    admin_path = f"{socket_dir}/admin.sock"
    s = await start_server(root, SIDECAR_MODEL_POLL_S="0.05", SIDECAR_ADMIN_UDS=admin_path, **env)
    damage(snapshots["8"], root)
    async with admin_session(admin_path) as admin:

        async def failed() -> bool:
            status, header, body = await predict(s)
            assert (status, header) == (200, "7")  # the old version serves throughout
            np.testing.assert_allclose(vectors(body), outputs["7"], atol=1e-5)
            return (await states(admin)).get("8", {}).get("state") == "failed"

        await until(failed)
        record = (await states(admin))["8"]
        assert reason in record["reason"]
        assert str(root) not in record["reason"]  # no host path in what the API shows
        assert (await states(admin))["_traffic"]["stable"] == "7"
        for _ in range(5):  # failed stays failed: not retried while its files are unchanged
            assert (await predict(s))[1] == "7"
        assert s.service.registry.versions["8"].state.value == "failed"
    async with s.tcp.post(
        "/v1/predict", json={"inputs": ["x"]}, headers={"X-Model-Version": "8"}
    ) as r:
        assert r.status == 503
        assert (await r.json())["error"]["code"] == "version_not_ready"


async def test_a_failed_version_is_retried_when_its_files_are_replaced(
    start_server: StartServer, snapshots, tmp_path: Path
) -> None:
    root = make_root(tmp_path, {"7": snapshots["7"]})
    s = await start_server(root, SIDECAR_MODEL_POLL_S="0.05")
    _truncated(snapshots["8"], root)
    registry = s.service.registry
    await until(lambda: _state_is(registry, "8", "failed"))
    shutil.copyfile(snapshots["8"] / "model.safetensors", root / "8" / "model.safetensors")

    async def swapped() -> bool:
        return (await predict(s))[1] == "8"

    await until(swapped)


async def test_the_resource_policy_unloads_first_and_answers_503_in_between(
    start_server: StartServer, snapshots, outputs, tmp_path: Path
) -> None:
    root = make_root(tmp_path, snapshots, {"stable": "7"})
    s = await start_server(
        root, SIDECAR_MODEL_POLL_S="0", SIDECAR_SWAP_POLICY="resource",
        SIDECAR_VERSIONS_MAX_BYTES="6000000",  # room for one version
    )  # fmt: skip
    registry = s.service.registry
    answers: list[tuple[int, str | None, str | None]] = []
    stop = False

    async def load() -> None:
        while not stop:
            async with s.uds.post("/v1/predict", json={"inputs": TEXTS}) as r:
                answers.append((r.status, r.headers.get("X-Model-Version"),
                                r.headers.get("Retry-After")))  # fmt: skip

    running = asyncio.create_task(load())
    await registry.apply(DesiredState(stable="8"))
    stop = True
    await running
    assert (await predict(s))[1] == "8"
    assert registry.versions["7"].state.value == "unloaded"
    assert {(status, retry) for status, _, retry in answers if status != 200} <= {(503, "5")}
    assert {version for status, version, _ in answers if status == 200} <= {"7", "8"}

    # A new version that fails after the old one was unloaded: the old one is loaded again.
    shutil.rmtree(root / "7")
    _truncated(snapshots["7"], root, "7")  # 7 is now half-copied
    await s.service.reload()
    await registry.apply(DesiredState(stable="7"))
    assert registry.versions["7"].state.value == "failed"
    status, header, body = await predict(s)
    assert (status, header) == (200, "8")
    np.testing.assert_allclose(vectors(body), outputs["8"], atol=1e-5)


def _configmap_update(directory: Path, document: dict, stamp: str) -> None:
    """Write versions.json the way the kubelet updates a mounted ConfigMap: a new timestamped
    directory, then `..data` swapped to it by an atomic rename; versions.json links through it."""
    (directory / stamp).mkdir(parents=True)
    (directory / stamp / "versions.json").write_text(json.dumps(document))
    (directory / "..data_tmp").symlink_to(stamp)
    (directory / "..data_tmp").rename(directory / "..data")
    if not (directory / "versions.json").is_symlink():
        (directory / "versions.json").symlink_to("..data/versions.json")


async def test_the_desired_state_may_come_from_a_configmap_beside_the_root(
    start_server: StartServer, snapshots, tmp_path: Path
) -> None:
    root = tmp_path / "pvc" / "m"
    root.mkdir(parents=True)
    for name in ("7", "8"):
        copy_version(snapshots[name], root, name)
    configmap = tmp_path / "configmap"
    _configmap_update(configmap, {"stable": "7"}, "..2026_01")
    s = await start_server(
        root, SIDECAR_MODEL_POLL_S="0.05", SIDECAR_VERSIONS_FILE=str(configmap / "versions.json")
    )
    assert (await predict(s))[1] == "7"  # not the newest: the ConfigMap says 7
    _configmap_update(configmap, {"stable": "8"}, "..2026_02")

    async def swapped() -> bool:
        return (await predict(s))[1] == "8"

    await until(swapped)


async def test_a_version_wanted_back_while_it_drains_is_loaded_again(
    start_server: StartServer, snapshots, tmp_path: Path
) -> None:
    root = make_root(tmp_path, snapshots, {"stable": "7"})
    s = await start_server(root, SIDECAR_MODEL_POLL_S="0")
    registry = s.service.registry
    held = registry.route("7", None)  # a request still running on 7
    await registry.apply(DesiredState(stable="8"))
    await until(lambda: _state_is(registry, "7", "draining"))
    await registry.apply(DesiredState(stable="7"))  # wanted back before it is gone
    assert (await predict(s))[1] == "8"  # 7 drains first; 8 serves meanwhile
    held.release()

    async def back() -> bool:
        return (await predict(s))[1] == "7"

    await until(back)
    assert registry.versions["7"].state.value == "ready"


async def test_a_desired_version_not_copied_yet_is_waited_for(
    start_server: StartServer, snapshots, tmp_path: Path
) -> None:
    root = make_root(tmp_path, {"7": snapshots["7"]}, {"stable": "8"})
    s = await start_server(root, SIDECAR_MODEL_POLL_S="0.05")
    assert (await predict(s))[1] == "7"  # the newest there is, until 8 arrives
    copy_version(snapshots["8"], root, "8")

    async def arrived() -> bool:
        return (await predict(s))[1] == "8"

    await until(arrived)
