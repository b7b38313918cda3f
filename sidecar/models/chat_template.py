"""Chat templates rendered the way transformers renders them, in a sandboxed Jinja environment.

The environment is transformers' `_compile_jinja_template`: an immutable sandbox (a template can
read what it is given and nothing else: no attribute of Python internals, no mutation),
`trim_blocks` and `lstrip_blocks`, the `loopcontrols` extension, `tojson` without ASCII escaping,
and the globals `raise_exception` (a template refusing a conversation: a client error) and
`strftime_now`. The template comes from `chat_template.jinja`, else `tokenizer_config.json`'s
`chat_template` (a string, or a list of named templates: `default` is used).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from sidecar.models.errors import InputError, ModelLoadError

TEMPLATE_FILE = "chat_template.jinja"


class TemplateError(InputError):
    """The chat template refused the conversation (`raise_exception`) or failed on it."""


class ChatTemplate:
    """A compiled chat template and the special tokens it is rendered with."""

    def __init__(self, source: str, special_tokens: Mapping[str, str | None]) -> None:
        environment = ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
        )
        environment.filters["tojson"] = _tojson
        environment.globals["raise_exception"] = _raise_exception
        environment.globals["strftime_now"] = _strftime_now
        try:
            self._template = environment.from_string(source)
        except jinja2.TemplateError as exc:
            raise ModelLoadError(f"the chat template does not compile: {exc}") from None
        self._special_tokens = dict(special_tokens)

    def render(self, messages: Sequence[Mapping[str, Any]], **extra: Any) -> str:
        """The conversation as the model's prompt text, ending with the generation prompt."""
        try:
            return self._template.render(
                messages=list(messages),
                add_generation_prompt=True,
                **self._special_tokens,
                **extra,
            )
        except TemplateError:
            raise
        except jinja2.TemplateError as exc:
            raise TemplateError(f"the chat template cannot render these messages: {exc}") from None
        except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:
            # A template reading a field the messages lack in a way Jinja does not catch.
            raise TemplateError(f"the chat template cannot render these messages: {exc}") from None


def template_source(directory: Path, tokenizer_config: Mapping[str, Any]) -> str | None:
    """The snapshot's chat template text, or None when it has none."""
    path = directory / TEMPLATE_FILE
    if path.is_file():
        return path.read_text(encoding="utf-8")
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):
        named = {str(t.get("name")): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template is not None and not isinstance(template, str):
        raise ModelLoadError("tokenizer_config.json chat_template must be a string or a list")
    return template


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise_exception(message: str) -> None:
    raise TemplateError(f"the chat template refuses these messages: {message}")


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)
