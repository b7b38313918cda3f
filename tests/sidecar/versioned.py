"""Model roots for the version tests: real snapshots with different random weights, copied into
the root as a user would (into a dot-directory, then renamed), and each version's own output
computed in-process for comparison."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from sidecar.config import Settings
from sidecar.models import TextInputs
from sidecar.serving import loading
from tests.snapshots import make_bert_snapshot

TEXTS = ["the stable version answers", "a canary answers a share", "roll it back"]


def build_versions(staging: Path, *names: str) -> dict[str, Path]:
    """One embedding snapshot per name, each with weights of its own seed."""
    return {
        name: make_bert_snapshot(staging / name, task="embed", seed=100 + index)
        for index, name in enumerate(names)
    }


def make_root(
    tmp_path: Path, snapshots: dict[str, Path], desired: dict[str, Any] | None = None
) -> Path:
    """A model root `tmp_path/m` holding each snapshot as the version of its name, with a
    versions.json of `desired` (none: the newest version is stable)."""
    root = tmp_path / "m"
    root.mkdir()
    for name, snapshot in snapshots.items():
        copy_version(snapshot, root, name)
    if desired is not None:
        (root / "versions.json").write_text(json.dumps(desired))
    return root


def copy_version(snapshot: Path, root: Path, name: str) -> Path:
    """Copy a snapshot into the root the way a copy tool does: a dot-dir, renamed when done."""
    partial = root / f".tmp-{name}"
    shutil.copytree(snapshot, partial)
    os.rename(partial, root / name)
    return root / name


def expected_vectors(snapshot: Path, texts: list[str] = TEXTS) -> np.ndarray:
    """The snapshot's embeddings, computed in-process by a load of its own (no server)."""
    settings = Settings.from_env({"SIDECAR_DEVICE": "cpu", "SIDECAR_WARMUP": "false"})
    model = loading.load(settings, spec=str(snapshot)).model
    inputs = TextInputs(texts)
    prepared = model.prepare(inputs)
    outputs = list(model.forward(model.collate(prepared.items)))
    result: Any = model.finish(outputs, inputs)
    return np.asarray(result.vectors, dtype=np.float32)


async def until(condition: Callable[[], Awaitable[bool]], timeout_s: float = 20.0) -> None:
    """Wait for a condition the server reaches on its own (a poll, a swap); fails on timeout.

    The server has no hook for "the poll saw the file"; a short poll of the condition, bounded
    by a timeout, waits for the condition itself rather than for a guess of how long it takes.
    """
    async with asyncio.timeout(timeout_s):
        while not await condition():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


def admin_session(path: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession("http://localhost", connector=aiohttp.UnixConnector(path=path))


async def states(admin: aiohttp.ClientSession, model: str = "default") -> dict[str, Any]:
    """{version: its admin record} from GET /admin/v1/models/{model}/versions."""
    async with admin.get(f"/admin/v1/models/{model}/versions") as r:
        assert r.status == 200, await r.text()
        body = await r.json()
    return {v["version"]: v for v in body["versions"]} | {"_traffic": body["traffic"]}
