"""Transport attacks on a real server over raw sockets: the documented status, nothing inflated or
buffered past its limit, no traceback, the health port prompt throughout, and a following valid
request served."""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import struct
import sys
import time
import zlib
from pathlib import Path

import aiohttp
import pytest

from tests.sidecar.conftest import Running, StartServer
from tests.sidecar.rawhttp import HealthProbe, exchange, read_response, request
from tests.sidecar.test_process import ROOT, Process, base_env, wait_ready
from tests.sidecar.test_status_codes import assert_still_serves, samples

# The health port answers a probe in a few milliseconds; on this shared 2-core machine a probe
# may wait a few GIL switch intervals behind the server's loop thread, never this long.
PROBE_LIMIT_MS = 100.0
PREDICT = b'{"inputs": ["a valid request"]}'


def tcp_port(s: Running) -> int:
    address = s.server.addresses["tcp"]
    assert isinstance(address, tuple)
    return int(address[1])


def health_port(s: Running) -> int:
    address = s.server.addresses["health"]
    assert isinstance(address, tuple)
    return int(address[1])


def no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    # The server's own loggers and aiohttp's: an earlier test's tracing exporter may still be
    # retrying a collector it was given, in its own thread (sidecar.otel lets it, by design).
    ours = ("sidecar", "batching", "loaders", "aiohttp")
    loud = [
        r for r in caplog.records if r.levelno >= logging.ERROR and r.name.split(".")[0] in ours
    ]
    assert loud == [], [r.getMessage() for r in loud]


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """1 MB of gzip that inflates to 1 GiB of zeros (a valid stream, built without the 1 GiB)."""
    zeros = bytes(1 << 20)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = deflate.compress(zeros) + deflate.flush(zlib.Z_FULL_FLUSH)  # the same every MiB
    crc = 0
    for _ in range(1024):
        crc = zlib.crc32(zeros, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
    return header + block * 1024 + deflate.flush() + struct.pack("<II", crc, 0)


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "x-unknown"])
async def test_a_compressed_body_is_refused_unread_with_415(
    start_server: StartServer, tiny_embed_dir, caplog: pytest.LogCaptureFixture, coding: str
) -> None:
    s = await start_server(tiny_embed_dir)
    caplog.set_level(logging.DEBUG)
    garbage = b"\x00not compressed at all\xff" * 10
    headers = {"Content-Encoding": coding, "Content-Type": "application/json"}
    r = await exchange(tcp_port(s), request("POST", "/v1/predict", garbage, headers))
    assert r.status == 415 and r.headers["accept-encoding"] == "identity"
    assert r.error()["code"] == "unsupported_encoding"
    no_errors_logged(caplog)
    await assert_still_serves(s)


async def test_compression_bombs_are_never_inflated(
    start_server: StartServer, tiny_embed_dir, gzip_bomb: bytes
) -> None:
    s = await start_server(tiny_embed_dir)
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    bomb = request("POST", "/v1/predict", gzip_bomb, headers)
    with HealthProbe(health_port(s)) as probe:
        started = time.perf_counter()
        responses = await asyncio.gather(*(exchange(tcp_port(s), bomb) for _ in range(4)))
        elapsed = time.perf_counter() - started
    assert [r.status for r in responses] == [415] * 4
    assert elapsed < 2.0  # 1 MB each read and dropped; inflating 4 GiB would take many seconds
    probe.check(PROBE_LIMIT_MS)
    await assert_still_serves(s)


async def test_a_chunked_body_is_cut_at_the_limit(
    start_server: StartServer, tiny_embed_dir
) -> None:
    s = await start_server(tiny_embed_dir, SIDECAR_MAX_BODY_BYTES="65536")
    reader, writer = await asyncio.open_connection("127.0.0.1", tcp_port(s))
    head = {"Transfer-Encoding": "chunked", "Content-Type": "application/json"}
    writer.write(request("POST", "/v1/predict", headers=head))
    chunk = b"%x\r\n%s\r\n" % (16384, b" " * 16384)
    sent = 0
    response = asyncio.create_task(read_response(reader))
    # The client would send 64 MiB; the answer comes once the limit is passed, long before.
    while not response.done() and sent < 64 << 20:
        writer.write(chunk)
        sent += 16384
        try:
            await writer.drain()
        except ConnectionError:
            break
    r = await asyncio.wait_for(response, 10)
    writer.close()
    assert r.status == 413 and r.error()["code"] == "payload_too_large"
    assert sent < 8 << 20
    await assert_still_serves(s)


async def test_100_continue_is_sent_only_when_the_body_is_wanted(
    start_server: StartServer, tiny_embed_dir
) -> None:
    s = await start_server(tiny_embed_dir, SIDECAR_MAX_BODY_BYTES="4096")
    port = tcp_port(s)
    expect = {"Expect": "100-continue", "Content-Type": "application/json"}
    # Too large by its declared length: 413 at once, no 100 Continue, the body never sent.
    head = request("POST", "/v1/predict", headers={**expect, "Content-Length": "100000"})
    r = await exchange(port, head)
    assert (r.status, r.interim) == (413, [])
    # Within the limit: 100 Continue first, then the answer once the body is sent.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    length = str(len(PREDICT))
    writer.write(request("POST", "/v1/predict", headers={**expect, "Content-Length": length}))
    await writer.drain()
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 100 Continue")
    writer.write(PREDICT)
    r = await asyncio.wait_for(read_response(reader), 10)
    writer.close()
    assert r.status == 200
    # Any other expectation: 417 in the error shape, on a route and off the routes alike.
    for path in ("/v1/predict", "/nowhere"):
        bogus = request("POST", path, PREDICT, {"Expect": "a-pony"})
        r = await exchange(port, bogus)
        assert r.status == 417 and r.error()["code"] == "expectation_failed"
    await assert_still_serves(s)


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"GARBAGE\x00 / HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request"),
        (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
        (
            b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n",
            431,
            "headers_too_large",
        ),
        (
            b"GET /livez HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-H%d: v\r\n" % i for i in range(100))
            + b"\r\n",
            431,
            "headers_too_large",
        ),
        (b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n", 400, "bad_request"),
        (
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            400,
            "bad_request",
        ),
    ],
    ids=["request-line", "long-url", "long-header", "header-flood", "bad-length", "bad-chunk"],
)
async def test_malformed_http_gets_the_error_shape_and_is_counted(
    start_server: StartServer,
    tiny_embed_dir,
    caplog: pytest.LogCaptureFixture,
    data: bytes,
    status: int,
    code: str,
) -> None:
    s = await start_server(tiny_embed_dir)
    caplog.set_level(logging.DEBUG)
    async with s.health.get("/metrics") as m:
        before = samples(await m.text())
    r = await exchange(tcp_port(s), data)
    assert r.status == status
    error = r.error()
    assert error["code"] == code
    assert "Traceback" not in error["message"]
    no_errors_logged(caplog)
    access = [rec for rec in caplog.records if rec.name == "sidecar.access"]
    assert any(f" {status} " in rec.getMessage() for rec in access)
    async with s.health.get("/metrics") as m:
        after = samples(await m.text())
    key = ("sidecar_requests_total", (("code", str(status)), ("route", "unmatched")))
    assert after.get(key, 0) - before.get(key, 0) == 1
    await assert_still_serves(s)


async def test_405_names_the_allowed_methods(start_server: StartServer, tiny_embed_dir) -> None:
    s = await start_server(tiny_embed_dir)
    async with s.tcp.get("/v1/predict") as r:
        assert r.status == 405 and r.headers["Allow"] == "POST"


async def test_trickled_headers_and_idle_connections_are_cut(
    start_server: StartServer, tiny_embed_dir
) -> None:
    s = await start_server(tiny_embed_dir, SIDECAR_KEEPALIVE_TIMEOUT_S="0.5")
    port = tcp_port(s)
    with HealthProbe(health_port(s)) as probe:
        # Headers a byte at a time, never finished: closed once the keep-alive timeout passes.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.perf_counter()
        async with asyncio.timeout(5):
            for byte in b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nX-Slow: ":
                writer.write(bytes([byte]))
                await writer.drain()
                if reader.at_eof() or await _closed_within(reader, 0.05):
                    break
            else:
                assert await _closed_within(reader, 5)
        assert 0.4 < time.perf_counter() - started < 3
        writer.close()
        # A keep-alive connection left idle after a response: closed after the timeout too.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request("GET", "/livez"))
        assert (await read_response(reader)).status == 200
        assert await _closed_within(reader, 3)
        writer.close()
    probe.check(PROBE_LIMIT_MS)
    await assert_still_serves(s)


async def _closed_within(reader: asyncio.StreamReader, timeout_s: float) -> bool:
    try:
        async with asyncio.timeout(timeout_s):
            return await reader.read(1) == b""
    except TimeoutError:
        return False


async def _answered_within(reader: asyncio.StreamReader, timeout_s: float) -> bool:
    try:
        async with asyncio.timeout(timeout_s):
            return await reader.readuntil(b"\r\n") == b"HTTP/1.1 503 Service Unavailable\r\n"
    except TimeoutError:
        return False


async def test_a_trickled_body_is_cut_at_the_deadline_with_408(
    start_server: StartServer, tiny_embed_dir
) -> None:
    s = await start_server(tiny_embed_dir)
    reader, writer = await asyncio.open_connection("127.0.0.1", tcp_port(s))
    head = {"Content-Length": str(len(PREDICT)), "X-Request-Timeout-Ms": "300"}
    writer.write(request("POST", "/v1/predict", headers=head) + PREDICT[:5])
    started = time.perf_counter()
    r = await asyncio.wait_for(read_response(reader), 5)
    assert r.status == 408 and r.error()["code"] == "request_timeout"
    assert time.perf_counter() - started < 2
    assert r.headers["connection"] == "close"
    writer.close()
    await assert_still_serves(s)


async def test_chunked_framing_broken_mid_body_ends_by_the_deadline(
    start_server: StartServer, tiny_embed_dir
) -> None:
    # aiohttp's parser drops a body whose chunk framing breaks after the headers without telling
    # the handler (it waits for more): the body's deadline still ends it.
    s = await start_server(tiny_embed_dir)
    reader, writer = await asyncio.open_connection("127.0.0.1", tcp_port(s))
    head = {"Transfer-Encoding": "chunked", "X-Request-Timeout-Ms": "300"}
    writer.write(request("POST", "/v1/predict", headers=head))
    await writer.drain()
    # Sent apart, the broken chunk usually arrives while the handler reads the body (408 at the
    # deadline); should it arrive with the headers, the parser refuses it outright (400).
    await asyncio.sleep(0.05)
    writer.write(b"5\r\nhello\r\nzz\r\n")
    r = await asyncio.wait_for(read_response(reader), 5)
    writer.close()
    assert r.status in (408, 400)
    await assert_still_serves(s)


async def test_connections_past_the_cap_get_503_and_health_answers(
    start_server: StartServer, tiny_embed_dir
) -> None:
    s = await start_server(tiny_embed_dir, SIDECAR_MAX_CONNECTIONS="8")
    port = tcp_port(s)
    silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(8)]
    with HealthProbe(health_port(s)) as probe:
        r = await exchange(port, request("GET", "/livez"))
        assert r.status == 503 and r.error()["code"] == "too_many_connections"
    probe.check(PROBE_LIMIT_MS)
    for _, writer in silent:
        writer.close()
        await writer.wait_closed()
    await _eventually_serves(s)


async def _eventually_serves(s: Running) -> None:
    # The server sees the silent connections close a moment after the client does.
    async with asyncio.timeout(5):
        while (await exchange(tcp_port(s), request("GET", "/livez"))).status != 200:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    await assert_still_serves(s)


async def test_silent_sockets_cannot_take_the_health_port_down(
    socket_dir: str, tmp_path: Path, tiny_embed_dir: Path
) -> None:
    # The case: 195 silent sockets under a 200-descriptor limit made /livez unreachable.
    env = base_env(socket_dir, SIDECAR_MODEL=str(tiny_embed_dir), SIDECAR_WARMUP="false")
    with (tmp_path / "log").open("wb") as sink:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sidecar", "serve", env=env, cwd=ROOT, stdout=sink,
            stderr=sink, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200)),
        )  # fmt: skip
    process = Process(
        proc, int(env["SIDECAR_PORT"]), int(env["SIDECAR_HEALTH_PORT"]), env["SIDECAR_UDS"],
        tmp_path / "log",
    )  # fmt: skip
    try:
        await wait_ready(process)
        silent = []
        for _ in range(195):
            silent.append(await asyncio.open_connection("127.0.0.1", process.port))
        with HealthProbe(process.health_port) as probe:
            await asyncio.sleep(0.3)
        probe.check(PROBE_LIMIT_MS)
        # Connections past the budget (200 - 64 reserved - 32 for the health port) got a 503.
        refused = [r for r, _ in silent if await _answered_within(r, 0.01)]
        assert len(refused) == 195 - 104
        for _, writer in silent:
            writer.close()
        async with aiohttp.ClientSession() as session:
            async with asyncio.timeout(10):
                while True:
                    try:
                        async with session.post(
                            f"http://127.0.0.1:{process.port}/v1/predict", json={"inputs": ["x"]}
                        ) as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0, process.log_text()


async def test_bodies_held_at_once_are_bounded(start_server: StartServer, tiny_embed_dir) -> None:
    # 64 KiB bodies: the API holds at most eight bodies' worth (512 KiB) at once.
    s = await start_server(tiny_embed_dir, SIDECAR_MAX_BODY_BYTES="65536")
    port = tcp_port(s)
    body = PREDICT + b" " * (60000 - len(PREDICT))
    slow = []
    for _ in range(8):  # each sends all but the end of its body, and waits
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        head = {"Content-Length": str(len(body) + 100), "Content-Type": "application/json"}
        writer.write(request("POST", "/v1/predict", body, head))
        await writer.drain()
        slow.append(writer)
    with HealthProbe(health_port(s)) as probe:
        async with asyncio.timeout(5):  # until the server has read what they sent
            while True:
                r = await exchange(port, request("POST", "/v1/predict", body))
                if r.status == 429:
                    break
                assert r.status == 200
    assert r.error()["code"] == "server_busy" and r.headers["retry-after"] == "1"
    probe.check(PROBE_LIMIT_MS)
    for writer in slow:  # gone: their handlers end and release what they held
        writer.close()
    async with asyncio.timeout(5):
        while (await exchange(port, request("POST", "/v1/predict", body))).status != 200:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    await assert_still_serves(s)
