"""The admin API: model versions, routing, rollback. Served only on SIDECAR_ADMIN_UDS.

    GET  /admin/v1/models/{model}/versions               versions, states, traffic, desired
    PUT  /admin/v1/models/{model}/traffic                the desired state (versions.json's shape)
    POST /admin/v1/models/{model}/versions/{version}/load    load a version under the root
    POST /admin/v1/models/{model}/versions/{version}/unload  drain and free it
    POST /admin/v1/models/{model}/rollback               the previous stable becomes stable
    POST /admin/v1/reload                                re-read the root and versions.json

Never mounted on TCP or the health port (`sidecar.admin_socket` serves it, and only to the
user the sidecar runs as). No route takes a path, a URL or bytes: versions are named, and only
versions that already exist under the model root can be named.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from sidecar.api import wire
from sidecar.api.keys import BODY_BUDGET, SERVICE

if TYPE_CHECKING:
    from sidecar.serving import Registry

PREFIX = "/admin/v1"


def routes() -> list[web.RouteDef]:
    return [
        web.get(f"{PREFIX}/models/{{model}}/versions", list_versions),
        web.put(f"{PREFIX}/models/{{model}}/traffic", set_traffic),
        web.post(f"{PREFIX}/models/{{model}}/versions/{{version}}/load", load),
        web.post(f"{PREFIX}/models/{{model}}/versions/{{version}}/unload", unload),
        web.post(f"{PREFIX}/models/{{model}}/rollback", rollback),
        web.post(f"{PREFIX}/reload", reload),
    ]


def _registry(request: web.Request) -> tuple[str, Registry]:
    """The served name and the registry, once the model named in the path serves (404, 503)."""
    service = request.app[SERVICE]
    served = service.model(request.match_info.get("model"))
    registry = service.registry
    assert registry is not None
    return served.name, registry


def _state(name: str, registry: Registry, **extra: Any) -> web.Response:
    return wire.json_response({"model": name, **registry.public(), **extra})


async def list_versions(request: web.Request) -> web.StreamResponse:
    """`GET /admin/v1/models/{model}/versions`."""
    name, registry = _registry(request)
    return _state(name, registry)


async def set_traffic(request: web.Request) -> web.StreamResponse:
    """`PUT /admin/v1/models/{model}/traffic`: returns once the pass it started has run."""
    name, registry = _registry(request)
    try:
        data = await wire.read_json(request)
    finally:
        request.app[BODY_BUDGET].release(request)
    await registry.apply_document(data)
    return _state(name, registry)


async def load(request: web.Request) -> web.StreamResponse:
    """`POST .../versions/{version}/load`: the version's state once loaded or failed."""
    name, registry = _registry(request)
    version = await registry.load(request.match_info["version"])
    return _state(name, registry, version=version.public())


async def unload(request: web.Request) -> web.StreamResponse:
    """`POST .../versions/{version}/unload`: drained and freed (409 while it serves traffic)."""
    name, registry = _registry(request)
    version = await registry.unload(request.match_info["version"])
    return _state(name, registry, version=version.public())


async def rollback(request: web.Request) -> web.StreamResponse:
    """`POST /admin/v1/models/{model}/rollback`: the previous stable version serves again."""
    name, registry = _registry(request)
    started = time.monotonic()
    previous = await registry.rollback()
    seconds = time.monotonic() - started
    return _state(name, registry, rolled_back_to=previous, seconds=round(seconds, 6))


async def reload(request: web.Request) -> web.StreamResponse:
    """`POST /admin/v1/reload`: re-read the model root now; failed versions are tried again."""
    service = request.app[SERVICE]
    service.check_ready()
    await service.reload()
    name, registry = service.model(None).name, service.registry
    assert registry is not None
    return _state(name, registry)
