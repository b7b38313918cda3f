"""The admin API's listener: a Unix socket of mode 0600 that serves only the sidecar's own user.

The socket is bound and given its mode before it listens, so no other user can ever connect
through a looser mode; each request's peer credentials (`SO_PEERCRED`) are checked as well, so
that a socket made reachable by a looser directory, a bind mount or a chmod still refuses a
client of another uid (403). The admin app is its own application: nothing of it is mounted on
the TCP listener, the inference socket or the health port.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import struct
from pathlib import Path

from aiohttp import web

from sidecar.api.wire import Handler
from sidecar.errors import ForbiddenError, StartupError

logger = logging.getLogger(__name__)

SOCKET_MODE = 0o600
_UCRED = struct.Struct("3i")  # pid, uid, gid


def peer_uid(request: web.BaseRequest) -> int | None:
    """The uid of the process at the other end of the request's Unix socket (None: unknown)."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    _pid, uid, _gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    return int(uid)


@web.middleware
async def same_user_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse (403) a client whose uid is not the sidecar's."""
    uid = peer_uid(request)
    if uid != os.getuid():
        logger.warning("admin socket: refused a client of uid %s", uid)
        raise ForbiddenError("the admin socket serves only the user the sidecar runs as")
    return await handler(request)


def bind_admin_socket(path: Path) -> socket.socket:
    """A listening Unix socket at `path`, mode 0600 before it listens (a stale socket replaced).

    Raises:
        StartupError: `path` exists and is not a socket.
    """
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
    else:
        if not stat.S_ISSOCK(mode):
            raise StartupError(
                f"SIDECAR_ADMIN_UDS points at an existing file that is not a socket: {path}"
            )
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, SOCKET_MODE)
        sock.listen(16)
    except OSError:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        raise
    sock.setblocking(False)
    return sock
