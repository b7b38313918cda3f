"""The served demo model matches sentence-transformers, on the torch backend and as its ONNX copy;
the official OpenAI client works as is."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import numpy as np
import openai
import pytest

from tests.sidecar.conftest import DEMO_DIR, StartServer

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "serving",
    "embeddings",
    "from",
    "a",
    "sidecar",
    "container",
    "kubernetes",
    "pods",
    "share",
    "memory",
    "volumes",
    "sockets",
    "latency",
    "throughput",
    "tokenizer",
    "transformer",
    "naïve",
    "café",
    "résumé",
    "東京",
    "données",
    "42",
    "3.14",
    "#hashtag",
    "@user",
    "e-mail",
    "co-operate",
    "don't",
    "isn't",
]


def sentences(count: int = 210) -> list[str]:
    rng = random.Random(20261121)
    out = ["", "a", "Hello!", "?!?"]
    while len(out) < count:
        length = rng.choice([1, 2, 5, 10, 20, 40, 80, 160, 260, 400])
        words = [rng.choice(WORDS) for _ in range(length)]
        if rng.random() < 0.3:
            words.insert(rng.randrange(len(words) + 1), str(rng.randint(0, 10**6)))
        out.append(" ".join(words) + rng.choice([".", "", "!", " ?"]))
    return out


@pytest.fixture(scope="module")
def reference() -> tuple[list[str], np.ndarray, list[int]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(DEMO_DIR), device="cpu")
    texts = sentences()
    expected = model.encode(texts, batch_size=32, convert_to_numpy=True)
    lengths = [len(ids) for ids in model.tokenizer(texts, truncation=False)["input_ids"]]
    return texts, expected, lengths


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


@pytest.fixture(params=["torch", "onnx"])
def demo_source(request: pytest.FixtureRequest) -> Path | None:
    """The bundled demo model (None), or its ONNX copy."""
    return None if request.param == "torch" else request.getfixturevalue("demo_onnx_dir")


async def test_predict_and_openai_routes_match_sentence_transformers(
    start_server: StartServer, reference, demo_source: Path | None
) -> None:
    texts, expected, lengths = reference
    assert min(lengths) <= 3 and max(lengths) > 300  # 1 to 300+ tokens, truncation at work
    s = await start_server(demo_source)
    got_predict, got_openai = [], []
    for start in range(0, len(texts), 50):
        chunk = texts[start : start + 50]
        body = {"inputs": chunk, "parameters": {"truncate": True}}
        async with s.tcp.post("/v1/predict", json=body) as r:
            assert r.status == 200
            got_predict += [res["embedding"] for res in (await r.json())["results"]]
        async with s.uds.post("/v1/embeddings", json={"input": chunk, "truncate": True}) as r:
            assert r.status == 200, await r.text()
            got_openai += [d["embedding"] for d in (await r.json())["data"]]
    for got in (np.array(got_predict), np.array(got_openai)):
        similarity = cosines(got, expected)
        worst = int(np.argmin(similarity))
        assert similarity.min() >= 0.9999, (worst, lengths[worst], similarity[worst])


async def test_official_openai_client(start_server: StartServer, reference) -> None:
    texts, expected, _ = reference
    s = await start_server(None, SIDECAR_MODEL_NAME="minilm")
    client = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{s.server.settings.port}/v1", api_key="unused", max_retries=0
    )
    try:
        # The client asks for base64 by default and decodes it itself.
        response = await client.embeddings.create(
            model="minilm", input=texts[:8], extra_body={"truncate": True}
        )
        floats = await client.embeddings.create(
            model="default", input=texts[8], encoding_format="float", extra_body={"truncate": True}
        )
        with pytest.raises(openai.BadRequestError, match="tokens"):
            await client.embeddings.create(model="minilm", input=texts[4])  # 473 tokens
        with pytest.raises(openai.NotFoundError):
            await client.embeddings.create(model="text-embedding-3-small", input="x")
    finally:
        await client.close()
    got = np.array([d.embedding for d in response.data])
    assert response.model == "minilm" and response.usage.prompt_tokens > 0
    assert cosines(got, expected[:8]).min() >= 0.9999
    assert cosines(np.array([floats.data[0].embedding]), expected[8:9]).min() >= 0.9999
