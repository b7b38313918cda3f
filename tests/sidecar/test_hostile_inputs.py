"""Hostile inputs on a real server: bounded memory and work, deadlines kept at every wait, short
errors, the health port prompt throughout, and a following valid request served."""

from __future__ import annotations

import asyncio
import io
import signal
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.sidecar.conftest import StartServer
from tests.sidecar.rawhttp import HealthProbe
from tests.sidecar.test_process import Process, base_env, spawn, wait_ready
from tests.sidecar.test_status_codes import assert_still_serves, error_of
from tests.sidecar.test_transport import PROBE_LIMIT_MS, health_port

MB8 = 8 * 1000 * 1000  # inside the default 8 MiB body limit, JSON quotes included


def memory_kb(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


@pytest.mark.parametrize("truncate", [False, True])
async def test_an_8mb_input_takes_tens_of_mb_at_most(
    processes: list[Process], socket_dir: str, tmp_path: Path, truncate: bool
) -> None:
    # The demo model in its own process, so that its resident memory is the server's alone.
    env = base_env(socket_dir, SIDECAR_WARMUP="false")
    process = await spawn(env, tmp_path / "log", processes)
    await wait_ready(process)
    pid = process.proc.pid
    base = f"http://127.0.0.1:{process.port}"
    body = orjson.dumps({"inputs": ["!" * MB8], "parameters": {"truncate": truncate}})
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{base}/v1/predict", json={"inputs": ["warm"]}) as r:
            assert r.status == 200
        before = memory_kb(pid)["VmRSS"]
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS: the peak from now
        with HealthProbe(process.health_port) as probe:
            started = time.perf_counter()
            async with session.post(f"{base}/v1/predict", data=io.BytesIO(body)) as r:
                status, answer = r.status, await r.json()
            elapsed = time.perf_counter() - started
        after = memory_kb(pid)
        async with session.post(f"{base}/v1/predict", json={"inputs": ["still fine"]}) as r:
            assert r.status == 200
    process.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.proc.wait(), 30) == 0
    if truncate:
        assert status == 200 and answer["usage"]["input_tokens"] == 256
    else:
        assert status == 400 and answer["error"]["code"] == "input_too_long"
    peak_mb = (after["VmHWM"] - before) / 1024
    kept_mb = (after["VmRSS"] - before) / 1024
    # The body (8 MB) and its string (8 MB) at once; no tokenizing of 8 million tokens (4.85 GB).
    assert peak_mb < 64, f"peak +{peak_mb:.0f} MB"
    assert kept_mb < 32, f"kept +{kept_mb:.0f} MB"
    assert elapsed < 5.0
    probe.check(PROBE_LIMIT_MS)


async def test_8mb_inputs_do_not_hold_up_a_short_request(
    start_server: StartServer, tiny_embed_dir
) -> None:
    s = await start_server(tiny_embed_dir)
    big = [
        orjson.dumps({"inputs": ["!" * MB8], "parameters": {"truncate": truncate}})
        for truncate in (True, False)
    ]
    short = {"inputs": ["word " * 240], "parameters": {"truncate": True}}  # 1 200 characters

    async def post(body: bytes) -> int:
        async with s.tcp.post("/v1/predict", data=io.BytesIO(body)) as r:
            return r.status

    with HealthProbe(health_port(s)) as probe:
        in_flight = [asyncio.create_task(post(big[i % 2])) for i in range(5)]
        started = time.perf_counter()
        headers = {"X-Request-Timeout-Ms": "1000"}
        async with s.uds.post("/v1/predict", json=short, headers=headers) as r:
            status = r.status
        # Served, or refused at its deadline on a machine too busy to serve it in time (the
        # issue's server answered 504 after 26.3 s): never held past the deadline.
        assert status in (200, 504) and time.perf_counter() - started < 1.5
        assert sorted(await asyncio.gather(*in_flight)) == [200, 200, 200, 400, 400]
    probe.check(PROBE_LIMIT_MS)
    await assert_still_serves(s)


async def test_the_deadline_holds_while_waiting_for_the_tokenizer(
    start_server: StartServer, tiny_embed_dir
) -> None:
    s = await start_server(tiny_embed_dir)
    # 256 inputs at the character cap, one token a character: seconds of tokenizing.
    busy = {"inputs": ["!" * 2048] * 256, "parameters": {"truncate": True}}
    long_job = asyncio.create_task(s.tcp.post("/v1/predict", json=busy))
    await asyncio.sleep(0)  # sent first
    async with s.health.get("/metrics") as m:
        assert m.status == 200
    started = time.perf_counter()
    short = {"inputs": ["word " * 240], "parameters": {"truncate": True}}
    async with s.uds.post("/v1/predict", json=short, headers={"X-Request-Timeout-Ms": "300"}) as r:
        status = r.status
        code = (await error_of(r))["code"] if status != 200 else None
    waited = time.perf_counter() - started
    response = await long_job
    assert response.status == 200
    response.release()
    if status == 200:  # the long job was quicker than the deadline on this machine: no test
        pytest.skip("tokenizing 512k characters took under 300 ms")
    assert (status, code) == (504, "deadline_exceeded")
    assert waited < 1.5, f"the 504 came after {waited:.2f} s"
    await assert_still_serves(s)


@pytest.mark.parametrize("parameters", [[], "", 0, False, None, 1.5, ["truncate"]])
async def test_parameters_of_the_wrong_type_are_refused(
    start_server: StartServer, tiny_embed_dir, parameters: object
) -> None:
    s = await start_server(tiny_embed_dir)
    async with s.tcp.post("/v1/predict", json={"inputs": ["x"], "parameters": parameters}) as r:
        assert r.status == 400
        error = await error_of(r)
    assert error["code"] == "invalid_input" and "'parameters' must be an object" in error["message"]
    await assert_still_serves(s)


async def test_unknown_fields_get_a_short_answer(start_server: StartServer, tiny_embed_dir) -> None:
    s = await start_server(tiny_embed_dir)
    # A 7 MB body: one field name of 1 MB, then 200 000 more names.
    fields = {"k" * 1_000_000: 1} | {f"field_{i:07d}_{'x' * 16}": 1 for i in range(200_000)}
    body = orjson.dumps({"inputs": ["x"], **fields})
    assert len(body) > 6_000_000
    with HealthProbe(health_port(s)) as probe:
        started = time.perf_counter()
        async with s.tcp.post("/v1/predict", data=io.BytesIO(body)) as r:
            assert r.status == 400
            raw = await r.read()
            error = await error_of(r)
        elapsed = time.perf_counter() - started
    assert len(raw) < 1024 and "and 199996 more" in error["message"]
    assert elapsed < 2.0
    probe.check(PROBE_LIMIT_MS)
    await assert_still_serves(s)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        # nested past orjson's depth limit (1024)
        (b'{"inputs": ' + b"[" * 5000 + b"]" * 5000 + b"}", "invalid_json"),
        # numbers beyond a double are refused; integers past 64 bits become doubles
        (b'{"inputs": ["x"], "parameters": {"truncate": 1e999}}', "invalid_json"),
        (b'{"inputs": ["x"], "parameters": {"truncate": ' + b"9" * 5000 + b"}}", "invalid_json"),
        (b'{"input": ["x"], "dimensions": ' + b"9" * 30 + b"}", "invalid_input"),
    ],
    ids=["deep", "huge-float", "huge-int", "int-past-64-bits"],
)
async def test_json_depth_and_number_sizes_are_bounded(
    start_server: StartServer, tiny_embed_dir, body: bytes, code: str
) -> None:
    s = await start_server(tiny_embed_dir)
    route = "/v1/embeddings" if b'"input"' in body else "/v1/predict"
    async with s.tcp.post(route, data=body) as r:
        assert r.status == 400
        assert (await error_of(r))["code"] == code
    await assert_still_serves(s)
