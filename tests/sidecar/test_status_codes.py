"""Every documented status code, produced by the case it documents; none degrades the server."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.models import ModelCard, Prepared
from sidecar.models.device import is_fatal_device_error
from sidecar.serving.loading import Loaded, LoadReport
from tests.sidecar.conftest import Running, StartServer, queued


async def assert_still_serves(s: Running) -> None:
    async with s.tcp.post("/v1/predict", json={"inputs": ["still fine"]}) as r:
        assert r.status == 200


async def error_of(response) -> dict:
    body = await response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"code", "message", "request_id"}
    assert error["request_id"] == response.headers["X-Request-Id"]
    assert "Traceback" not in error["message"] and "/work" not in error["message"]
    return error


@pytest.mark.parametrize(
    ("body", "code", "needle"),
    [
        (b"{not json", "invalid_json", "not valid JSON"),
        (b'{"inputs": [NaN]}', "invalid_json", "not valid JSON"),
        (b"[1, 2]", "invalid_input", "JSON object"),
        (b'{"inputs": []}', "invalid_input", "must not be empty"),
        (b'{"inputs": [1, 2]}', "invalid_input", "inputs[0]"),
        (b'{"inputs": "x", "parameters": {"truncate": "yes"}}', "invalid_input", "truncate"),
        (b'{"inputs": "x", "parameters": {"temprature": 1}}', "invalid_input", "temprature"),
        (b'{"text": "x"}', "invalid_input", "text"),
        (b'{"inputs": [{"text": 5}]}', "invalid_input", "inputs[0]"),
    ],
)
async def test_400_invalid_input(
    start_server: StartServer, tiny_embed_dir, body: bytes, code: str, needle: str
) -> None:
    s = await start_server(tiny_embed_dir)
    async with s.tcp.post("/v1/predict", data=body) as r:
        assert r.status == 400
        error = await error_of(r)
    assert error["code"] == code and needle in error["message"]
    await assert_still_serves(s)


async def test_400_too_many_tokens_unless_truncated(
    start_server: StartServer, tiny_embed_dir
) -> None:
    s = await start_server(tiny_embed_dir, SIDECAR_MAX_INPUT_TOKENS="16")
    long_text = "word " * 40
    async with s.tcp.post("/v1/predict", json={"inputs": ["short", long_text]}) as r:
        assert r.status == 400
        error = await error_of(r)
    assert error["code"] == "input_too_long" and "input 1" in error["message"]
    body = {"inputs": [long_text], "parameters": {"truncate": True}}
    async with s.tcp.post("/v1/predict", json=body) as r:
        assert r.status == 200
        assert (await r.json())["usage"]["input_tokens"] == 16
    await assert_still_serves(s)


async def test_404_unknown_route_and_model(start_server: StartServer, tiny_embed_dir) -> None:
    s = await start_server(tiny_embed_dir)
    async with s.tcp.get("/v3/nothing") as r:
        assert r.status == 404
        assert (await error_of(r))["code"] == "not_found"
    async with s.tcp.post("/v1/models/nope/predict", json={"inputs": ["x"]}) as r:
        assert r.status == 404
        assert (await error_of(r))["code"] == "model_not_found"
    async with s.tcp.post("/v1/embeddings", json={"input": "x", "model": "gpt-4"}) as r:
        assert r.status == 404
    await assert_still_serves(s)


async def test_413_body_and_input_count(start_server: StartServer, tiny_embed_dir) -> None:
    s = await start_server(
        tiny_embed_dir, SIDECAR_MAX_BODY_BYTES="4096", SIDECAR_MAX_CLIENT_BATCH="4"
    )
    async with s.tcp.post("/v1/predict", json={"inputs": ["x" * 5000]}) as r:
        assert r.status == 413
        assert (await error_of(r))["code"] == "payload_too_large"

    async def chunked():  # no Content-Length: refused while reading
        for _ in range(10):
            yield b" " * 1000

    async with s.tcp.post("/v1/predict", data=chunked()) as r:
        assert r.status == 413
    async with s.tcp.post("/v1/predict", json={"inputs": ["x"] * 5}) as r:
        assert r.status == 413
        assert (await error_of(r))["code"] == "too_many_inputs"
    await assert_still_serves(s)


async def test_429_queue_full_with_retry_after(start_server: StartServer, tiny_embed_dir) -> None:
    # Fixed window and a min size that is never reached hold the first request in the queue.
    s = await start_server(
        tiny_embed_dir,
        SIDECAR_QUEUE_MAX="4",
        SIDECAR_MAX_CLIENT_BATCH="4",
        SIDECAR_BATCH_WINDOW_MS="300",
        SIDECAR_BATCH_MIN_SIZE="8",
        SIDECAR_BATCH_ADAPTIVE="false",
    )
    held = asyncio.create_task(s.tcp.post("/v1/predict", json={"inputs": ["a", "b", "c"]}))
    await queued(s, 3)
    async with s.uds.post("/v1/predict", json={"inputs": ["d", "e"]}) as r:
        assert r.status == 429
        assert int(r.headers["Retry-After"]) >= 1
        assert (await error_of(r))["code"] == "queue_full"
    response = await held
    assert response.status == 200
    response.release()
    await assert_still_serves(s)


async def test_503_while_loading_then_ready(start_server: StartServer, tiny_embed_dir) -> None:
    s = await start_server(tiny_embed_dir, load=False)
    for session, route in ((s.tcp, "/readyz"), (s.health, "/startupz"), (s.uds, "/v1/models")):
        async with session.get(route) as r:
            assert r.status == 503
            assert int(r.headers["Retry-After"]) >= 1
            assert (await error_of(r))["code"] == "not_ready"
    async with s.tcp.post("/v1/predict", json={"inputs": ["x"]}) as r:
        assert r.status == 503
    async with s.health.get("/livez") as r:
        assert r.status == 200
    await s.server.load()
    async with s.health.get("/readyz") as r:
        assert r.status == 200
    await assert_still_serves(s)


async def test_504_deadline_from_header(start_server: StartServer, tiny_embed_dir) -> None:
    s = await start_server(
        tiny_embed_dir, SIDECAR_BATCH_WINDOW_MS="300", SIDECAR_BATCH_ADAPTIVE="false"
    )
    headers = {"X-Request-Timeout-Ms": "50"}
    async with s.tcp.post("/v1/predict", json={"inputs": ["x"]}, headers=headers) as r:
        assert r.status == 504
        assert (await error_of(r))["code"] == "deadline_exceeded"
    async with s.tcp.post(
        "/v1/predict", json={"inputs": ["x"]}, headers={"X-Request-Timeout-Ms": "soon"}
    ) as r:
        assert r.status == 400
    await assert_still_serves(s)


async def test_405_wrong_method(start_server: StartServer, tiny_embed_dir) -> None:
    s = await start_server(tiny_embed_dir)
    async with s.tcp.get("/v1/predict") as r:
        assert r.status == 405
        assert (await error_of(r))["code"] == "method_not_allowed"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


async def test_metrics_move_by_exactly_what_was_sent(
    start_server: StartServer, tiny_embed_dir
) -> None:
    s = await start_server(tiny_embed_dir, SIDECAR_MAX_CLIENT_BATCH="4")
    async with s.health.get("/metrics") as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        before = samples(await r.text())
    for _ in range(3):
        async with s.tcp.post("/v1/predict", json={"inputs": ["a", "b"]}) as r:
            assert r.status == 200
    async with s.uds.post("/v1/predict", data=b"nope") as r:
        assert r.status == 400
    async with s.tcp.post("/v1/predict", json={"inputs": ["a"] * 5}) as r:
        assert r.status == 413
    async with s.tcp.get("/no/such/route") as r:
        assert r.status == 404
    async with s.health.get("/metrics") as r:
        after = samples(await r.text())

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta("sidecar_requests_total", route="/v1/predict", code="200") == 3
    assert delta("sidecar_requests_total", route="/v1/predict", code="400") == 1
    assert delta("sidecar_requests_total", route="/v1/predict", code="413") == 1
    assert delta("sidecar_requests_total", route="unmatched", code="404") == 1
    assert delta("sidecar_request_duration_seconds_count", route="/v1/predict") == 5
    assert delta("sidecar_rejected_total", reason="invalid") == 1
    assert delta("sidecar_rejected_total", reason="too_large") == 1
    assert delta("sidecar_batch_size_sum") == 6
    assert delta("sidecar_queue_duration_seconds_count") == 6
    assert after[("sidecar_ready", ())] == 1
    assert after[("sidecar_queue_depth", ())] == 0
    assert after[("sidecar_model_load_bytes", ())] > 0
    info = [k for k in after if k[0] == "sidecar_model_info"]
    assert len(info) == 1 and dict(info[0][1])["device"] == "cpu"
    # Unknown routes and models create no new series.
    assert not [k for k in after if "/no/such/route" in str(k)]


async def test_disconnected_client_items_never_reach_the_model(
    start_server: StartServer, tiny_embed_dir
) -> None:
    s = await start_server(
        tiny_embed_dir, SIDECAR_BATCH_WINDOW_MS="500", SIDECAR_BATCH_ADAPTIVE="false"
    )
    async with s.health.get("/metrics") as r:
        before = samples(await r.text())
    gone = asyncio.create_task(s.tcp.post("/v1/predict", json={"inputs": ["a", "b", "c"]}))
    await queued(s, 3)  # waiting out the window
    gone.cancel()  # the client goes away: aiohttp closes the connection
    with pytest.raises(asyncio.CancelledError):
        await gone
    await asyncio.sleep(0.6)  # past the window: nothing may run
    async with s.health.get("/metrics") as r:
        after = samples(await r.text())
    cancelled = ("sidecar_rejected_total", (("reason", "cancelled"),))
    assert after[cancelled] - before[cancelled] == 3
    batches = ("sidecar_batch_size_count", ())
    assert after[batches] == before[batches]
    assert after[("sidecar_queue_depth", ())] == 0
    await assert_still_serves(s)


class PoisonedCudaDevice:
    """A model whose device fails as a poisoned CUDA context does: every forward pass raises
    CUDA's illegal-address error. This CPU-only machine has no GPU to fail; the rest of the
    path (the torch families' own classifier, the batcher, the service, the routes) is real."""

    card = ModelCard(
        task="embed", architecture="poisoned", device="cuda:0", dtype="float32",
        max_input_tokens=16, embedding_dim=2,
    )  # fmt: skip

    def prepare(self, inputs: Any) -> Prepared[int]:
        return Prepared([1] * len(inputs.texts), [1] * len(inputs.texts))

    def collate(self, items: Any, shape: Any = None) -> list[int]:
        return list(items)

    def forward(self, batch: Any) -> list[int]:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def finish(self, outputs: Any, inputs: Any) -> Any:
        raise AssertionError("nothing finishes on a poisoned device")

    def warmup(
        self, max_batch: int, max_tokens: int, shapes: Any = None
    ) -> list[tuple[int, float]]:
        return []

    def is_oom(self, exc: BaseException) -> bool:
        return False

    def is_fatal(self, exc: BaseException) -> bool:
        return is_fatal_device_error(exc)

    def release_memory(self) -> None:
        pass


async def test_livez_fails_after_a_fatal_device_error(
    start_server: StartServer, tiny_embed_dir
) -> None:
    s = await start_server(tiny_embed_dir, load=False)
    report = LoadReport("poisoned", None, 0, 0, 0, False, 0, 0.0, 0.0, 0.0, 0.0)
    await s.service.start(Loaded(PoisonedCudaDevice(), "poisoned", None, report, []))
    async with s.health.get("/livez") as r:
        assert r.status == 200
    assert is_fatal_device_error(RuntimeError("CUDA error: an illegal memory access"))
    assert not is_fatal_device_error(RuntimeError("shape mismatch"))
    async with s.tcp.post("/v1/predict", json={"inputs": ["a", "b"]}) as r:
        assert r.status == 503
        assert (await error_of(r))["code"] == "device_failed"
    async with s.health.get("/livez") as r:
        assert r.status == 503
        assert (await r.json())["reason"] == "fatal device error (RuntimeError)"
    async with s.health.get("/readyz") as r:
        assert r.status == 503
    async with s.uds.post("/v1/predict", json={"inputs": ["c"]}) as r:
        assert r.status == 503  # at once: nothing runs on a dead device


async def test_livez_fails_while_a_forward_pass_overruns_the_watchdog(
    start_server: StartServer,
) -> None:
    # The demo model on 64 long inputs: passes of about a second on this CPU.
    s = await start_server(None, SIDECAR_FORWARD_TIMEOUT_S="0.2", SIDECAR_BATCH_ADAPTIVE="false")
    long_text = " ".join(["serving"] * 250)
    busy = asyncio.create_task(
        s.tcp.post(
            "/v1/predict", json={"inputs": [long_text] * 64}, timeout=aiohttp.ClientTimeout(60)
        )
    )
    reasons = []
    while not busy.done():
        async with s.health.get("/livez") as r:
            if r.status == 503:
                reasons.append((await r.json())["reason"])
        await asyncio.sleep(0.05)
    response = await busy
    assert response.status == 200
    response.release()
    assert reasons and reasons[0].startswith("a forward pass has run for")
    assert "limit 0.2 s" in reasons[0]
    async with s.health.get("/livez") as r:
        assert r.status == 200  # the pass ended: alive again


async def test_expected_503s_log_no_error(
    start_server: StartServer, tiny_embed_dir, caplog: pytest.LogCaptureFixture
) -> None:
    # A kubelet probes /readyz every few seconds while the model loads: each 503 is a state,
    # not a fault, and must not log an error with a stack.
    s = await start_server(tiny_embed_dir, load=False)
    with caplog.at_level(logging.DEBUG):
        for _ in range(3):
            async with s.health.get("/readyz") as r:
                assert r.status == 503
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
