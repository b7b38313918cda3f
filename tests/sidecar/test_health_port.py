"""The health port shares no fate with inference: its own loop and thread keep probes prompt
while the main loop is stalled or saturated."""

from __future__ import annotations

import asyncio
import http.client
import threading
import time

from tests.sidecar.conftest import StartServer
from tests.sidecar.rawhttp import HealthProbe
from tests.sidecar.test_status_codes import assert_still_serves
from tests.sidecar.test_transport import PROBE_LIMIT_MS, health_port, tcp_port

STALL_S = 1.0


def timed_get(port: int, path: str, out: list[float]) -> None:
    started = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", path)
    assert connection.getresponse().status == 200
    connection.close()
    out.append(time.perf_counter() - started)


async def test_probes_answer_while_the_main_loop_is_stalled(
    start_server: StartServer, tiny_embed_dir
) -> None:
    s = await start_server(tiny_embed_dir)
    stalled = threading.Event()
    api_latency: list[float] = []
    loop = asyncio.get_running_loop()

    def stall() -> None:  # what a blocking call on the loop does to everything on it
        stalled.set()
        time.sleep(STALL_S)

    with HealthProbe(health_port(s), "/readyz", every_s=0.01) as probe:
        loop.call_soon(stall)
        # The API listener's own /livez, asked during the stall: it waits for the loop.
        api = threading.Thread(
            target=lambda: (stalled.wait(), timed_get(tcp_port(s), "/livez", api_latency))
        )
        api.start()
        await asyncio.sleep(0)  # the stall runs here
        await asyncio.to_thread(api.join)
        await asyncio.sleep(0.1)
    assert api_latency and api_latency[0] > STALL_S / 2  # the stall was real
    assert len(probe.latencies_s) >= 10
    probe.check(PROBE_LIMIT_MS)
    await assert_still_serves(s)


async def test_probes_stay_prompt_while_the_device_is_saturated(
    start_server: StartServer,
) -> None:
    # The demo model under a closed loop of 32 clients: every forward pass full, the queue busy.
    s = await start_server(None)
    text = "a sentence about serving models next to the applications that use them " * 3

    async def client(stop_at: float) -> int:
        served = 0
        while time.monotonic() < stop_at:
            async with s.tcp.post("/v1/predict", json={"inputs": [text]}) as r:
                assert r.status == 200
                await r.read()
            served += 1
        return served

    with HealthProbe(health_port(s), "/readyz") as probe:
        stop_at = time.monotonic() + 3.0
        served = await asyncio.gather(*(client(stop_at) for _ in range(32)))
    assert sum(served) > 32
    async with s.health.get("/metrics") as r:
        text = await r.text()
    assert "sidecar_batch_size_count" in text
    latencies = sorted(probe.latencies_s)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    assert not probe.failures and p99 < PROBE_LIMIT_MS, f"p99 {p99:.1f} ms"
