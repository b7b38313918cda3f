"""Request types declared once: each checks a JSON value and describes itself as JSON Schema.

A route's body is an `Object` of `Field`s whose types are `String`, `Boolean`, `PositiveInt`,
`Choice`, `Texts` or another `Object`. `Object.check` turns a decoded JSON body into plain values
(defaults filled in) or raises `InvalidInputError` naming the field; `json_schema` is what
`/openapi.json` publishes for the same declaration, so the document cannot drift from what the
route enforces. A check is a few `isinstance` calls per field: it runs on the event loop.

Paths in messages are quoted and dotted (`'parameters.truncate' must be a boolean`); items of a
list are named by index (`inputs[2] must be a string`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sidecar.errors import InvalidInputError, TooManyInputsError

if TYPE_CHECKING:
    from sidecar.config import Settings

JsonSchema = dict[str, Any]
# An error names at most this many unknown fields, each cut to this many characters: a body of
# a million field names gets a short answer.
_NAMES_SHOWN = 5
_NAME_CHARS = 64


@dataclass(frozen=True)
class Limits:
    """The settings a check and its schema depend on."""

    max_inputs: int  # items in one request's list of inputs (SIDECAR_MAX_CLIENT_BATCH)

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(max_inputs=settings.max_client_batch)


class Type(ABC):
    """A JSON value's type: how it is checked and how it is published."""

    @abstractmethod
    def check(self, value: Any, path: str, limits: Limits) -> Any:
        """`value` as the route takes it.

        Raises:
            InvalidInputError: `value` is not of this type (the message names `path`).
            TooManyInputsError: a list of inputs is longer than `limits` allow.
        """

    @abstractmethod
    def json_schema(self, limits: Limits) -> JsonSchema:
        """The JSON Schema (2020-12, as OpenAPI 3.1 takes it) of the values `check` accepts."""


class String(Type):
    def check(self, value: Any, path: str, limits: Limits) -> Any:
        if not isinstance(value, str):
            raise InvalidInputError(f"'{path}' must be a string")
        return value

    def json_schema(self, limits: Limits) -> JsonSchema:
        return {"type": "string"}


class Boolean(Type):
    def check(self, value: Any, path: str, limits: Limits) -> Any:
        if not isinstance(value, bool):
            raise InvalidInputError(f"'{path}' must be a boolean")
        return value

    def json_schema(self, limits: Limits) -> JsonSchema:
        return {"type": "boolean"}


class PositiveInt(Type):
    """An integer from 1 to 2**63 - 1.

    A boolean is not one; a number with a zero fraction (`5.0`) is, as JSON Schema has it.
    """

    MAX = 2**63 - 1

    def check(self, value: Any, path: str, limits: Limits) -> Any:
        if isinstance(value, float) and value.is_integer() and 1 <= value <= self.MAX:
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= self.MAX:
            raise InvalidInputError(f"'{path}' must be a positive integer")
        return value

    def json_schema(self, limits: Limits) -> JsonSchema:
        return {"type": "integer", "minimum": 1, "maximum": self.MAX}


class Choice(Type):
    """One of a few strings."""

    def __init__(self, *values: str) -> None:
        self.values = values

    def check(self, value: Any, path: str, limits: Limits) -> Any:
        if not isinstance(value, str) or value not in self.values:
            accepted = " or ".join(repr(v) for v in self.values)
            raise InvalidInputError(f"'{path}' must be {accepted}")
        return value

    def json_schema(self, limits: Limits) -> JsonSchema:
        return {"type": "string", "enum": list(self.values)}


_TEXT_OBJECT: JsonSchema = {
    "type": "object",
    "properties": {"text": {"type": "string"}},
    "required": ["text"],
    "additionalProperties": False,
}


class Texts(Type):
    """Texts to run: a non-empty list of strings, within the inputs a request may carry.

    Args:
        objects: items may also be `{"text": string}`.
        single: a lone string is taken as a list of one.
    """

    def __init__(self, *, objects: bool, single: bool = True) -> None:
        self.objects = objects
        self.single = single

    def check(self, value: Any, path: str, limits: Limits) -> Any:
        if isinstance(value, str) and self.single:
            return [value]
        if not isinstance(value, list):
            shape = "a list of strings"
            if self.objects:
                shape += ' or {"text": string}'
            if self.single:
                shape = "a string or " + shape
            raise InvalidInputError(f"'{path}' must be {shape}")
        if not value:
            raise InvalidInputError(f"'{path}' must not be empty")
        if len(value) > limits.max_inputs:
            raise TooManyInputsError(
                f"'{path}' has {len(value)} items; at most {limits.max_inputs} are allowed "
                "per request"
            )
        out: list[str] = []
        for index, item in enumerate(value):
            if isinstance(item, str):
                out.append(item)
            elif self.objects and isinstance(item, dict) and isinstance(item.get("text"), str):
                if len(item) != 1:
                    raise InvalidInputError(f"{path}[{index}] may only have the key 'text'")
                out.append(item["text"])
            elif isinstance(item, int | list) and not self.objects:
                raise InvalidInputError(
                    f"{path}[{index}]: token-id inputs are not supported; send text"
                )
            else:
                shape = 'a string or {"text": string}' if self.objects else "a string"
                raise InvalidInputError(f"{path}[{index}] must be {shape}")
        return out

    def json_schema(self, limits: Limits) -> JsonSchema:
        item: JsonSchema = {"type": "string"}
        if self.objects:
            item = {"anyOf": [item, _TEXT_OBJECT]}
        listed = {"type": "array", "items": item, "minItems": 1, "maxItems": limits.max_inputs}
        return {"anyOf": [{"type": "string"}, listed]} if self.single else listed


_ABSENT: Any = object()


@dataclass(frozen=True)
class Field:
    """A member of an `Object`.

    Args:
        type: what its value must be.
        required: the member must be present.
        default: the value checked when it is absent (None when not given).
        nullable: `null` stands for "absent" (and gives None).
        description: for the document.
    """

    type: Type
    required: bool = False
    default: Any = _ABSENT
    nullable: bool = False
    description: str = ""

    def json_schema(self, limits: Limits) -> JsonSchema:
        schema = self.type.json_schema(limits)
        if self.nullable:
            schema = {"anyOf": [schema, {"type": "null"}]}
        if self.default is not _ABSENT:
            schema["default"] = self.default
        if self.description:
            schema["description"] = self.description
        return schema


class Object(Type):
    """An object with known members; any other member is refused.

    Args:
        fields: the members, in the order they are checked.
        member: how a member is called in messages ("field", "parameter").
        description: for the document.
    """

    def __init__(
        self, fields: Mapping[str, Field], *, member: str = "field", description: str = ""
    ) -> None:
        self.fields = dict(fields)
        self.member = member
        self.description = description

    def check(self, value: Any, path: str, limits: Limits) -> Any:
        if not isinstance(value, dict):  # [], "", 0, false and null alike
            raise InvalidInputError(
                f"'{path}' must be an object" if path else "the body must be a JSON object"
            )
        self._refuse_unknown(value)
        out: dict[str, Any] = {}
        for name, field in self.fields.items():
            where = f"{path}.{name}" if path else name
            item = value.get(name, _ABSENT)
            if item is _ABSENT:
                if field.required:
                    raise InvalidInputError(f"'{where}' is required")
                item = field.default
                if item is _ABSENT:
                    out[name] = None
                    continue
            if item is None and field.nullable:
                out[name] = None
                continue
            out[name] = field.type.check(item, where, limits)
        return out

    def parse(self, value: Any, limits: Limits) -> dict[str, Any]:
        """Check a whole body (the top-level object)."""
        out: dict[str, Any] = self.check(value, "", limits)
        return out

    def json_schema(self, limits: Limits) -> JsonSchema:
        schema: JsonSchema = {
            "type": "object",
            "properties": {name: f.json_schema(limits) for name, f in self.fields.items()},
            "additionalProperties": False,
        }
        required = [name for name, field in self.fields.items() if field.required]
        if required:
            schema["required"] = required
        if self.description:
            schema["description"] = self.description
        return schema

    def _refuse_unknown(self, value: dict[str, Any]) -> None:
        """Refuse members outside `fields`; the message shows a few of them, each cut short."""
        if len(value) <= len(self.fields) and all(name in self.fields for name in value):
            return
        unknown = [name for name in value if name not in self.fields]
        shown = ", ".join(repr(name[:_NAME_CHARS]) for name in unknown[:_NAMES_SHOWN])
        more = f" and {len(unknown) - _NAMES_SHOWN} more" if len(unknown) > _NAMES_SHOWN else ""
        raise InvalidInputError(
            f"unknown {self.member}(s): {shown}{more}; accepted: {', '.join(sorted(self.fields))}"
        )
