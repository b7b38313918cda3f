"""Routing between resident versions: pins by header and path, the canary share (sticky per
routing key, binomial over 10 000 real requests), X-Model-Version and model_version everywhere."""

from __future__ import annotations

import asyncio
import hashlib
import math
from pathlib import Path

import numpy as np
import pytest

from batching import DeadlineExceededError, QueueFullError
from sidecar.errors import InvalidInputError
from sidecar.serving.canary import CanaryGuard, is_server_fault
from sidecar.serving.traffic import Traffic, bucket
from tests.sidecar.conftest import StartServer
from tests.sidecar.versioned import TEXTS, build_versions, expected_vectors, make_root


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_versions(tmp_path_factory.mktemp("staging"), "7", "8")


@pytest.fixture(scope="module")
def outputs(snapshots: dict[str, Path]) -> dict[str, np.ndarray]:
    return {name: expected_vectors(path) for name, path in snapshots.items()}


async def serving(s, name: str) -> None:
    """Wait for the reconcile pass that loads what versions.json names at start."""
    await s.service.registry.reconcile_now()
    assert s.service.registry.versions[name].state.value == "ready"


def vectors(body: dict) -> np.ndarray:
    return np.asarray([row["embedding"] for row in body["results"]], dtype=np.float32)


async def test_pins_by_header_and_path_answer_from_that_version(
    start_server: StartServer, snapshots, outputs, tmp_path: Path
) -> None:
    root = make_root(tmp_path, snapshots, {"stable": "7", "canary": {"version": "8", "percent": 0}})
    s = await start_server(root, SIDECAR_MODEL_POLL_S="0")
    await serving(s, "8")
    body = {"inputs": TEXTS}
    for pin, version in (("7", "7"), ("8", "8"), ("stable", "7"), ("canary", "8")):
        async with s.uds.post("/v1/predict", json=body, headers={"X-Model-Version": pin}) as r:
            answer = await r.json()
            assert (r.status, r.headers["X-Model-Version"], answer["model_version"]) == (
                200, version, version,
            )  # fmt: skip
            np.testing.assert_allclose(vectors(answer), outputs[version], atol=1e-5)
    async with s.tcp.post("/v1/models/m/versions/8/predict", json=body) as r:
        assert r.headers["X-Model-Version"] == "8"
        np.testing.assert_allclose(vectors(await r.json()), outputs["8"], atol=1e-5)
    async with s.tcp.post("/v1/models/m/versions/8/embeddings", json={"input": TEXTS}) as r:
        answer = await r.json()
        assert (r.headers["X-Model-Version"], answer["model_version"]) == ("8", "8")
        got = np.asarray([row["embedding"] for row in answer["data"]], dtype=np.float32)
        np.testing.assert_allclose(got, outputs["8"], atol=1e-5)
    oip = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["x"]}]}
    async with s.tcp.post("/v2/models/m/versions/8/infer", json=oip) as r:
        assert (r.status, (await r.json())["model_version"], r.headers["X-Model-Version"]) == (
            200, "8", "8",
        )  # fmt: skip
    async with s.tcp.get("/v1/models/m/versions/canary") as r:
        assert (r.status, (await r.json())["version"]) == (200, "8")
    async with s.tcp.get("/v1/models") as r:
        card = (await r.json())["data"][0]
        assert {v["version"]: v["state"] for v in card["versions"]} == {"7": "ready", "8": "ready"}
        assert r.headers["X-Model-Version"] == "7"  # what no version answered: the stable one


async def test_an_unknown_pin_is_404_and_a_version_not_loaded_is_503(
    start_server: StartServer, snapshots, tmp_path: Path
) -> None:
    root = make_root(tmp_path, snapshots, None)
    s = await start_server(root, SIDECAR_MODEL_POLL_S="0")
    body = {"inputs": ["x"]}
    for path, headers in (
        ("/v1/predict", {"X-Model-Version": "99"}),
        ("/v1/predict", {"X-Model-Version": "../../etc"}),
        ("/v1/predict", {"X-Model-Version": "canary"}),  # no canary set
        ("/v1/models/m/versions/99/predict", {}),
    ):
        async with s.tcp.post(path, json=body, headers=headers) as r:
            assert r.status == 404, (path, headers)
            assert (await r.json())["error"]["code"] == "version_not_found"
    for path, headers in (
        ("/v1/predict", {"X-Model-Version": "7"}),
        ("/v1/models/m/versions/7/predict", {}),
    ):
        async with s.tcp.post(path, json=body, headers=headers) as r:
            assert r.status == 503
            assert r.headers["Retry-After"] == "5"
            assert (await r.json())["error"]["code"] == "version_not_ready"
    async with s.tcp.post("/v1/models/other/versions/8/predict", json=body) as r:
        assert (r.status, (await r.json())["error"]["code"]) == (404, "model_not_found")


async def test_the_canary_share_is_binomial_and_sticky_per_routing_key(
    start_server: StartServer, snapshots, tmp_path: Path
) -> None:
    root = make_root(
        tmp_path, snapshots, {"stable": "7", "canary": {"version": "8", "percent": 10}}
    )
    s = await start_server(root, SIDECAR_MODEL_POLL_S="0", SIDECAR_BATCH_WINDOW_MS="0")
    await serving(s, "8")
    num_requests = 10_000
    limit = asyncio.Semaphore(64)

    async def one(key: str | None) -> str:
        headers = {} if key is None else {"X-Routing-Key": key}
        async with limit, s.tcp.post("/v1/predict", json={"inputs": "x"}, headers=headers) as r:
            assert r.status == 200
            version = r.headers["X-Model-Version"]
            assert (await r.json())["model_version"] == version
            return version

    answered = await asyncio.gather(*(one(f"user-{i}") for i in range(num_requests)))
    canary = answered.count("8")
    sigma = math.sqrt(num_requests * 0.1 * 0.9)
    assert abs(canary - num_requests * 0.1) <= 3 * sigma, canary
    assert answered.count("7") == num_requests - canary
    # The same key always gets the same version (it is a hash of the key, not a draw).
    for key in ("user-1", "user-2", "user-3", "user-42"):
        again = set(await asyncio.gather(*(one(key) for _ in range(20))))
        assert again == {answered[int(key.split("-")[1])]}
    # Without a key, a random share of the same size.
    unkeyed = await asyncio.gather(*(one(None) for _ in range(2_000)))
    assert abs(unkeyed.count("8") - 200) <= 3 * math.sqrt(2_000 * 0.1 * 0.9)


def test_a_key_hashes_to_the_same_bucket_in_every_process() -> None:
    # blake2b, not the salted built-in hash: the bucket holds across restarts and replicas.
    digest = hashlib.blake2b(b"user-1", digest_size=8).digest()
    assert bucket("user-1") == int.from_bytes(digest, "big") % 10_000
    traffic = Traffic(stable="7", canary="8", canary_percent=100.0)
    assert traffic.choose("anyone") == ("8", "canary")
    assert Traffic(stable="7", canary="8", canary_percent=0.0).choose("anyone") == ("7", "stable")


async def test_a_failing_canary_is_rolled_back_automatically(
    start_server: StartServer, snapshots, tmp_path: Path
) -> None:
    desired = {"stable": "7", "canary": {"version": "8", "percent": 50}}
    root = make_root(tmp_path, snapshots, desired)
    s = await start_server(
        root, SIDECAR_MODEL_POLL_S="0", SIDECAR_CANARY_MAX_ERROR_RATIO="0.5",
        SIDECAR_CANARY_WINDOW="10", SIDECAR_BATCH_WINDOW_MS="20",
    )  # fmt: skip
    await serving(s, "8")
    canary = {"X-Model-Version": "canary"}
    # A client's mistakes say nothing of the version: not counted.
    for _ in range(12):
        async with s.tcp.post("/v1/predict", json={"inputs": []}, headers=canary) as r:
            assert r.status == 400
    assert s.service.registry.traffic.canary == "8"
    # Server-side failures are. Ten canary requests end with a passed deadline (the 504 of
    # the batcher), through the registry's own leases as the routes take and return them.
    registry = s.service.registry
    for _ in range(10):
        lease = registry.route("canary", None)
        lease.release(DeadlineExceededError("the deadline passed in the queue"))
    await s.service.registry.reconcile_now()
    assert s.service.registry.traffic.canary is None
    async with s.tcp.post("/v1/predict", json={"inputs": ["x"]}, headers=canary) as r:
        assert r.status == 404
    async with s.tcp.post(
        "/v1/predict", json={"inputs": ["x"]}, headers={"X-Routing-Key": "k"}
    ) as r:
        assert r.headers["X-Model-Version"] == "7"
    reason = s.service.registry.versions["8"].reason
    assert reason.startswith("canary rolled back: 100% of its last 10 requests failed")


def test_only_the_versions_own_failures_count_against_a_canary() -> None:
    assert is_server_fault(RuntimeError("CUDA error")) and is_server_fault(DeadlineExceededError())
    for error in (
        None,
        QueueFullError("full", retry_after_s=1),
        InvalidInputError("bad"),
        asyncio.CancelledError(),
    ):
        assert not is_server_fault(error)
    guard = CanaryGuard(0.5, window=4)
    assert [guard.record("8", e) for e in (None, RuntimeError(), InvalidInputError("x"))] == [
        None, None, None,
    ]  # fmt: skip
    assert guard.record("8", RuntimeError()) is None  # 2 of 3 counted: the window is not full
    assert guard.record("8", RuntimeError()) == 0.75
