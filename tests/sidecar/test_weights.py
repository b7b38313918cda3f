"""Weight loading as the sidecar drives it: digest pins, load modes, figures at /v1/info."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

import loaders
from sidecar.errors import StartupError
from tests.sidecar.conftest import StartServer


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def load_figures(s) -> dict:
    async with s.tcp.get("/v1/info") as r:
        return (await r.json())["load"]


async def test_pinned_digest_is_verified(start_server: StartServer, tiny_embed_dir: Path) -> None:
    digest = sha256(tiny_embed_dir / "model.safetensors")
    s = await start_server(tiny_embed_dir, SIDECAR_MODEL_SHA256=digest)
    assert (await load_figures(s))["sha256_verified_files"] == 1
    async with s.tcp.post("/v1/predict", json={"inputs": ["x"]}) as r:
        assert r.status == 200


async def test_wrong_digest_stops_start_up(start_server: StartServer, tiny_embed_dir: Path) -> None:
    s = await start_server(tiny_embed_dir, load=False, SIDECAR_MODEL_SHA256="0" * 64)
    with pytest.raises(StartupError, match=r"model\.safetensors"):
        await s.server.load()
    async with s.health.get("/readyz") as r:
        assert r.status == 503


async def test_recorded_digests_need_a_hub_snapshot(
    start_server: StartServer, tiny_embed_dir: Path
) -> None:
    s = await start_server(tiny_embed_dir, load=False, SIDECAR_MODEL_SHA256="recorded")
    with pytest.raises(StartupError, match="records no digests"):
        await s.server.load()


@pytest.mark.parametrize("mode", ["auto", "read", "mmap"])
async def test_load_modes(start_server: StartServer, tiny_embed_dir: Path, mode: str) -> None:
    s = await start_server(tiny_embed_dir, SIDECAR_LOAD_MODE=mode)
    local = not loaders.is_network_filesystem(tiny_embed_dir / "model.safetensors")
    expected = {"auto": "mmap" if local else "read", "read": "read", "mmap": "mmap"}[mode]
    assert (await load_figures(s))["mode"] == expected
    async with s.uds.post("/v1/predict", json={"inputs": ["same either way"]}) as r:
        assert r.status == 200
