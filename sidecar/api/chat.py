"""OpenAI-compatible generation: `POST /v1/completions` and `POST /v1/chat/completions`.

Non-streamed, the answer is OpenAI's `text_completion` or `chat.completion` object. Streamed
(`stream: true`), it is server-sent events as OpenAI sends them: `data: <chunk>` per event, the
chat stream opening with a role delta, content deltas, a last chunk with an empty delta and the
`finish_reason` (`stop` or `length`), a usage chunk with no choices when
`stream_options.include_usage` is set (`usage: null` on the others), then `data: [DONE]`.
An error after the stream started ends it with an `error` event, then `[DONE]`. A client that
goes away cancels its sequence: its KV slot serves the next step.

Errors before a stream starts have OpenAI's shape (`error_body`: message, type, param, code).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from sidecar.api import wire
from sidecar.api.completion_types import CHAT, COMPLETIONS, GenerationRequest
from sidecar.api.keys import ERROR_REPLY, SERVICE
from sidecar.api.openapi import operation
from sidecar.api.schema import JsonSchema, Limits
from sidecar.errors import UnsupportedTaskError
from sidecar.models.generation import Delta, Event, Finished

if TYPE_CHECKING:
    from sidecar.serving.generation import GenerationStream

PATHS = ("/v1/completions", "/v1/chat/completions")
_ERROR_TYPES = {
    "queue_full": "rate_limit_error",
    "not_ready": "server_error",
    "draining": "server_error",
    "device_failed": "server_error",
    "internal_error": "server_error",
    "generation_failed": "server_error",
    "deadline_exceeded": "timeout_error",
    "model_not_found": "not_found_error",
    "unauthorized": "authentication_error",
}
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
# (text, finish_reason) -> the choice of one chunk
Choice = Callable[[str | None, str | None], dict[str, Any]]


def error_body(code: str, message: str, request_id: str) -> dict[str, Any]:
    """OpenAI's error shape, with our code and the request id."""
    kind = _ERROR_TYPES.get(code, "invalid_request_error")
    return {
        "error": {
            "message": message,
            "type": kind,
            "param": None,
            "code": code,
            "request_id": request_id,
        }
    }


def routes() -> list[web.RouteDef]:
    return [web.post(PATHS[0], completions), web.post(PATHS[1], chat_completions)]


def openapi_paths(limits: Limits) -> dict[str, dict[str, Any]]:
    events = {"text/event-stream": {"schema": {"type": "string"}}}
    ok = {"application/json": {"schema": {"type": "object"}}} | events
    return {
        path: {
            "post": operation(
                summary,
                limits=limits,
                body=body,
                ok=ok,
                errors=[404, 429, 504],
                tag="openai",
                error=_ERROR,
            )
        }
        for path, summary, body in (
            (PATHS[0], "OpenAI-compatible completions (streamed or not)", COMPLETIONS),
            (PATHS[1], "OpenAI-compatible chat completions (streamed or not)", CHAT),
        )
    }


@wire.inference
async def completions(request: web.Request) -> web.StreamResponse:
    """`POST /v1/completions`."""
    return await _generate(request, chat=False)


@wire.inference
async def chat_completions(request: web.Request) -> web.StreamResponse:
    """`POST /v1/chat/completions`."""
    return await _generate(request, chat=True)


async def _generate(request: web.Request, *, chat: bool) -> web.StreamResponse:
    service = request.app[SERVICE]
    data = await wire.read_json(request)
    parsed = GenerationRequest.parse(data, chat=chat, limits=Limits.of(service.settings))
    served = wire.model_for(request, parsed.model, "generate")
    engine = served.generation
    if engine is None:
        raise UnsupportedTaskError(f"model '{served.name}' does not generate")
    if parsed.messages is not None:
        prompt = await engine.encode_chat(parsed.messages)
    elif isinstance(parsed.prompt, str):
        prompt = await engine.encode(parsed.prompt)
    else:
        prompt = list(parsed.prompt or [])
    params = parsed.sampling(room=engine.max_model_len - len(prompt))
    stream = engine.generate(prompt, params, deadline=wire.deadline(request))
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    head = {
        "id": ident,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": int(time.time()),
        "model": served.name,
        "model_version": served.version,  # as every inference body (DESIGN section 12)
    }
    try:
        if parsed.stream:
            return await _stream(request, stream, head, chat=chat, usage=parsed.include_usage)
        return await _whole(stream, head, chat=chat)
    finally:
        stream.cancel("disconnect")  # a no-op once finished


async def _whole(stream: AsyncIterable[Event], head: dict[str, Any], *, chat: bool) -> web.Response:
    texts: list[str] = []
    finished = Finished("stop", 0, 0)
    async for event in stream:
        if isinstance(event, Delta):
            texts.append(event.text)
        else:
            finished = event
    text = "".join(texts)
    choice: dict[str, Any] = (
        {"index": 0, "message": {"role": "assistant", "content": text}}
        if chat
        else {"index": 0, "text": text}
    )
    choice |= {"logprobs": None, "finish_reason": finished.reason}
    return wire.json_response(
        head
        | {"object": "chat.completion" if chat else "text_completion", "choices": [choice]}
        | {"usage": _usage(finished)}
    )


async def _stream(
    request: web.Request, stream: GenerationStream, head: dict[str, Any], *, chat: bool, usage: bool
) -> web.StreamResponse:
    response = web.StreamResponse(headers=_SSE_HEADERS)
    await response.prepare(request)
    extra = {"usage": None} if usage else {}

    def chunk(text: str | None, reason: str | None, delta: dict[str, Any] | None = None) -> bytes:
        if chat:
            choice: dict[str, Any] = {"index": 0, "delta": delta if delta is not None else {}}
            if text is not None:
                choice["delta"] = {"content": text}
        else:
            choice = {"index": 0, "text": text or ""}
        choice |= {"logprobs": None, "finish_reason": reason}
        return _event(head | {"choices": [choice]} | extra)

    try:
        if chat:
            await response.write(chunk(None, None, {"role": "assistant", "content": ""}))
        try:
            async for event in stream:
                if isinstance(event, Delta):
                    if event.text:
                        await response.write(chunk(event.text, None))
                else:
                    await response.write(chunk(None, event.reason))
                    if usage:
                        await response.write(_event(head | {"choices": [], "usage": _usage(event)}))
        except (ConnectionResetError, OSError):
            raise
        except Exception as exc:
            status, code, message = request.app[ERROR_REPLY](exc)
            error = error_body(code, message, "")["error"] | {"status": status}
            await response.write(_event({"error": error}))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    except (ConnectionResetError, OSError):
        stream.cancel("disconnect")
    return response


_ERROR: JsonSchema = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": "string"},
                "request_id": {"type": "string"},
            },
            "required": ["message", "type", "param", "code", "request_id"],
        }
    },
    "required": ["error"],
}


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _usage(finished: Finished) -> dict[str, int]:
    return {
        "prompt_tokens": finished.prompt_tokens,
        "completion_tokens": finished.completion_tokens,
        "total_tokens": finished.prompt_tokens + finished.completion_tokens,
    }
