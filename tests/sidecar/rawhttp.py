"""Raw HTTP for transport tests, and a prober of the health port that runs in its own thread."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RawResponse:
    """A response as read off the socket (the first one, after any interim 100)."""

    status: int
    headers: dict[str, str]
    body: bytes
    interim: list[int] = field(default_factory=list)  # statuses of 1xx responses before it

    def error(self) -> dict[str, Any]:
        """The documented error object; checks the shape and the request id header."""
        document = json.loads(self.body)
        assert set(document) == {"error"}, document
        error: dict[str, Any] = document["error"]
        assert set(error) == {"code", "message", "request_id"}, error
        assert error["request_id"] == self.headers["x-request-id"]
        return error


async def read_response(reader: asyncio.StreamReader) -> RawResponse:
    """Read one response: status line, headers, a Content-Length body (1xx skipped)."""
    interim = []
    while True:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if 100 <= status < 200:
            interim.append(status)
            continue
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return RawResponse(status, headers, body, interim)


async def exchange(port: int, data: bytes, timeout_s: float = 10.0) -> RawResponse:
    """Send `data` on a new connection and read the response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout_s):
            return await read_response(reader)
    finally:
        writer.close()
        await writer.wait_closed()


def request(
    method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    """An HTTP/1.1 request's bytes, with Host and (when there is a body) Content-Length."""
    all_headers = {"Host": "localhost", **(headers or {})}
    if body and "Transfer-Encoding" not in all_headers:
        all_headers.setdefault("Content-Length", str(len(body)))
    lines = "".join(f"{name}: {value}\r\n" for name, value in all_headers.items())
    head = f"{method} {path} HTTP/1.1\r\n{lines}"
    return head.encode("latin-1") + b"\r\n" + body


class HealthProbe:
    """Probes `/livez` on the health port from a thread of its own, as a kubelet does (a new
    connection each time), for as long as it runs; its latencies tell whether the health port
    answered promptly while the test's own event loop (and the server on it) was busy."""

    def __init__(self, port: int, path: str = "/livez", every_s: float = 0.02) -> None:
        self.port = port
        self.path = path
        self.every_s = every_s
        self.latencies_s: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-probe", daemon=True)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                connection.request("GET", self.path)
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    self.failures.append(f"status {response.status}")
            except OSError as exc:
                self.failures.append(repr(exc))
            finally:
                connection.close()
            self.latencies_s.append(time.perf_counter() - started)
            self._stop.wait(self.every_s)

    @property
    def max_ms(self) -> float:
        return max(self.latencies_s, default=0.0) * 1000.0

    def check(self, limit_ms: float) -> None:
        """Every probe answered 200, the slowest within `limit_ms`."""
        assert self.latencies_s, "no probe ran"
        assert not self.failures, self.failures[:5]
        assert self.max_ms < limit_ms, f"slowest probe {self.max_ms:.1f} ms"
