"""The request bodies of OpenAI's completions and chat completions, checked and parsed.

Accepted as OpenAI documents them: `model`, `max_tokens` (chat also `max_completion_tokens`),
`temperature`, `top_p`, `seed`, `stop` (a string or up to 16), `stream`,
`stream_options.include_usage`, `n` (1 only), `user`; `presence_penalty` and
`frequency_penalty` only at 0, `logprobs` only off. Extensions, as vLLM names them: `top_k`
and `stop_token_ids`. Any other member is refused (400), so that a parameter the server would
ignore never silently changes what the client gets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sidecar.api.schema import Boolean, Field, JsonSchema, Limits, Object, String, Type
from sidecar.errors import InvalidInputError
from sidecar.models.generation import SamplingParams

MAX_STOPS = 16
MAX_STOP_CHARS = 256
MAX_MESSAGES = 4096


class Number(Type):
    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high

    def check(self, value: Any, path: str, limits: Limits) -> Any:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or not self.low <= value <= self.high:
            raise InvalidInputError(f"'{path}' must be a number from {self.low:g} to {self.high:g}")
        return float(value)

    def json_schema(self, limits: Limits) -> JsonSchema:
        return {"type": "number", "minimum": self.low, "maximum": self.high}


class Integer(Type):
    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high

    def check(self, value: Any, path: str, limits: Limits) -> Any:
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or not self.low <= value <= self.high
        ):
            raise InvalidInputError(f"'{path}' must be an integer from {self.low} to {self.high}")
        return value

    def json_schema(self, limits: Limits) -> JsonSchema:
        return {"type": "integer", "minimum": self.low, "maximum": self.high}


class Stop(Type):
    """A stop string or a list of them."""

    def check(self, value: Any, path: str, limits: Limits) -> Any:
        stops = [value] if isinstance(value, str) else value
        if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
            raise InvalidInputError(f"'{path}' must be a non-empty string or a list of them")
        if len(stops) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in stops):
            raise InvalidInputError(
                f"'{path}' takes at most {MAX_STOPS} strings of {MAX_STOP_CHARS} characters"
            )
        return tuple(stops)

    def json_schema(self, limits: Limits) -> JsonSchema:
        string = {"type": "string", "minLength": 1, "maxLength": MAX_STOP_CHARS}
        return {"anyOf": [string, {"type": "array", "items": string, "maxItems": MAX_STOPS}]}


class TokenIds(Type):
    def check(self, value: Any, path: str, limits: Limits) -> Any:
        if not isinstance(value, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 1 << 31 for t in value
        ):
            raise InvalidInputError(f"'{path}' must be a list of token ids")
        return value

    def json_schema(self, limits: Limits) -> JsonSchema:
        return {"type": "array", "items": {"type": "integer", "minimum": 0}}


class Prompt(Type):
    """A completion prompt: a string, a list of one string, or a list of token ids."""

    def check(self, value: Any, path: str, limits: Limits) -> Any:
        if isinstance(value, str):
            return value
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
            return value[0]
        if isinstance(value, list) and value and all(isinstance(t, int) for t in value):
            return TokenIds().check(value, path, limits)
        raise InvalidInputError(
            f"'{path}' must be a string or a list of token ids (one prompt per request)"
        )

    def json_schema(self, limits: Limits) -> JsonSchema:
        return {
            "anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "string"}, "maxItems": 1},
                TokenIds().json_schema(limits),
            ]
        }


class Messages(Type):
    """Chat messages: `role` and `content` (a string, or text parts), optionally `name`."""

    def check(self, value: Any, path: str, limits: Limits) -> Any:
        if not isinstance(value, list) or not value or len(value) > MAX_MESSAGES:
            raise InvalidInputError(f"'{path}' must be a list of 1 to {MAX_MESSAGES} messages")
        return [self._message(m, f"{path}[{i}]") for i, m in enumerate(value)]

    def _message(self, message: Any, path: str) -> dict[str, Any]:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidInputError(f"'{path}' must be an object with a string 'role'")
        unknown = set(message) - {"role", "content", "name"}
        if unknown:
            raise InvalidInputError(f"'{path}' has unsupported members: {sorted(unknown)[:4]}")
        content = message.get("content")
        if isinstance(content, list):
            parts = [
                p.get("text") if isinstance(p, dict) and p.get("type") == "text" else None
                for p in content
            ]
            if not all(isinstance(p, str) for p in parts):
                raise InvalidInputError(f"'{path}.content' parts must be text parts")
            content = "".join(parts)  # type: ignore[arg-type]
        if not isinstance(content, str):
            raise InvalidInputError(f"'{path}.content' must be a string or a list of text parts")
        out = {"role": message["role"], "content": content}
        if isinstance(message.get("name"), str):
            out["name"] = message["name"]
        return out

    def json_schema(self, limits: Limits) -> JsonSchema:
        part = {
            "type": "object",
            "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
        }
        content = {"anyOf": [{"type": "string"}, {"type": "array", "items": part}]}
        message = {
            "type": "object",
            "properties": {
                "role": {"type": "string"},
                "content": content,
                "name": {"type": "string"},
            },
            "required": ["role", "content"],
        }
        return {"type": "array", "items": message, "minItems": 1, "maxItems": MAX_MESSAGES}


_STREAM_OPTIONS = Object({"include_usage": Field(Boolean(), default=False)})
_COMMON = {
    "model": Field(String(), nullable=True, description="the served name or 'default'"),
    "max_tokens": Field(Integer(1, 1 << 20), nullable=True, description="default: the room left"),
    "temperature": Field(Number(0.0, 2.0), nullable=True, default=1.0, description="0: greedy"),
    "top_p": Field(Number(0.0, 1.0), nullable=True, default=1.0),
    "top_k": Field(Integer(-1, 1 << 20), nullable=True, description="extension; -1 or 0: off"),
    "seed": Field(
        Integer(-(1 << 63), (1 << 63) - 1), nullable=True, description="reproducible sampling"
    ),
    "stop": Field(Stop(), nullable=True),
    "stop_token_ids": Field(TokenIds(), nullable=True, description="extension"),
    "stream": Field(Boolean(), default=False),
    "stream_options": Field(_STREAM_OPTIONS, nullable=True),
    "n": Field(Integer(1, 1), nullable=True, default=1, description="1 only"),
    "presence_penalty": Field(Number(0.0, 0.0), nullable=True, description="0 only"),
    "frequency_penalty": Field(Number(0.0, 0.0), nullable=True, description="0 only"),
    "user": Field(String(), nullable=True, description="accepted and ignored"),
}
COMPLETIONS = Object(
    {
        "prompt": Field(Prompt(), required=True),
        **_COMMON,
        "logprobs": Field(Integer(0, 0), nullable=True, description="not supported"),
        "echo": Field(Boolean(), default=False, description="false only"),
    }
)
CHAT = Object(
    {
        "messages": Field(Messages(), required=True),
        **_COMMON,
        "max_completion_tokens": Field(Integer(1, 1 << 20), nullable=True),
        "logprobs": Field(Boolean(), default=False, description="false only"),
    }
)


@dataclass(frozen=True)
class GenerationRequest:
    """A parsed completions or chat body: what to generate from, how, and how to answer."""

    model: str | None
    prompt: str | list[int] | None  # completions
    messages: list[dict[str, Any]] | None  # chat
    max_tokens: int | None
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    stop: tuple[str, ...]
    stop_token_ids: tuple[int, ...]
    stream: bool
    include_usage: bool

    @classmethod
    def parse(cls, data: dict[str, Any], *, chat: bool, limits: Limits) -> GenerationRequest:
        body = (CHAT if chat else COMPLETIONS).parse(data, limits)
        if chat and body["logprobs"]:
            raise InvalidInputError("'logprobs' is not supported")
        if not chat and body["echo"]:
            raise InvalidInputError("'echo' is not supported")
        options = body["stream_options"]
        if options is not None and not body["stream"]:
            raise InvalidInputError("'stream_options' is only allowed when 'stream' is true")
        max_tokens = body["max_tokens"]
        if chat and body["max_completion_tokens"] is not None:
            max_tokens = body["max_completion_tokens"]
        return cls(
            model=body["model"],
            prompt=None if chat else body["prompt"],
            messages=body["messages"] if chat else None,
            max_tokens=max_tokens,
            temperature=1.0 if body["temperature"] is None else body["temperature"],
            top_p=1.0 if body["top_p"] is None else body["top_p"],
            top_k=max(body["top_k"] or 0, 0),
            seed=body["seed"],
            stop=body["stop"] or (),
            stop_token_ids=tuple(body["stop_token_ids"] or ()),
            stream=body["stream"],
            include_usage=bool(options and options["include_usage"]),
        )

    def sampling(self, *, room: int) -> SamplingParams:
        """The sampling parameters; `max_tokens` defaults to the `room` left in the context."""
        return SamplingParams(
            max_tokens=self.max_tokens if self.max_tokens is not None else max(room, 1),
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            stop=self.stop,
            stop_token_ids=self.stop_token_ids,
        )
