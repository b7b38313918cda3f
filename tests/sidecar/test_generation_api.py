"""Generation over a real server: OpenAI's completions and chat routes, streamed and not, with the
official `openai` client over TCP and the Unix socket (acceptance 2), stop strings spanning
tokens and a client that goes away (acceptance 3), seeded sampling whatever the batch
(acceptance 4), and the status codes of bad input."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.decoder_snapshots import make_decoder_snapshot
from tests.sidecar.conftest import Running, StartServer
from tests.sidecar.test_accounting import count, metrics_of
from tests.sidecar.test_event_loop import slow_steps  # noqa: F401 - a fixture

GEN_ENV = {"SIDECAR_GEN_MAX_MODEL_LEN": "128", "SIDECAR_GEN_MAX_SEQS": "8"}
MESSAGES = [
    {"role": "system", "content": "You rewrite queries."},
    {"role": "user", "content": "Where is the café in Zürich?"},
]
PROMPTS = [
    "The sidecar serves",
    "Stop strings such as",
    "Prompts are split into chunks so that a long prompt does not stall the tokens",
    "東京",
    "When the queue is full",
]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_decoder_snapshot(tmp_path_factory.mktemp("gen-llama"), model_type="llama")


def transformers_text(directory: Path, prompt: list[int], new_tokens: int) -> str:
    """transformers' greedy continuation of `prompt`, decoded as the server decodes it."""
    import torch
    import transformers
    from tokenizers import Tokenizer

    model: Any = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False
        )
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    return str(tokenizer.decode(out[0, len(prompt) :].tolist(), skip_special_tokens=True))


def clients(s: Running) -> dict[str, openai.AsyncOpenAI]:
    port = s.server.addresses["tcp"][1]
    uds = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=s.socket_path))
    return {
        "tcp": openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none"),
        "uds": openai.AsyncOpenAI(base_url="http://localhost/v1", api_key="none", http_client=uds),
    }


async def sse(s: Running, path: str, body: dict[str, Any]) -> list[str]:
    """The `data:` payloads of a streamed response, in order."""
    async with s.tcp.post(path, json=body) as r:
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"].startswith("text/event-stream")
        text = await r.text()
    events = [block for block in text.split("\n\n") if block]
    assert all(block.startswith("data: ") for block in events)
    return [block.removeprefix("data: ") for block in events]


async def test_openai_client_streamed_chat_equals_the_whole_answer_over_tcp_and_uds(
    start_server: StartServer, llama_dir: Path
) -> None:
    s = await start_server(llama_dir, **GEN_ENV)
    for name, client in clients(s).items():
        whole = await client.chat.completions.create(
            model="default",
            messages=MESSAGES,
            max_tokens=24,
            temperature=0,  # type: ignore[arg-type]
        )
        choice = whole.choices[0]
        assert whole.object == "chat.completion" and choice.message.role == "assistant"
        chunks = [
            chunk
            async for chunk in await client.chat.completions.create(
                model="default",
                messages=MESSAGES,  # type: ignore[arg-type]
                max_tokens=24,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        ]
        assert chunks[0].choices[0].delta.role == "assistant", name
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert content == choice.message.content and content, name
        reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert reasons[-1] == choice.finish_reason and set(reasons[:-1]) == {None}
        assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage, name
        assert all(c.usage is None for c in chunks[:-1])
        usage = whole.usage
        assert (
            usage is not None
            and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
        )
        if choice.finish_reason == "length":
            assert usage.completion_tokens == 24
        await client.close()
    # The prompt tokens: the template's text, its BOS once (not added again by the tokenizer).
    served = s.service.served
    prompt = served.generation.model.encode_chat(MESSAGES)
    assert usage.prompt_tokens == len(prompt)
    bos = served.generation.model.tokenizer.token_to_id("<|bos|>")
    assert prompt[0] == bos and prompt.count(bos) == 1
    # On the wire: the role delta first, [DONE] last, chunks as OpenAI sends them.
    body = {"messages": MESSAGES, "max_tokens": 5, "temperature": 0, "stream": True}
    body["stream_options"] = {"include_usage": True}
    payloads = await sse(s, "/v1/chat/completions", body)
    assert payloads[-1] == "[DONE]"
    first, *middle, usage_chunk = (json.loads(p) for p in payloads[:-1])
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert middle[-1]["choices"][0]["delta"] == {} and middle[-1]["choices"][0]["finish_reason"]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] <= 5


async def test_completions_streamed_and_not_and_the_model_list(
    start_server: StartServer, llama_dir: Path
) -> None:
    s = await start_server(llama_dir, **GEN_ENV)
    client = clients(s)["tcp"]
    whole = await client.completions.create(
        model="default", prompt=PROMPTS[0], max_tokens=16, temperature=0
    )
    assert whole.object == "text_completion" and whole.usage is not None
    streamed = [
        c
        async for c in await client.completions.create(
            model="default", prompt=PROMPTS[0], max_tokens=16, temperature=0, stream=True
        )
    ]
    assert "".join(c.choices[0].text for c in streamed) == whole.choices[0].text
    assert streamed[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    models = await client.models.list()
    assert [m.id for m in models.data] == [s.service.served.name]
    async with s.tcp.get("/v1/models/default") as r:
        card = await r.json()
    assert card["task"] == "generate" and card["context_length"] == 128
    async with s.tcp.get("/v1/models") as r:
        assert (await r.json())["data"][0]["context_length"] == 128
    await client.close()


async def test_greedy_answers_are_the_same_alone_and_in_a_crowd(
    start_server: StartServer, llama_dir: Path
) -> None:
    s = await start_server(llama_dir, **GEN_ENV, SIDECAR_GEN_MAX_BATCH_TOKENS="16")
    client = clients(s)["tcp"]

    async def complete(prompt: str, **extra: Any) -> str:
        r = await client.completions.create(model="default", prompt=prompt, max_tokens=20, **extra)
        return r.choices[0].text

    alone = [await complete(p, temperature=0) for p in PROMPTS]
    # Together: they join while others decode, long prompts prefilled in chunks of the budget.
    together = await asyncio.gather(*(complete(p, temperature=0) for p in PROMPTS))
    assert list(together) == alone
    # And what transformers' generate says (stopping at the EOS of generation_config.json),
    # but for a character the last token left incomplete: never emitted, where transformers'
    # decoding shows U+FFFD (random weights pick bytes that are no UTF-8 at all, too: those
    # both show).
    decoder = s.service.served.generation.model
    expected = [transformers_text(llama_dir, decoder.encode(p), 20) for p in PROMPTS]
    assert alone == [text.rstrip("\ufffd") for text in expected]
    # Acceptance 4: a seeded request samples the same tokens whatever else runs beside it.
    seeded = {"temperature": 1.0, "top_p": 0.9, "seed": 1234}
    first = await complete(PROMPTS[2], **seeded)
    crowd = [complete(p, temperature=1.0, seed=i) for i, p in enumerate(PROMPTS * 2)]
    results = await asyncio.gather(complete(PROMPTS[2], **seeded), *crowd)
    assert results[0] == first
    other_seed = await complete(PROMPTS[2], temperature=1.0, top_p=0.9, seed=99)
    unseeded = {await complete(PROMPTS[2], temperature=1.0) for _ in range(3)}
    assert other_seed != first or len(unseeded) > 1  # the seed matters
    await client.close()


async def test_a_stop_string_spanning_two_tokens_never_reaches_the_stream(
    start_server: StartServer, llama_dir: Path
) -> None:
    s = await start_server(llama_dir, **GEN_ENV)
    body: dict[str, Any] = {"prompt": PROMPTS[0], "max_tokens": 40, "temperature": 0}
    pieces = [
        json.loads(p)["choices"][0]["text"]
        for p in (await sse(s, "/v1/completions", body | {"stream": True}))[:-1]
    ]
    full = "".join(pieces)
    # A stop made of the end of one token's text and the start of the next one's.
    at = next(i for i in range(3, len(pieces) - 1) if pieces[i] and pieces[i + 1])
    stop = pieces[at][-2:] + pieces[at + 1][:2]
    expected = full[: full.find(stop)]
    payloads = await sse(s, "/v1/completions", body | {"stream": True, "stop": [stop, "zzzz"]})
    chunks = [json.loads(p) for p in payloads[:-1]]
    streamed = "".join(c["choices"][0]["text"] for c in chunks)
    assert streamed == expected and stop not in streamed
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    async with s.tcp.post("/v1/completions", json=body | {"stop": stop}) as r:
        assert (await r.json())["choices"][0]["text"] == expected


async def test_a_client_that_leaves_after_three_chunks_frees_its_slot(
    start_server: StartServer, llama_dir: Path
) -> None:
    s = await start_server(llama_dir, SIDECAR_GEN_MAX_MODEL_LEN="128", SIDECAR_GEN_MAX_SEQS="1")
    port = s.server.addresses["tcp"][1]
    body = {"prompt": PROMPTS[0], "max_tokens": 100, "temperature": 0, "stream": True}
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    payload = json.dumps(body).encode()
    writer.write(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    await writer.drain()
    received = b""
    while received.count(b"data: ") < 3:
        received += await reader.read(1024)
    writer.close()
    generation = s.service.served.generation
    async with asyncio.timeout(10):
        while generation.scheduler.running:  # noqa: ASYNC110 - the slot frees within a step
            await asyncio.sleep(0.01)
    values = await metrics_of(s)
    assert count(values, "sidecar_gen_aborted_total", reason="disconnect") == 1
    assert count(values, "sidecar_gen_running_sequences") == 0
    # The one slot serves the next request at once.
    async with s.tcp.post("/v1/completions", json=body | {"stream": False, "max_tokens": 3}) as r:
        assert r.status == 200 and (await r.json())["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"prompt": "word " * 200}, 400, ["128", "prompt has"]),
        ({"prompt": PROMPTS[0], "max_tokens": 500}, 400, ["128", "max_tokens is 500"]),
        ({"prompt": PROMPTS[0], "logit_bias": {"1": 2}}, 400, ["logit_bias"]),
        ({"prompt": PROMPTS[0], "n": 2}, 400, ["'n'"]),
        ({"prompt": PROMPTS[0], "temperature": 3}, 400, ["temperature"]),
        ({"prompt": [PROMPTS[0], PROMPTS[1]]}, 400, ["one prompt"]),
        ({"prompt": [1, 2, 10**6]}, 400, ["vocabulary"]),
        ({"prompt": PROMPTS[0], "model": "other"}, 404, ["other"]),
        ({"messages": [{"role": "robot", "content": "hi"}]}, 400, ["unknown role"]),
    ],
)
async def test_bad_input_gets_openai_errors(
    start_server: StartServer, llama_dir: Path, body: dict[str, Any], status: int, words: list[str]
) -> None:
    s = await start_server(llama_dir, **GEN_ENV)
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    async with s.tcp.post(path, json=body) as r:
        error = (await r.json())["error"]
        assert r.status == status, error
    assert error["type"] and "param" in error and error["code"]
    assert all(word in error["message"] for word in words), error["message"]


async def test_a_full_waiting_queue_answers_429_with_retry_after(
    start_server: StartServer, llama_dir: Path
) -> None:
    s = await start_server(
        llama_dir, SIDECAR_GEN_MAX_MODEL_LEN="128", SIDECAR_GEN_MAX_SEQS="1", SIDECAR_QUEUE_MAX="1"
    )
    body = {"prompt": PROMPTS[0], "max_tokens": 100, "temperature": 0, "stream": True}
    running = await s.tcp.post("/v1/completions", json=body)
    await running.content.readline()  # it holds the slot
    waiting = asyncio.ensure_future(s.tcp.post("/v1/completions", json=body | {"max_tokens": 2}))
    generation = s.service.served.generation
    async with asyncio.timeout(10):
        while not generation.scheduler.waiting:  # noqa: ASYNC110
            await asyncio.sleep(0.005)
    assert count(await metrics_of(s), "sidecar_queue_depth") == 1
    async with s.tcp.post("/v1/completions", json=body) as r:
        assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
        assert (await r.json())["error"]["code"] == "queue_full"
    assert count(await metrics_of(s), "sidecar_rejected_total", reason="queue_full") == 1
    running.close()
    async with await waiting as r:
        assert r.status == 200


async def test_a_decoder_refuses_the_other_tasks_routes(
    start_server: StartServer, llama_dir: Path
) -> None:
    s = await start_server(llama_dir, **GEN_ENV)
    async with s.tcp.post("/v1/embeddings", json={"input": "hi"}) as r:
        assert r.status == 400 and (await r.json())["error"]["code"] == "unsupported_task"


async def test_a_failure_mid_stream_ends_it_with_an_error_event(
    start_server: StartServer, llama_dir: Path
) -> None:
    s = await start_server(llama_dir, **GEN_ENV, SIDECAR_DRAIN_TIMEOUT_S="0")
    body = {"prompt": PROMPTS[0], "max_tokens": 110, "temperature": 0, "stream": True}
    async with s.tcp.post("/v1/completions", json=body) as r:
        assert r.status == 200
        first = await r.content.readline()
        assert first.startswith(b"data: {")
        await s.service.drain()  # the engine stops under the running stream
        rest = (await r.read()).decode()
    payloads = [line.removeprefix("data: ") for line in rest.splitlines() if line]
    assert payloads[-1] == "[DONE]"
    error = json.loads(payloads[-2])["error"]
    assert error["code"] == "draining" and error["message"]


async def test_generation_never_blocks_the_event_loop(
    start_server: StartServer,
    llama_dir: Path,
    slow_steps: list[str],  # noqa: F811 - the fixture imported above
) -> None:
    s = await start_server(llama_dir, **GEN_ENV, SIDECAR_WARMUP="true")
    long_chat = [{"role": "user", "content": "Where is the café in Zürich? " * 3}]
    slow_steps.clear()
    bodies = [
        ("/v1/chat/completions", {"messages": long_chat, "max_tokens": 30, "stream": True}),
        *(("/v1/completions", {"prompt": p, "max_tokens": 40, "stream": True}) for p in PROMPTS),
    ]
    for response in await asyncio.gather(*(s.tcp.post(path, json=b) for path, b in bodies)):
        assert response.status == 200
        assert (await response.text()).endswith("data: [DONE]\n\n")
    assert slow_steps == []


async def test_gpt2_completes_and_a_model_without_a_chat_template_refuses_chat(
    start_server: StartServer, tmp_path: Path
) -> None:
    directory = make_decoder_snapshot(tmp_path / "gpt2", model_type="gpt2", template=False)
    s = await start_server(directory, **GEN_ENV)
    body = {"prompt": PROMPTS[1], "max_tokens": 6, "temperature": 0}
    async with s.uds.post("/v1/completions", json=body) as r:
        assert r.status == 200
        answer = await r.json()
    assert answer["usage"]["completion_tokens"] <= 6 and answer["choices"][0]["finish_reason"]
    async with s.uds.post("/v1/chat/completions", json={"messages": MESSAGES}) as r:
        assert r.status == 400 and "no chat template" in (await r.json())["error"]["message"]
