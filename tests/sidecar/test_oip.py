"""The Open Inference Protocol v2 on a real server, with the real clients: Triton's
`tritonclient[http]` over TCP, KServe's `InferenceRESTClient` over the Unix socket (httpx), and
raw requests for the wire details and the refusals."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import orjson
import pytest
import tritonclient.http as triton
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from sidecar.api import oip_tensors
from sidecar.api.oip_types import InferRequest, Signature
from sidecar.errors import InvalidInputError
from tests.onnx_graphs import mlp_graph
from tests.sidecar.conftest import Running, StartServer

HEADER = "Inference-Header-Content-Length"
# Every datatype of the protocol that numpy holds, and its ONNX element type.
DATATYPES = {
    "BOOL": (np.bool_, TensorProto.BOOL),
    "UINT8": (np.uint8, TensorProto.UINT8),
    "UINT16": (np.uint16, TensorProto.UINT16),
    "UINT32": (np.uint32, TensorProto.UINT32),
    "UINT64": (np.uint64, TensorProto.UINT64),
    "INT8": (np.int8, TensorProto.INT8),
    "INT16": (np.int16, TensorProto.INT16),
    "INT32": (np.int32, TensorProto.INT32),
    "INT64": (np.int64, TensorProto.INT64),
    "FP16": (np.float16, TensorProto.FLOAT16),
    "FP32": (np.float32, TensorProto.FLOAT),
    "FP64": (np.float64, TensorProto.DOUBLE),
    "BF16": (ml_dtypes.bfloat16, TensorProto.BFLOAT16),
}


def identity_graph(directory: Path) -> Path:
    """`out_<type>` = `in_<type>` for every datatype, each (batch, 3); and `x` (batch, 4) FP32
    cast to `half` (FP16) and `brain` (BF16): a model whose outputs JSON cannot carry."""
    directory.mkdir(parents=True, exist_ok=True)
    inputs, outputs, nodes = [], [], []
    for name, (_, onnx_type) in DATATYPES.items():
        kind = name.lower()
        inputs.append(helper.make_tensor_value_info(f"in_{kind}", onnx_type, ["batch", 3]))
        outputs.append(helper.make_tensor_value_info(f"out_{kind}", onnx_type, ["batch", 3]))
        nodes.append(helper.make_node("Identity", [f"in_{kind}"], [f"out_{kind}"]))
    inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]))
    for name, onnx_type in (("half", TensorProto.FLOAT16), ("brain", TensorProto.BFLOAT16)):
        outputs.append(helper.make_tensor_value_info(name, onnx_type, ["batch", 4]))
        nodes.append(helper.make_node("Cast", ["x"], [name], to=onnx_type))
    graph = helper.make_graph(nodes, "dtypes", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(directory / "model.onnx"))
    return directory


@pytest.fixture(scope="module")
def mlp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mlp_graph(tmp_path_factory.mktemp("oip") / "mlp")[0]


@pytest.fixture(scope="module")
def dtypes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return identity_graph(tmp_path_factory.mktemp("oip") / "dtypes")


def tcp_url(s: Running) -> str:
    return f"127.0.0.1:{s.server.settings.port}"


async def post(
    s: Running, path: str, body: dict[str, Any], binary: bytes = b"", **headers: str
) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
    """POST an infer request (JSON, and binary data after it); the JSON part of the answer."""
    head = orjson.dumps(body)
    if binary:
        headers[HEADER] = str(len(head))
    async with s.tcp.post(path, data=head + binary, headers=headers) as r:
        raw = await r.read()
        length = int(r.headers.get(HEADER, len(raw)))
        return r.status, orjson.loads(raw[:length]), r


# -- Triton's client over TCP -------------------------------------------------------------------


async def test_triton_client_on_a_text_model(
    start_server: StartServer, tiny_embed_dir: Path
) -> None:
    s = await start_server(tiny_embed_dir)
    name, version = s.service.served.name, s.service.served.version
    texts = ["hello world", "the open inference protocol", "é ü"]
    async with s.tcp.post("/v1/predict", json={"inputs": texts}) as r:
        expected = np.array([item["embedding"] for item in (await r.json())["results"]])

    def run() -> dict[str, Any]:
        client = triton.InferenceServerClient(url=tcp_url(s))
        try:
            text = triton.InferInput("text", [len(texts)], "BYTES")
            text.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
            found: dict[str, Any] = {
                "live": client.is_server_live(),
                "ready": client.is_server_ready(),
                "model_ready": client.is_model_ready(name),
                "version_ready": client.is_model_ready(name, model_version=version),
                "server": client.get_server_metadata(),
                "metadata": client.get_model_metadata(name),
                "default": client.get_model_metadata("default", model_version=version),
            }
            for binary in (True, False):
                as_json = triton.InferInput("text", [len(texts), 1], "BYTES")
                as_json.set_data_from_numpy(
                    np.array([[t] for t in texts], dtype=object), binary_data=False
                )
                result = client.infer(
                    name,
                    [text if binary else as_json],
                    outputs=[triton.InferRequestedOutput("embedding", binary_data=binary)],
                    model_version=version,
                )
                found[f"binary={binary}"] = result.as_numpy("embedding")
                found[f"response binary={binary}"] = result.get_response()
            found["other version ready"] = client.is_model_ready(name, model_version="7")
            return found
        finally:
            client.close()

    found = await asyncio.to_thread(run)
    assert found["live"] and found["ready"] and found["model_ready"] and found["version_ready"]
    assert found["server"]["name"] == "sidecar"
    assert "binary_tensor_data" in found["server"]["extensions"]
    assert found["metadata"] == {
        "name": name,
        "versions": [version],
        "platform": "pytorch",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 32]}],
    }
    assert found["default"] == found["metadata"]
    async with s.tcp.get("/openapi.json") as r:
        document = await r.json()
    infer = document["paths"]["/v2/models/{model}/versions/{version}/infer"]["post"]
    assert set(infer["responses"]["200"]["content"]) == {
        "application/json",
        "application/octet-stream",
    }
    assert infer["responses"]["400"]["content"]["application/json"]["schema"]["properties"] == {
        "error": {"type": "string"}
    }
    assert {"/v2", "/v2/health/live", "/v2/models/{model}/ready"} <= set(document["paths"])
    for binary in (True, False):
        embedding = found[f"binary={binary}"]
        assert embedding.dtype == np.float32 and embedding.shape == (3, 32)
        np.testing.assert_allclose(embedding, expected, rtol=1e-6, atol=1e-6)
        output = found[f"response binary={binary}"]["outputs"][0]
        assert ("binary_data_size" in output.get("parameters", {})) is binary
        assert found[f"response binary={binary}"]["model_version"] == version
    assert found["other version ready"] is False  # 404


async def test_triton_client_fp16_and_bf16(start_server: StartServer, dtypes_dir: Path) -> None:
    s = await start_server(dtypes_dir)
    name = s.service.served.name
    x = np.linspace(-2, 2, 8, dtype=np.float32).reshape(2, 4)
    brain = np.array([[1.5, -2.25, 3.0], [0.0, 7.0, -0.5]], dtype=ml_dtypes.bfloat16)

    def run() -> dict[str, Any]:
        client = triton.InferenceServerClient(url=tcp_url(s))
        try:
            tensors = []
            for kind, (dtype, _) in DATATYPES.items():
                tensor = triton.InferInput(f"in_{kind.lower()}", [2, 3], kind)
                value = brain if kind == "BF16" else np.arange(6).reshape(2, 3).astype(dtype)
                tensor.set_data_from_numpy(value, binary_data=True)
                tensors.append(tensor)
            xin = triton.InferInput("x", [2, 4], "FP32")
            xin.set_data_from_numpy(x, binary_data=False)
            result = client.infer(name, [*tensors, xin])  # no outputs named: all, as binary
            asked = [triton.InferRequestedOutput(n) for n in ("brain", "half", "out_bf16")]
            some = client.infer(name, [*tensors, xin], outputs=asked)
            try:
                client.infer(
                    name,
                    [*tensors, xin],
                    outputs=[triton.InferRequestedOutput("half", binary_data=False)],
                )
            except InferenceServerException as exc:
                refused = exc
            return {"all": result, "some": some, "refused": refused}
        finally:
            client.close()

    found = await asyncio.to_thread(run)
    result = found["all"]
    half, out_brain = result.as_numpy("half"), result.as_numpy("brain")
    assert half.dtype == np.float16 and out_brain.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(half, x.astype(np.float16))
    np.testing.assert_array_equal(out_brain, x.astype(ml_dtypes.bfloat16))
    np.testing.assert_array_equal(result.as_numpy("out_bf16"), brain)
    for kind, (dtype, _) in DATATYPES.items():
        if kind != "BF16":
            np.testing.assert_array_equal(
                result.as_numpy(f"out_{kind.lower()}"), np.arange(6).reshape(2, 3).astype(dtype)
            )
    some = found["some"].get_response()
    assert [o["name"] for o in some["outputs"]] == ["brain", "half", "out_bf16"]
    assert [o["datatype"] for o in some["outputs"]] == ["BF16", "FP16", "BF16"]
    assert "as binary data" in found["refused"].message()


async def test_every_datatype_as_json_and_as_binary(
    start_server: StartServer, dtypes_dir: Path
) -> None:
    s = await start_server(dtypes_dir)
    values = {
        "BOOL": [[True, False, True], [False, False, True]],
        "UINT8": [[0, 255, 7], [1, 2, 3]],
        "UINT16": [[0, 65535, 7], [1, 2, 3]],
        "UINT32": [[0, 2**32 - 1, 7], [1, 2, 3]],
        "UINT64": [[0, 2**64 - 1, 7], [1, 2, 3]],
        "INT8": [[-128, 127, 0], [1, -2, 3]],
        "INT16": [[-(2**15), 2**15 - 1, 0], [1, -2, 3]],
        "INT32": [[-(2**31), 2**31 - 1, 0], [1, -2, 3]],
        "INT64": [[-(2**63), 2**63 - 1, 0], [1, -2, 3]],
        "FP16": [[0.5, -1.25, 65504.0], [1, 2, 3]],
        "FP32": [[0.1, -1e30, 3.5], [1, 2, 3]],
        "FP64": [[0.1, -1e300, 3.5], [1, 2, 3]],
        "BF16": [[0.5, -1.25, 3.0], [1, 2, 3]],
    }
    arrays = {kind: np.array(values[kind], dtype=DATATYPES[kind][0]) for kind in values}
    x = np.zeros((2, 4), dtype=np.float32)
    json_inputs, binary_inputs, raw = [], [], []
    for kind, array in arrays.items():
        tensor = {"name": f"in_{kind.lower()}", "datatype": kind, "shape": [2, 3]}
        data = array.tobytes()
        binary_inputs.append({**tensor, "parameters": {"binary_data_size": len(data)}})
        raw.append(data)
        if kind in ("FP16", "BF16"):
            json_inputs.append(binary_inputs[-1])  # JSON has no such numbers
        else:
            # nested for the integers, flat for the rest: both are the protocol's
            nested = kind.startswith(("INT", "UINT"))
            json_inputs.append(
                {**tensor, "data": values[kind] if nested else array.ravel().tolist()}
            )
    x_input = {"name": "x", "datatype": "FP32", "shape": [2, 4], "data": x.ravel().tolist()}
    outputs = [{"name": f"out_{k.lower()}"} for k in DATATYPES if k not in ("FP16", "BF16")]
    binary_out = [
        {"name": f"out_{k.lower()}", "parameters": {"binary_data": True}} for k in DATATYPES
    ]
    fp_raw = raw[list(arrays).index("FP16")] + raw[list(arrays).index("BF16")]
    path = "/v2/models/default/infer"
    status, body, _ = await post(
        s, path, {"inputs": [*json_inputs, x_input], "outputs": outputs}, fp_raw
    )
    assert status == 200, body
    for output in body["outputs"]:
        kind = output["datatype"]
        assert output["shape"] == [2, 3]
        expected = arrays[kind]
        np.testing.assert_array_equal(
            np.array(output["data"], dtype=expected.dtype), expected.ravel()
        )
    async with s.tcp.post(
        path,
        data=orjson.dumps({"id": "r1", "inputs": [*binary_inputs, x_input], "outputs": binary_out})
        + b"".join(raw),
        headers={
            HEADER: str(
                len(
                    orjson.dumps(
                        {"id": "r1", "inputs": [*binary_inputs, x_input], "outputs": binary_out}
                    )
                )
            )
        },
    ) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "application/octet-stream"
        raw_answer = await r.read()
        length = int(r.headers[HEADER])
    answer = orjson.loads(raw_answer[:length])
    assert answer["id"] == "r1"
    offset = length
    for output, kind in zip(answer["outputs"], DATATYPES, strict=True):
        size = output["parameters"]["binary_data_size"]
        got = np.frombuffer(raw_answer[offset : offset + size], dtype=arrays[kind].dtype)
        np.testing.assert_array_equal(got.reshape(2, 3), arrays[kind])
        offset += size
    assert offset == len(raw_answer)


# -- KServe's client over the Unix socket --------------------------------------------------------


async def test_kserve_client_over_the_socket(start_server: StartServer, mlp_dir: Path) -> None:
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
    from kserve.protocol.infer_type import RequestedOutput

    s = await start_server(mlp_dir)
    name = s.service.served.name
    session = ort.InferenceSession(str(mlp_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 16), dtype=np.float32)
    bias = rng.standard_normal((5, 4), dtype=np.float32)
    y, norm = session.run(None, {"x": x, "bias": bias})
    config = RESTConfig(
        transport=httpx.AsyncHTTPTransport(uds=s.socket_path), protocol="v2", retries=0
    )
    client = InferenceRESTClient(config)
    base = "http://localhost"
    try:
        assert await client.is_server_live(base)
        assert await client.is_server_ready(base)
        assert await client.is_model_ready(base, name)
        for binary in (False, True):
            inputs = [InferInput("x", [5, 16], "FP32"), InferInput("bias", [5, 4], "FP32")]
            inputs[0].set_data_from_numpy(x, binary_data=binary)
            inputs[1].set_data_from_numpy(bias, binary_data=binary)
            request = InferRequest(
                model_name=name,
                infer_inputs=inputs,
                request_outputs=[
                    RequestedOutput(output, {"binary_data": binary}) for output in ("y", "norm")
                ],
            )
            response = await client.infer(base, request, model_name=name)
            outputs = {o.name: o.as_numpy() for o in response.outputs}
            np.testing.assert_allclose(outputs["y"], y, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(outputs["norm"], norm, rtol=1e-6, atol=1e-6)
            assert response.model_name == name
        with pytest.raises(httpx.HTTPStatusError) as caught:
            await client.infer(base, {"inputs": []}, model_name="other")
        assert caught.value.response.status_code == 404
        assert caught.value.response.json() == {
            "error": f"model 'other' is not served here; this server serves '{name}'"
        }
    finally:
        await client.close()


# -- the text tasks --------------------------------------------------------------------------------


async def test_classify_and_rerank_outputs_match_the_native_routes(
    start_server: StartServer, tiny_classify_dir: Path, tiny_rerank_dir: Path
) -> None:
    texts = ["a first text", "and a second one"]
    classify = await start_server(tiny_classify_dir)
    async with classify.tcp.post("/v1/predict", json={"inputs": texts}) as r:
        native = (await r.json())["results"]
    labels = list(classify.service.served.engine.card.labels)
    text = {"name": "text", "datatype": "BYTES", "shape": [2], "data": texts}
    status, body, _ = await post(classify, "/v2/models/default/infer", {"inputs": [text]})
    assert status == 200, body
    (output,) = body["outputs"]
    assert output["name"] == "probabilities" and output["shape"] == [2, len(labels)]
    expected = [[item["scores"][label] for label in labels] for item in native]
    np.testing.assert_allclose(np.reshape(output["data"], (2, -1)), expected, rtol=1e-6)

    rerank = await start_server(tiny_rerank_dir)
    async with rerank.tcp.post("/v1/rerank", json={"query": "q?", "documents": texts}) as r:
        by_index = {x["index"]: x["relevance_score"] for x in (await r.json())["results"]}
    query = {"name": "query", "datatype": "BYTES", "shape": [1], "data": ["q?"]}
    status, body, _ = await post(rerank, "/v2/models/default/infer", {"inputs": [query, text]})
    assert status == 200, body
    (output,) = body["outputs"]
    assert output["name"] == "scores" and output["shape"] == [2]
    np.testing.assert_allclose(output["data"], [by_index[0], by_index[1]], rtol=1e-6)
    async with rerank.tcp.get("/v2/models/default") as r:
        assert [i["name"] for i in (await r.json())["inputs"]] == ["query", "text"]


async def test_an_onnx_text_model_serves_the_same_outputs(
    start_server: StartServer, tiny_embed_onnx_dir: Path
) -> None:
    s = await start_server(tiny_embed_onnx_dir)
    texts = ["an onnx graph beside its tokenizer", "short"]
    async with s.tcp.post("/v1/predict", json={"inputs": texts}) as r:
        expected = [item["embedding"] for item in (await r.json())["results"]]
    async with s.uds.get("/v2/models/default") as r:
        metadata = await r.json()
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    text = {"name": "text", "datatype": "BYTES", "shape": [2, 1], "data": [[t] for t in texts]}
    status, body, _ = await post(s, "/v2/models/default/infer", {"inputs": [text]})
    assert status == 200, body
    (output,) = body["outputs"]
    np.testing.assert_allclose(np.reshape(output["data"], output["shape"]), expected, rtol=1e-6)


# -- refusals ---------------------------------------------------------------------------------


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


async def test_refusals_are_400_in_the_protocols_shape(
    start_server: StartServer, mlp_dir: Path
) -> None:
    s = await start_server(mlp_dir)
    path = "/v2/models/default/infer"
    x = np.ones((2, 16), dtype=np.float32)
    bias = {"name": "bias", "datatype": "FP32", "shape": [2, 4], "data": [0.0] * 8}

    def x_binary(size: int, shape: list[int] | None = None) -> dict[str, Any]:
        return {
            "name": "x",
            "datatype": "FP32",
            "shape": shape or [2, 16],
            "parameters": {"binary_data_size": size},
        }

    cases: dict[str, tuple[dict[str, Any], bytes, str]] = {
        "binary_data_size mismatch": (
            {"inputs": [x_binary(100), bias]},
            x.tobytes()[:100],
            "takes 128 bytes",
        ),
        "a shape of 2**60 elements": (
            {"inputs": [x_binary(128, [2**30, 2**30]), bias]},
            x.tobytes(),
            "more than the request",
        ),
        "2**60 elements as JSON": (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2**60], "data": [1.0]}, bias]},
            b"",
            "more than the request",
        ),
        "truncated binary data": ({"inputs": [x_binary(128), bias]}, x.tobytes()[:64], "truncated"),
        "wrong datatype": (
            {"inputs": [{**x_binary(256), "datatype": "FP64"}, bias]},
            x.astype(np.float64).tobytes(),
            "has datatype FP64; the model takes FP32",
        ),
        "missing input": ({"inputs": [bias]}, b"", "missing input(s) ['x']"),
        "a name of half a megabyte, quoted by later checks": (
            {"inputs": [{**x_binary(-1), "name": "n" * 500_000}, bias]},
            b"",
            "name is longer than 256 characters",
        ),
        "bytes after the tensors": (
            {"inputs": [x_binary(128), bias]},
            x.tobytes() + b"!",
            "no input declares",
        ),
        "too few elements": (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 16], "data": [1.0]}, bias]},
            b"",
            "has 1 elements",
        ),
        "a string for a number": (
            {
                "inputs": [
                    {"name": "x", "datatype": "FP32", "shape": [1, 16], "data": ["1"] * 16},
                    bias,
                ]
            },
            b"",
            "must be numbers",
        ),
        "FP16 as JSON": (
            {"inputs": [{"name": "x", "datatype": "FP16", "shape": [1], "data": [1.0]}, bias]},
            b"",
            "must be sent as binary",
        ),
        "a wrong fixed size": (
            {
                "inputs": [
                    {"name": "x", "datatype": "FP32", "shape": [2, 8], "data": [1.0] * 16},
                    bias,
                ]
            },
            b"",
            "has shape [2, 8]",
        ),
    }
    Path("/proc/self/clear_refs").write_text("5")
    before = rss_kb()
    for case, (body, binary, message) in cases.items():
        status, answer, response = await post(s, path, body, binary, **{"X-Request-Id": "case-1"})
        assert status == 400, (case, answer)
        assert set(answer) == {"error"} and message in answer["error"], (case, answer)
        assert len(answer["error"]) < 2000, case  # no client value echoed in full
        assert response.headers["X-Request-Id"] == "case-1"
        ok, _, _ = await post(
            s,
            path,
            {
                "inputs": [
                    {"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16},
                    {**bias, "shape": [1, 4], "data": [0.0] * 4},
                ]
            },
        )
        assert ok == 200, case
    assert rss_kb() - before < 64 * 1024  # no tensor of the declared sizes was ever allocated

    async with s.tcp.post(path, data=b"{", headers={HEADER: "99"}) as r:
        assert r.status == 400 and "Inference-Header-Content-Length" in (await r.json())["error"]
    async with s.tcp.get("/v2/models/default/versions/2") as r:
        assert r.status == 404 and "version '2' is not a version" in (await r.json())["error"]
    async with s.tcp.post("/v2/models/nope/infer", json={}) as r:
        assert r.status == 404 and set(await r.json()) == {"error"}
    async with s.tcp.get("/v2/no/such/route") as r:
        assert r.status == 404 and await r.json() == {"error": "no such route"}
    async with s.tcp.get("/v1/nope") as r:  # the native shape elsewhere
        assert (await r.json())["error"]["code"] == "not_found"


async def test_values_outside_their_datatype_are_400(
    start_server: StartServer, dtypes_dir: Path, tiny_embed_dir: Path
) -> None:
    s = await start_server(dtypes_dir)
    name = "/v2/models/default/infer"
    base = {k: np.zeros((1, 3), dtype=DATATYPES[k][0]) for k in DATATYPES}
    x = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0.0] * 4}

    def request(kind: str, tensor: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        inputs, raw = [], b""
        for other, array in base.items():
            spec = {"name": f"in_{other.lower()}", "datatype": other, "shape": [1, 3]}
            if other == kind:
                inputs.append({**spec, **tensor})
            else:
                inputs.append({**spec, "parameters": {"binary_data_size": array.nbytes}})
                raw += array.tobytes()
        return {"inputs": [*inputs, x]}, raw

    cases = {
        "UINT8": ({"data": [0, 256, 0]}, "out of the range of UINT8"),
        "INT64": ({"data": [0, 2**63, 0]}, "out of the range of INT64"),
        "FP32": ({"data": [0, 1e39, 0]}, "out of the range of FP32"),
        "INT32": ({"data": [0, 1.5, 0]}, "must be integers"),
        "BOOL": ({"data": [0, 1, 0]}, "must be booleans"),
    }
    for kind, (tensor, message) in cases.items():
        body, raw = request(kind, tensor)
        status, answer, _ = await post(s, name, body, raw)
        assert status == 400 and message in answer["error"], (kind, answer)
    # binary BOOL bytes other than 0 or 1; the binary part ordered as the inputs are
    body, raw = request("BOOL", {"parameters": {"binary_data_size": 3}})
    status, answer, _ = await post(s, name, body, b"\x00\x02\x01" + raw)
    assert status == 400 and "0 or 1" in answer["error"], answer

    text = await start_server(tiny_embed_dir)
    elements = struct.pack("<I", 2) + b"hi" + struct.pack("<I", 9) + b"short"
    tensor = {"name": "text", "datatype": "BYTES", "shape": [2]}
    for size, binary, message in (
        (len(elements), elements, "element 1 declares 9 bytes"),
        (3, b"\x02\x00\x00", "ends inside element 0"),
        (5, struct.pack("<I", 1) + b"\xff", "UTF-8"),
    ):
        shape = [1] if message == "UTF-8" else [2]
        body = {"inputs": [{**tensor, "shape": shape, "parameters": {"binary_data_size": size}}]}
        status, answer, _ = await post(text, name, body, binary)
        assert status == 400 and message in answer["error"], answer
    body = {"inputs": [{**tensor, "data": ["a", "b"]}], "outputs": [{"name": "nope"}]}
    status, answer, _ = await post(text, name, body)
    assert status == 400 and "'nope' is unknown" in answer["error"]


async def test_body_limit_not_ready_draining_and_the_token(
    start_server: StartServer, mlp_dir: Path
) -> None:
    s = await start_server(
        mlp_dir, auth_token="secret", SIDECAR_MAX_BODY_BYTES="4096", SIDECAR_MAX_CLIENT_BATCH="4"
    )
    auth = {"Authorization": "Bearer secret"}
    async with s.tcp.get("/v2/health/ready") as r:
        assert r.status == 401 and set(await r.json()) == {"error"}
        assert r.headers["WWW-Authenticate"] == "Bearer"
    async with s.tcp.get("/readyz") as r:
        assert r.status == 200  # the kubelet's probes stay open
    x = {"name": "x", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}
    bias = {"name": "bias", "datatype": "FP32", "shape": [1, 4], "data": [0.0] * 4}
    body = orjson.dumps({"inputs": [x, bias], "id": "!" * 5000})
    async with s.tcp.post("/v2/models/default/infer", data=body, headers=auth) as r:
        assert r.status == 413 and "at most 4096" in (await r.json())["error"]
    rows = {**x, "shape": [5, 16], "data": [0.5] * 80}
    body = orjson.dumps({"inputs": [rows, {**bias, "shape": [5, 4], "data": [0.0] * 20}]})
    async with s.tcp.post("/v2/models/default/infer", data=body, headers=auth) as r:
        assert r.status == 413 and "at most 4 are allowed" in (await r.json())["error"]
    body = orjson.dumps({"inputs": [x, bias]})
    async with s.tcp.post("/v2/models/default/infer", data=body, headers=auth) as r:
        assert r.status == 200

    loading = await start_server(mlp_dir, load=False)
    for route in ("/v2/health/ready", "/v2/models/default/ready", "/v2/models/default"):
        async with loading.tcp.get(route) as r:
            assert r.status == 503 and "Retry-After" in r.headers, route
            assert await r.json() == {"error": "the model is loading"}
    async with loading.tcp.get("/v2/health/live") as r:
        assert r.status == 200 and await r.json() == {"live": True}

    ready = await start_server(mlp_dir)
    await ready.service.drain()
    async with ready.tcp.post("/v2/models/default/infer", json={"inputs": [x, bias]}) as r:
        assert r.status == 503 and await r.json() == {"error": "the server is draining"}
    async with ready.tcp.get("/v2/models/default/ready") as r:
        assert r.status == 503


# -- a generic graph under load ---------------------------------------------------------------


def batch_sizes(metrics: str) -> dict[str, float]:
    counts = {}
    for line in metrics.splitlines():
        if line.startswith("sidecar_batch_size_bucket"):
            le = line.split('le="')[1].split('"')[0]
            counts[le] = float(line.rsplit(" ", 1)[1])
    return counts


async def test_an_onnx_mlp_under_concurrent_load(start_server: StartServer, mlp_dir: Path) -> None:
    s = await start_server(mlp_dir, SIDECAR_BATCH_WINDOW_MS="20")
    session = ort.InferenceSession(str(mlp_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    requests = []
    for rows in rng.integers(1, 4, size=48):
        requests.append(
            (
                rng.standard_normal((rows, 16), dtype=np.float32),
                rng.standard_normal((rows, 4), dtype=np.float32),
            )
        )

    async def one(x: np.ndarray, bias: np.ndarray, binary: bool) -> tuple[np.ndarray, np.ndarray]:
        inputs = [
            {"name": "x", "datatype": "FP32", "shape": list(x.shape)},
            {"name": "bias", "datatype": "FP32", "shape": list(bias.shape)},
        ]
        raw = b""
        if binary:
            for tensor, array in zip(inputs, (x, bias), strict=True):
                tensor["parameters"] = {"binary_data_size": array.nbytes}
            raw = x.tobytes() + bias.tobytes()
        else:
            inputs[0]["data"], inputs[1]["data"] = x.tolist(), bias.ravel().tolist()
        head = orjson.dumps({"inputs": inputs, "parameters": {"binary_data_output": binary}})
        headers = {HEADER: str(len(head))} if binary else {}
        session_ = s.uds if binary else s.tcp
        async with session_.post("/v2/models/default/infer", data=head + raw, headers=headers) as r:
            assert r.status == 200
            answer = await r.read()
            length = int(r.headers.get(HEADER, len(answer)))
        body = orjson.loads(answer[:length])
        out = {}
        offset = length
        for output in body["outputs"]:
            if binary:
                size = output["parameters"]["binary_data_size"]
                data = np.frombuffer(answer[offset : offset + size], dtype=np.float32)
                offset += size
            else:
                data = np.array(output["data"], dtype=np.float32)
            out[output["name"]] = data.reshape(output["shape"])
        return out["y"], out["norm"]

    async with s.tcp.get("/metrics") as r:
        before = batch_sizes(await r.text())
    results = await asyncio.gather(
        *(one(x, bias, i % 2 == 0) for i, (x, bias) in enumerate(requests))
    )
    for (x, bias), (y, norm) in zip(requests, results, strict=True):
        want_y, want_norm = session.run(None, {"x": x, "bias": bias})
        np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(norm, want_norm, rtol=1e-5, atol=1e-6)
    async with s.tcp.get("/metrics") as r:
        after = batch_sizes(await r.text())
    single = after["1.0"] - before.get("1.0", 0)
    total = after["+Inf"] - before.get("+Inf", 0)
    assert total > single, "no batch held more than one item"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)  # what JSON (orjson) holds
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=24,
)
names = st.sampled_from(["x", "text", "y", "other"])
tensors = st.fixed_dictionaries(
    {"name": names, "datatype": st.sampled_from([*oip_tensors.DATATYPES, "FP8"]) | json_values},
    optional={
        "shape": st.lists(st.integers(-1, 2**64 - 1), max_size=3) | json_values,
        "data": json_values,
        "parameters": st.fixed_dictionaries({"binary_data_size": st.integers(-1, 40)})
        | json_values,
    },
)
requests = st.fixed_dictionaries(
    {},
    optional={
        "inputs": st.lists(tensors, max_size=3) | json_values,
        "outputs": st.lists(st.fixed_dictionaries({"name": names}), max_size=2) | json_values,
        "parameters": st.fixed_dictionaries({"binary_data_output": json_values}) | json_values,
        "id": json_values,
    },
)


@settings(max_examples=200, deadline=None)
@given(requests, st.binary(max_size=40))
def test_any_request_is_parsed_or_refused_with_a_400(request: Any, binary: bytes) -> None:
    signature = Signature(
        (("x", "FP32", (-1, 2)), ("text", "BYTES", (-1,))),
        (("y", "FP16", (-1, 2)),),
    )
    header = orjson.dumps(request)
    with contextlib.suppress(InvalidInputError):  # anything else fails the test
        InferRequest.parse(
            header, memoryview(binary), signature, max_bytes=len(header) + 40, max_items=8
        )


def test_bytes_elements_are_length_prefixed() -> None:
    """BYTES elements on the wire: a 4-byte little-endian length, then the bytes."""
    from sidecar.api.oip_tensors import Tensor, decode

    raw = struct.pack("<I", 2) + b"hi" + struct.pack("<I", 0)
    tensor = Tensor("text", "BYTES", (2,), 2, None, len(raw))
    assert decode([tensor], memoryview(raw))["text"].tolist() == [b"hi", b""]
