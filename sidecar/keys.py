"""Typed keys for the aiohttp application and request state."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from sidecar.runtime import Runtime

RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime")
ARRIVED_AT: web.RequestKey[float] = web.RequestKey("arrived_at", float)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
