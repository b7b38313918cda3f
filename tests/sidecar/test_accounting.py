"""Abandoned requests: counted as 499, their queued items dropped before compute and counted."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from sidecar.metrics import Metrics
from sidecar.middleware import access_log_class
from tests.sidecar.conftest import Running, StartServer
from tests.sidecar.test_status_codes import assert_still_serves, samples

CLIENTS = 400
CLIENT_TIMEOUT_S = 0.2


async def metrics_of(s: Running) -> dict:
    async with s.health.get("/metrics") as r:
        return samples(await r.text())


def count(values: dict, name: str, **labels: str) -> float:
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_400_impatient_clients_are_all_accounted_and_mostly_never_computed(
    start_server: StartServer,
) -> None:
    # The demo model on this CPU runs tens of items a second: 400 at once take many seconds.
    s = await start_server(None)
    base = "http://127.0.0.1:{}".format(s.server.addresses["tcp"][1])
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=0)
    text = "a sentence of about the usual length, sent by a client that will not wait long"

    async def impatient(session: aiohttp.ClientSession, i: int) -> str:
        try:
            body = {"inputs": [f"{i} {text}"]}
            async with session.post(f"{base}/v1/predict", json=body, timeout=timeout) as r:
                await r.read()
                return str(r.status)
        except TimeoutError:
            return "gave up"

    async def connect(session: aiohttp.ClientSession) -> None:
        async with session.get(f"{base}/livez") as r:
            assert r.status == 200

    async with aiohttp.ClientSession(connector=connector) as session:
        # 400 connections open first, so that every request reaches the server in its 200 ms
        # (400 connects at once overflow the listen backlog: those would never arrive).
        await asyncio.gather(*(connect(session) for _ in range(CLIENTS)))
        before = await metrics_of(s)
        outcomes = await asyncio.gather(*(impatient(session, i) for i in range(CLIENTS)))
    gave_up = outcomes.count("gave up")
    assert set(outcomes) <= {"200", "gave up"} and gave_up > CLIENTS // 2

    # Every request accounted once the server has seen every connection close.
    async with asyncio.timeout(20):
        while True:
            after = await metrics_of(s)
            answered, gone = (
                count(after, "sidecar_requests_total", route="/v1/predict", code=code)
                - count(before, "sidecar_requests_total", route="/v1/predict", code=code)
                for code in ("200", "499")
            )
            if answered + gone == CLIENTS and after[("sidecar_queue_depth", ())] == 0:
                break
            await asyncio.sleep(0.05)
    # A client may give up in the instant its answer is written: that one counts as answered.
    assert gave_up - 2 <= gone <= gave_up
    computed = count(after, "sidecar_batch_size_sum") - count(before, "sidecar_batch_size_sum")
    cancelled = count(after, "sidecar_rejected_total", reason="cancelled") - count(
        before, "sidecar_rejected_total", reason="cancelled"
    )
    assert computed < CLIENTS / 2, f"{computed} of {CLIENTS} items computed"
    # Every item was computed, or dropped from the queue (counted as cancelled), or taken into
    # one of the two batches in flight (one running, one collating; 32 items each at most) and
    # skipped there once its client had gone.
    assert CLIENTS - 2 * 32 <= computed + cancelled <= CLIENTS
    await assert_still_serves(s)


class _GoneTransport:
    """An asyncio transport as it is once its peer has gone (closing)."""

    def is_closing(self) -> bool:
        return True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


def test_an_answer_that_could_not_be_delivered_counts_as_499() -> None:
    # The race of a client that leaves after its result was computed, before the answer is
    # written: aiohttp still hands the response to the access log; it must count as 499.
    metrics = Metrics()
    access_log = access_log_class(metrics)(logging.getLogger("sidecar.access"), "")
    request = make_mocked_request("POST", "/v1/predict", transport=_GoneTransport())
    access_log.log(request, web.Response(status=200), 0.01)
    values = samples(metrics.render().decode())
    assert count(values, "sidecar_requests_total", route="unmatched", code="499") == 1
    assert count(values, "sidecar_requests_total", route="unmatched", code="200") == 0
