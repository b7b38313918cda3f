"""Job callbacks: a signed POST to the job's `callback_url` when it ends (DESIGN section 13).

Signed per Standard Webhooks (https://www.standardwebhooks.com): headers `webhook-id` (the same
for every attempt of one message), `webhook-timestamp` (epoch seconds) and `webhook-signature`
(`v1,` + base64 of HMAC-SHA256 over `<id>.<timestamp>.<body>`, keyed with the base64-decoded
secret after its `whsec_` prefix). The body: `{"type": "job.completed" | "job.failed" |
"job.cancelled" (`batch.*` for OpenAI batches), "timestamp", "data": <the job as GET shows it>}`.

Only URLs on SIDECAR_JOB_CALLBACK_ALLOW's origins are taken at submit. A delivery never blocks the
job (it runs in a task of its own after the job ended); redirects are not followed (a 3xx is a
failed attempt, like any non-2xx status, a timeout or a refused connection); failed attempts
are retried after `RETRY_DELAYS_S`, then given up (logged). A delivery owed when the process
stops is sent after the restart (the store keeps what is owed until it is `settled`), with the
same `webhook-id`: one per job, so a receiver that got it before can tell.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from sidecar.errors import StartupError
from sidecar.jobs_settings import origin_of

logger = logging.getLogger(__name__)

RETRY_DELAYS_S = (1.0, 5.0, 30.0, 120.0, 600.0)
ATTEMPT_TIMEOUT_S = 10.0
PREFIX = "whsec_"


def load_secret(path: str) -> bytes:
    """The key of a Standard Webhooks secret file (`whsec_` + base64; the prefix optional).

    Raises:
        StartupError: the file cannot be read or is not such a secret.
    """
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise StartupError(f"SIDECAR_JOB_CALLBACK_SECRET_FILE cannot be read: {exc}") from None
    try:
        key = base64.b64decode(text.removeprefix(PREFIX), validate=True)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise StartupError(
            "SIDECAR_JOB_CALLBACK_SECRET_FILE must hold 'whsec_' + base64 of 16 to 64 bytes"
        )
    return key


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


class Callbacks:
    """Delivers job callbacks in background tasks; `close` cancels those still pending.

    Args:
        key: the signing key (`load_secret`); None: deliveries are unsigned.
        allowed: the origins deliveries may go to (checked again at delivery).
        view: the job as its protocol's GET shows it, and the event's type prefix.
        settled: called with the job's id once its delivery succeeded or was given up.
    """

    def __init__(
        self,
        key: bytes | None,
        allowed: tuple[str, ...],
        view: Callable[[Any], tuple[str, dict[str, Any]]],
        delays_s: tuple[float, ...] = RETRY_DELAYS_S,
        settled: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.settled = settled
        self._key = key
        self._allowed = allowed
        self._view = view
        self._delays_s = delays_s
        self._tasks: set[asyncio.Task[None]] = set()
        self._sent: set[str] = set()
        self._session: aiohttp.ClientSession | None = None

    def job_ended(self, job: Any) -> None:
        """Deliver the callback of an ended job (once per job), if it has a URL."""
        url = job.callback_url
        if url is None or job.id in self._sent:
            return
        self._sent.add(job.id)
        kind, data = self._view(job)
        body = orjson.dumps(
            {
                "type": f"{kind}.{job.status}",
                "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
                "data": data,
            }
        )
        task = asyncio.create_task(self._deliver(job.id, url, body), name=f"callback-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _deliver(self, job_id: str, url: str, body: bytes) -> None:
        if origin_of(url) in self._allowed:  # the allow-list may have changed since the submit
            await self._attempts(job_id, url, body)
        else:
            logger.warning("callback not sent: its origin is no longer allowed")
        if self.settled is not None:
            try:
                await self.settled(job_id)
            except Exception:  # the store closing: the restart sends it again
                logger.warning("callback of job %s not marked settled", job_id[:64])

    async def _attempts(self, job_id: str, url: str, body: bytes) -> None:
        message_id = "msg_" + hashlib.sha256(job_id.encode()).hexdigest()[:32]
        for attempt, delay in enumerate((0.0, *self._delays_s)):
            await asyncio.sleep(delay)
            failure = await self._attempt(url, message_id, body)
            if failure is None:
                return
            logger.info("callback attempt %d failed: %s", attempt + 1, failure)
        logger.warning("callback given up after %d attempts", len(self._delays_s) + 1)

    async def _attempt(self, url: str, message_id: str, body: bytes) -> str | None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=ATTEMPT_TIMEOUT_S)
            )
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
        }
        if self._key is not None:
            headers["webhook-signature"] = sign(self._key, message_id, timestamp, body)
        try:
            async with self._session.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                await response.read()
                return None if 200 <= response.status < 300 else f"status {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return type(exc).__name__
