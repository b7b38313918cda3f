"""`GET /openapi.json`: valid OpenAPI, every route, the very schemas the routes check, fuzzed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from benchmarks import fuzz
from sidecar.api import native, openai, rerank
from sidecar.api.schema import Choice, Limits, Object, PositiveInt, Texts, Type
from sidecar.app import build_api_app
from sidecar.auth import BearerToken
from sidecar.config import Settings
from sidecar.errors import InvalidInputError, TooManyInputsError
from sidecar.server import Server
from tests.sidecar.conftest import StartServer

LIMITS = Limits(max_inputs=4)
BODIES = {"predict": native.PREDICT, "embeddings": openai.EMBEDDINGS, "rerank": rerank.RERANK}


def registered(auth: BearerToken | None) -> set[tuple[str, str]]:
    """(method, path) of every route the API listener serves; HEAD comes with each GET."""
    server = Server(Settings.from_env({}))
    app = build_api_app(server.service, server.metrics, server.timeline, auth)
    return {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }


def documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for path, item in document["paths"].items() for method in item}


async def test_the_document_is_valid_and_lists_every_route(
    start_server: StartServer, tiny_embed_dir: Path
) -> None:
    s = await start_server(tiny_embed_dir, auth_token="t0ken")
    async with s.tcp.get("/openapi.json") as r:
        assert r.status == 401  # like every route but the probes
    async with s.uds.get("/openapi.json", headers={"Authorization": "Bearer t0ken"}) as r:
        assert r.status == 200 and r.content_type == "application/json"
        document = await r.json()
    validate(document)
    assert document["openapi"].startswith("3.1")
    # A route added without its schema fails here.
    assert documented(document) == registered(BearerToken("t0ken"))
    for path, item in document["paths"].items():
        for op in item.values():
            probe = path in ("/livez", "/readyz", "/startupz")
            assert ("401" in op["responses"]) is not probe, path
            assert op["security"] == ([] if probe else [{"bearer": []}]), path
            for status, response in op["responses"].items():
                assert "X-Request-Id" in response["headers"], (path, status)


async def test_without_a_token_nothing_asks_for_one(
    start_server: StartServer, tiny_embed_dir: Path
) -> None:
    s = await start_server(tiny_embed_dir, SIDECAR_MAX_CLIENT_BATCH="7")
    async with s.tcp.get("/openapi.json") as r:
        document = await r.json()
    validate(document)
    assert "securitySchemes" not in document["components"]
    for item in document["paths"].values():
        for op in item.values():
            assert "401" not in op["responses"] and "security" not in op
    predict = document["paths"]["/v1/predict"]["post"]
    body = predict["requestBody"]["content"]["application/json"]["schema"]
    # The route's own type, with the settings it checks against.
    assert body == native.PREDICT.json_schema(Limits(max_inputs=7))
    assert body["properties"]["inputs"]["anyOf"][1]["maxItems"] == 7
    assert {"400", "408", "413", "415", "429", "503", "504"} <= set(predict["responses"])


def _accepts(body_type: Object, body: Any) -> bool:
    try:
        body_type.parse(body, LIMITS)
    except (InvalidInputError, TooManyInputsError):
        return False
    return True


_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
_TEXT_ITEM = st.text(max_size=3) | st.fixed_dictionaries({"text": st.text(max_size=3)})


def _near(body_type: Type) -> st.SearchStrategy[Any]:
    """Values of `body_type`, valid or close to it (or any JSON at all)."""
    near: st.SearchStrategy[Any]
    if isinstance(body_type, Object):
        members = {name: _near(field.type) for name, field in body_type.fields.items()}
        required = {name for name, field in body_type.fields.items() if field.required}
        near = st.fixed_dictionaries(
            {name: members[name] for name in required},
            optional={name: members[name] for name in members if name not in required},
        ) | st.fixed_dictionaries({}, optional={**members, "extra": _JSON})
    elif isinstance(body_type, Texts):
        near = st.text(max_size=3) | st.lists(_TEXT_ITEM | _JSON, max_size=LIMITS.max_inputs + 1)
    elif isinstance(body_type, Choice):
        near = st.sampled_from(body_type.values)
    elif isinstance(body_type, PositiveInt):
        near = st.integers(-1, 2**64) | st.floats(-1, 2.0**64) | st.sampled_from([0, 2**63])
    else:
        near = st.booleans() | st.text(max_size=3)
    return st.one_of(near, near, near, _JSON)


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("predict", {"inputs": "x"}),
        ("predict", {"inputs": ["a", {"text": "b"}], "parameters": {"truncate": True}}),
        ("embeddings", {"input": ["a"], "model": None, "dimensions": 5.0, "user": "u"}),
        ("rerank", {"query": "q", "documents": ["a", {"text": ""}], "top_n": 2, "model": "m"}),
    ],
)
def test_valid_bodies_are_valid_by_the_schema_too(name: str, body: Any) -> None:
    body_type = BODIES[name]
    assert _accepts(body_type, body)
    Draft202012Validator(body_type.json_schema(LIMITS)).validate(body)


@pytest.mark.parametrize("name", sorted(BODIES))
@settings(max_examples=300)
@given(data=st.data())
def test_the_published_schema_accepts_exactly_what_the_route_accepts(
    name: str, data: st.DataObject
) -> None:
    body_type = BODIES[name]
    body = data.draw(_near(body_type))
    schema = Draft202012Validator(body_type.json_schema(LIMITS))
    accepted = _accepts(body_type, body)
    event(f"accepted: {accepted}")
    assert schema.is_valid(body) == accepted, json.dumps(body)


async def test_schemathesis_finds_nothing(
    tiny_embed_dir: Path, tiny_rerank_dir: Path, tmp_path: Path
) -> None:
    """A short run of benchmarks/fuzz.py on tiny models (the full one: README, Fuzzing)."""
    runs = []
    for name, model in (("embed", tiny_embed_dir), ("rerank", tiny_rerank_dir)):
        workdir = tmp_path / name
        workdir.mkdir()
        runs.append(
            await fuzz.fuzz_model(name, model, workdir, examples=15, seed=1, phases=fuzz.PHASES)
        )
    for run in runs:
        assert run["test_cases"]["generated"] > 0, run["output_tail"]
        assert run["exit_code"] == 0, run["output_tail"]
        assert not run["failures"] and not run["errors"], run["output_tail"]
