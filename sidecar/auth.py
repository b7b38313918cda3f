"""The bearer token of the API listeners: checked in constant time, re-read when its file changes.

Every route on the inference listeners (TCP and the Unix socket) asks for it, `/metrics` and the
model and info routes included, except the probes `/livez`, `/readyz` and `/startupz` (a kubelet
carries no token). The health port never asks for it: it serves only probes and metrics.

A mounted Kubernetes secret changes by an atomic symlink swap; the file is polled (a `stat` every
`poll_s`, off the event loop) and read again when its identity, size or mtime change, so a rotated
token works, and the old one stops working, within one poll interval and without a restart. A file
that disappears or turns empty during a rotation keeps the last token rather than locking every
client out; it is logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from sidecar.errors import ConfigError, UnauthorizedError

logger = logging.getLogger(__name__)

# Probes from the kubelet carry no token; these answer on the API listeners without one.
OPEN_ROUTES = frozenset({"/livez", "/readyz", "/startupz"})
POLL_S = 1.0
_Stamp = tuple[int, int, int, int]  # device, inode, size, mtime (ns) of the file read last


class BearerToken:
    """The token requests must carry as `Authorization: Bearer <token>`.

    Args:
        token: the token.
        path: the file it came from, to watch for a new one (None: fixed).
        poll_s: how often the file is checked for a change.
    """

    def __init__(self, token: str, *, path: Path | None = None, poll_s: float = POLL_S) -> None:
        self.path = path
        self.poll_s = poll_s
        self._digest = _digest(token.encode())
        self._stamp: _Stamp | None = _stamp(path) if path is not None else None

    @classmethod
    def from_file(cls, path: str | Path, *, poll_s: float = POLL_S) -> BearerToken:
        """Read the token file (surrounding whitespace stripped).

        Raises:
            ConfigError: SIDECAR_AUTH_TOKEN_FILE cannot be read or is empty.
        """
        try:
            token = Path(path).read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(
                "SIDECAR_AUTH_TOKEN_FILE", str(path), f"a readable file ({reason})"
            ) from None
        if not token:
            raise ConfigError("SIDECAR_AUTH_TOKEN_FILE", str(path), "a non-empty file")
        return cls(token, path=Path(path), poll_s=poll_s)

    def allows(self, authorization: str | None) -> bool:
        """Whether an `Authorization` header value carries the token.

        Both sides are hashed first, so the comparison takes the same time whatever the length
        or content of what was sent; header bytes that are not UTF-8 are compared as sent.
        """
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        sent = given.strip().encode("utf-8", "surrogateescape")
        return hmac.compare_digest(_digest(sent), self._digest)

    async def watch(self) -> None:
        """Re-read the file whenever it changes, until cancelled; a fixed token returns at once."""
        if self.path is None:
            return
        while True:
            await asyncio.sleep(self.poll_s)
            await asyncio.to_thread(self.reload)

    def reload(self) -> bool:
        """Read the file again if it changed since the last read; True when the token changed."""
        if self.path is None:
            return False
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return False
        try:
            token = self.path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            logger.warning("cannot read the token file (%s); keeping the current token", exc)
            return False
        if not token:
            logger.warning("the token file is empty; keeping the current token")
            return False
        self._stamp = stamp
        digest = _digest(token.encode())
        if hmac.compare_digest(digest, self._digest):
            return False
        self._digest = digest
        logger.info("the bearer token changed; the new one is in force")
        return True


def require_token(token: BearerToken) -> Middleware:
    """Refuse requests without the token with 401, except the probes (`OPEN_ROUTES`)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_ROUTES and not token.allows(
            request.headers.get("Authorization")
        ):
            raise UnauthorizedError("a valid 'Authorization: Bearer <token>' header is required")
        return await handler(request)

    return middleware


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def _stamp(path: Path) -> _Stamp | None:
    try:
        st = os.stat(path)  # follows the symlinks a mounted secret is made of
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns
