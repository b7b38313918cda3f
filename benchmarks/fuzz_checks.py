"""The fuzz run's own schemathesis check: no response shows the inside of the server.

Loaded by `schemathesis run` through SCHEMATHESIS_HOOKS=benchmarks.fuzz_checks (`benchmarks.fuzz`).
A body must not carry a stack trace or a path of the server's files. What the operator configured
(FUZZ_CONFIGURED, paths separated by os.pathsep: the model directory, the socket) may appear: the
settings at /v1/info show them by design; so may what the request itself sent (an error naming
the client's field `/work` repeats it); nothing else may.
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis

NEEDLES = ("Traceback", "/work", "/tmp", ".py", "site-packages")


@schemathesis.check
def no_internals(ctx: Any, response: Any, case: Any) -> bool | None:
    """No stack trace and no path of the server's files in any response body."""
    # Bodies may be binary (a file's content): what decodes is searched.
    text = (response.content or b"").decode("utf-8", errors="replace")
    for configured in filter(None, os.environ.get("FUZZ_CONFIGURED", "").split(os.pathsep)):
        text = text.replace(configured, "<configured>")
    sent = _sent(response.request)
    found = [needle for needle in NEEDLES if needle in text and needle not in sent]
    if found:
        raise AssertionError(f"the body carries {found}: {text[:300]!r}")
    return None


def _sent(request: Any) -> str:
    """What the client sent, as text: URL, headers and body."""
    body = request.body or b""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    return f"{request.url}\n{dict(request.headers)}\n{body}"
