"""The admin API: only on its own socket (0600, the sidecar's user only), never on TCP or the
health port; traffic, load/unload, rollback in under 100 ms, reload; the `sidecar admin` CLI."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest

from tests.sidecar.conftest import StartServer
from tests.sidecar.versioned import admin_session, build_versions, make_root, states

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_versions(tmp_path_factory.mktemp("staging"), "7", "8")


async def start_root(start_server: StartServer, snapshots, tmp_path: Path, socket_dir: str, **env):
    root = make_root(tmp_path, snapshots, {"stable": "7", "resident": 2})
    admin_path = f"{socket_dir}/admin.sock"
    s = await start_server(root, SIDECAR_MODEL_POLL_S="0", SIDECAR_ADMIN_UDS=admin_path, **env)
    return s, admin_path


async def version_of(s) -> str:
    async with s.uds.post("/v1/predict", json={"inputs": "x"}) as r:
        assert r.status == 200
        return r.headers["X-Model-Version"]


async def test_traffic_load_unload_and_a_rollback_under_100_ms(
    start_server: StartServer, snapshots, tmp_path: Path, socket_dir: str
) -> None:
    s, admin_path = await start_root(start_server, snapshots, tmp_path, socket_dir)
    async with admin_session(admin_path) as admin:
        assert (await states(admin))["8"]["state"] == "unloaded"
        async with admin.post("/admin/v1/models/m/versions/8/load") as r:
            assert r.status == 200
            assert (await r.json())["version"]["state"] == "ready"
        async with admin.put(
            "/admin/v1/models/m/traffic", json={"stable": "8", "resident": 2}
        ) as r:
            assert r.status == 200
            assert (await r.json())["traffic"]["stable"] == "8"
        assert await version_of(s) == "8"
        # 7 stays resident (resident: 2): the rollback is a flip, measured from the admin call
        # to the first request served by it.
        assert (await states(admin))["7"]["state"] == "ready"
        started = time.perf_counter()
        async with admin.post("/admin/v1/models/m/rollback") as r:
            assert r.status == 200
            assert (await r.json())["rolled_back_to"] == "7"
        assert await version_of(s) == "7"
        rollback_s = time.perf_counter() - started
        assert rollback_s < 0.1, rollback_s
        async with admin.post("/admin/v1/models/m/versions/7/unload") as r:
            assert r.status == 409  # it serves: move the traffic first
            assert (await r.json())["error"]["code"] == "conflict"
        async with admin.put("/admin/v1/models/m/traffic", json={"stable": "7"}) as r:
            assert r.status == 200
        async with admin.post("/admin/v1/models/m/versions/8/unload") as r:
            assert r.status == 200
            assert (await r.json())["version"]["state"] == "unloaded"
        async with admin.post("/admin/v1/models/m/versions/99/load") as r:
            assert (r.status, (await r.json())["error"]["code"]) == (404, "version_not_found")
        async with admin.post("/admin/v1/models/other/rollback") as r:
            assert r.status == 404


@pytest.mark.parametrize(
    "body",
    [
        {"stable": "99"},  # absent from the root
        {"stable": "/models/m/8"},
        {"stable": "http://example.com/model"},
        {"canary": {"version": "s3://bucket/x", "percent": 10}},
        {"stable": "7", "path": "/models/other"},
        {"stable": "7", "url": "https://example.com"},
        ["7"],
    ],
)
async def test_a_traffic_body_naming_an_absent_version_a_path_or_a_url_is_400(
    start_server: StartServer, snapshots, tmp_path: Path, socket_dir: str, body
) -> None:
    _, admin_path = await start_root(start_server, snapshots, tmp_path, socket_dir)
    async with admin_session(admin_path) as admin:
        async with admin.put("/admin/v1/models/m/traffic", json=body) as r:
            assert r.status == 400, await r.text()
            message = (await r.json())["error"]["message"]
        assert (await states(admin))["_traffic"]["stable"] == "7"
    assert str(tmp_path) not in message


async def test_no_admin_route_answers_on_tcp_the_api_socket_or_the_health_port(
    start_server: StartServer, snapshots, tmp_path: Path, socket_dir: str
) -> None:
    s, admin_path = await start_root(start_server, snapshots, tmp_path, socket_dir)
    for session in (s.tcp, s.uds, s.health):
        for method, path in (
            ("GET", "/admin/v1/models/m/versions"),
            ("PUT", "/admin/v1/models/m/traffic"),
            ("POST", "/admin/v1/models/m/versions/8/load"),
            ("POST", "/admin/v1/models/m/rollback"),
            ("POST", "/admin/v1/reload"),
        ):
            async with session.request(method, path, json={"stable": "8"}) as r:
                assert r.status == 404, (session, path)
    assert stat.S_IMODE(os.stat(admin_path).st_mode) == 0o600
    async with s.tcp.get("/openapi.json") as r:
        assert not any("admin" in path for path in (await r.json())["paths"])


# A client of another user: mode 0600 keeps it from connecting at all; a socket made reachable
# anyway (here: chmod 0666) still refuses it by its peer credentials.
_CLIENT = """
import socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    sock.connect(sys.argv[1])
except PermissionError:
    print("EACCES"); sys.exit(0)
request = "GET /admin/v1/models/m/versions HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n"
sock.sendall(request.encode())
answer = b""
while chunk := sock.recv(65536):
    answer += chunk
print(answer.split(b"\\r\\n")[0].decode())
"""


def _others_can_run(path: str) -> bool:
    """Every directory on the way and the file itself are executable by other users."""
    real = Path(os.path.realpath(path))
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in (real, *real.parents))


async def run_as(uid: int, path: str) -> str:
    """The status line the client of `uid` gets (a standard-library interpreter it can run)."""
    interpreter = next(p for p in (sys.executable, "/usr/bin/python3") if _others_can_run(p))
    process = await asyncio.create_subprocess_exec(
        interpreter, "-I", "-c", _CLIENT, path, user=uid,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode().strip()


@pytest.mark.skipif(os.getuid() != 0, reason="switching to another uid needs root")
async def test_the_admin_socket_refuses_a_client_of_another_uid(
    start_server: StartServer, snapshots, tmp_path: Path, socket_dir: str
) -> None:
    _, admin_path = await start_root(start_server, snapshots, tmp_path, socket_dir)
    os.chmod(socket_dir, 0o755)  # the directory lets the other user reach the socket file
    assert await run_as(NOBODY, admin_path) == "EACCES"
    os.chmod(admin_path, 0o666)
    assert await run_as(NOBODY, admin_path) == "HTTP/1.1 403 Forbidden"
    assert await run_as(os.getuid(), admin_path) == "HTTP/1.1 200 OK"


async def test_the_cli_front(
    start_server: StartServer, snapshots, tmp_path: Path, socket_dir: str
) -> None:
    _, admin_path = await start_root(start_server, snapshots, tmp_path, socket_dir)

    async def cli(*args: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sidecar", "admin", "--socket", admin_path, *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT)}, cwd=ROOT,
        )  # fmt: skip
        out, err = await process.communicate()
        return process.returncode or 0, out.decode() + err.decode()

    code, out = await cli("versions")
    assert code == 0 and json.loads(out)["traffic"]["stable"] == "7"
    code, out = await cli("traffic", "--stable", "7", "--canary", "8:25")
    assert code == 0 and json.loads(out)["traffic"]["canary"] == {"version": "8", "percent": 25.0}
    code, out = await cli("traffic", "--stable", "/etc/passwd")
    assert code == 1 and json.loads(out)["error"]["code"] == "invalid_input"
    code, out = await cli("reload")
    assert code == 0
    code, out = await cli("rollback")
    assert code == 1 and "no previous stable version" in out


async def test_a_plain_snapshot_has_one_version_at_the_admin_api(
    start_server: StartServer, tiny_embed_dir: Path, socket_dir: str
) -> None:
    admin_path = f"{socket_dir}/admin.sock"
    s = await start_server(tiny_embed_dir, SIDECAR_ADMIN_UDS=admin_path)
    async with admin_session(admin_path) as admin:
        listed = await states(admin)
        assert listed["1"]["state"] == "ready" and listed["_traffic"]["stable"] == "1"
        async with asyncio.timeout(10):
            async with admin.put("/admin/v1/models/default/traffic", json={"stable": "1"}) as r:
                assert r.status == 200
            async with admin.post("/admin/v1/models/default/versions/1/load") as r:
                assert r.status == 200
            async with admin.post("/admin/v1/models/default/versions/1/unload") as r:
                assert r.status == 409
            async with admin.post("/admin/v1/models/default/rollback") as r:
                assert r.status == 409
            async with admin.post("/admin/v1/reload") as r:
                assert r.status == 200
    async with s.tcp.post("/v1/predict", json={"inputs": "x"}) as r:
        assert (r.status, r.headers["X-Model-Version"]) == (200, "1")


async def test_a_reload_of_an_invalid_desired_state_is_refused_and_changes_nothing(
    start_server: StartServer, snapshots, tmp_path: Path, socket_dir: str
) -> None:
    s, admin_path = await start_root(start_server, snapshots, tmp_path, socket_dir)
    (tmp_path / "m" / "versions.json").write_text('{"stable": "8", "canary": 5}')
    async with admin_session(admin_path) as admin:
        async with admin.post("/admin/v1/reload") as r:
            assert r.status == 409
            error = (await r.json())["error"]
        assert error["code"] == "invalid_versions_file"
        assert "'canary' must be an object" in error["message"]
        assert (await states(admin))["_traffic"]["stable"] == "7"
        # Without a stable version named, the newest under the root is stable.
        async with admin.put("/admin/v1/models/m/traffic", json={}) as r:
            assert (r.status, (await r.json())["traffic"]["stable"]) == (200, "8")
    assert await version_of(s) == "8"
