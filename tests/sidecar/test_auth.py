"""The bearer token: every route of the API listeners but the probes, never the health port,
odd header bytes refused with 401, and a rotated token file in force without a restart."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

from sidecar.auth import BearerToken
from sidecar.errors import ConfigError
from tests.sidecar.conftest import Running, StartServer
from tests.sidecar.rawhttp import exchange, request
from tests.sidecar.test_transport import tcp_port

TOKEN = "s3cret"
RIGHT = {"Authorization": f"Bearer {TOKEN}"}
GUARDED = [
    ("POST", "/v1/predict", {"inputs": ["x"]}),
    ("POST", "/v1/models/default/predict", {"inputs": ["x"]}),
    ("POST", "/v1/embeddings", {"input": "x"}),
    ("POST", "/v1/rerank", {"query": "q", "documents": ["d"]}),
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/default", None),
    ("GET", "/v1/info", None),
    ("GET", "/metrics", None),
    ("GET", "/no/such/route", None),
]
PROBES = ("/livez", "/readyz", "/startupz")


async def status_of(s: Running, method: str, path: str, body: object, headers: dict) -> int:
    async with s.tcp.request(method, path, json=body, headers=headers) as r:
        if r.status == 401:
            assert r.headers["WWW-Authenticate"] == "Bearer"
            assert (await r.json())["error"]["code"] == "unauthorized"
        return r.status


async def test_every_api_route_but_the_probes_needs_the_token(
    start_server: StartServer, tiny_embed_dir
) -> None:
    s = await start_server(tiny_embed_dir, auth_token=TOKEN)
    for method, path, body in GUARDED:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
            assert await status_of(s, method, path, body, headers) == 401, (path, headers)
        assert await status_of(s, method, path, body, RIGHT) != 401, path
    for path in PROBES:
        async with s.tcp.get(path) as r:
            assert r.status == 200, path
    # The health port never asks for it.
    for path in (*PROBES, "/metrics"):
        async with s.health.get(path) as r:
            assert r.status == 200, path
    async with s.uds.post("/v1/predict", json={"inputs": ["x"]}, headers=RIGHT) as r:
        assert r.status == 200


async def test_a_non_ascii_authorization_header_is_401_not_500(
    start_server: StartServer, tiny_embed_dir
) -> None:
    s = await start_server(tiny_embed_dir, auth_token=TOKEN)
    for value in ("Bearer s3cr\xe9t", "Bearer \xff\xfe", "Bearer s3cret\xff"):
        raw = request("GET", "/v1/models").replace(
            b"\r\n\r\n", f"\r\nAuthorization: {value}\r\n\r\n".encode("latin-1")
        )
        r = await exchange(tcp_port(s), raw)
        assert r.status == 401 and r.error()["code"] == "unauthorized"
    async with s.tcp.get("/v1/models", headers=RIGHT) as r:
        assert r.status == 200


async def test_info_hides_the_token_file(
    start_server: StartServer, tiny_embed_dir, tmp_path: Path
) -> None:
    secret = tmp_path / "token"
    secret.write_text(TOKEN)
    s = await start_server(
        tiny_embed_dir,
        auth_token=BearerToken.from_file(secret),
        SIDECAR_AUTH_TOKEN_FILE=str(secret),
    )
    async with s.tcp.get("/v1/info", headers=RIGHT) as r:
        info = await r.json()
    assert info["settings"]["auth_token_file"] == "<redacted>"
    assert str(tmp_path) not in json.dumps(info) and TOKEN not in json.dumps(info)


def rotate(directory: Path, token: str) -> None:
    """Replace the token as a Kubernetes secret volume does: a new directory, a symlink swap."""
    version = directory / f"..{time.monotonic_ns()}"
    version.mkdir()
    (version / "token").write_text(token + "\n")
    link = directory / "..data.tmp"
    link.symlink_to(version.name)
    os.replace(link, directory / "..data")


async def test_a_rotated_token_is_in_force_within_one_poll(
    start_server: StartServer, tiny_embed_dir, tmp_path: Path
) -> None:
    rotate(tmp_path, "first-token")
    (tmp_path / "token").symlink_to("..data/token")
    poll_s = 0.2
    s = await start_server(
        tiny_embed_dir, auth_token=BearerToken.from_file(tmp_path / "token", poll_s=poll_s)
    )
    first, second = {"Authorization": "Bearer first-token"}, {"Authorization": "Bearer new"}
    async with s.tcp.get("/v1/models", headers=first) as r:
        assert r.status == 200
    rotate(tmp_path, "new")
    rotated = time.monotonic()
    async with asyncio.timeout(poll_s * 5):  # one poll, with room for a loaded machine
        while await status_of(s, "GET", "/v1/models", None, second) != 200:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert time.monotonic() - rotated < poll_s * 5
    assert await status_of(s, "GET", "/v1/models", None, first) == 401
    # A rotation caught half-way (no file for a moment) keeps the token in force.
    (tmp_path / "..data").unlink()
    await asyncio.sleep(poll_s * 2)
    assert await status_of(s, "GET", "/v1/models", None, second) == 200


def test_a_token_compares_as_bytes_whatever_its_length() -> None:
    token = BearerToken(TOKEN)
    assert token.allows(f"Bearer {TOKEN}") and token.allows(f"bearer  {TOKEN} ")
    for header in (None, "", TOKEN, "Basic s3cret", "Bearer", "Bearer s3cre", "Bearer x" * 1000):
        assert not token.allows(header)
    assert not token.allows("Bearer \udcff")  # a header byte that is not UTF-8


@pytest.mark.parametrize("content", [None, "", "  \n"])
def test_a_missing_or_empty_token_file_is_a_config_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match="SIDECAR_AUTH_TOKEN_FILE"):
        BearerToken.from_file(path)
