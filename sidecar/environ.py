"""Reading environment variables: one reader that names the variable in every error, and the
parsers of the values most settings take. `sidecar.config` and the settings of each feature use
them; only the composition root reads the environment.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable, Mapping
from typing import TypeVar

from sidecar.errors import ConfigError

T = TypeVar("T")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class EnvReader:
    """Reads variables from an environ; a value its parser refuses raises ConfigError."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def get(self, name: str, parse: Callable[[str], T], default: T) -> T:
        """`parse` of the variable's stripped value; `default` when unset or blank.

        Raises:
            ConfigError: naming the variable, the value, and what `parse` accepts (its message).
        """
        raw = self._environ.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return parse(raw.strip())
        except ValueError as exc:
            raise ConfigError(name, raw, str(exc)) from None


def nonempty(raw: str) -> str:
    return raw


def choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.lower() not in options:
            raise ValueError("one of " + ", ".join(options))
        return raw.lower()

    return parse


def int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"an integer from {low} to {high}") from None
        if not low <= value <= high:
            raise ValueError(f"an integer from {low} to {high}")
        return value

    return parse


def float_in(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"a number from {low:g} to {high:g}") from None
        if not low <= value <= high:  # also rejects NaN
            raise ValueError(f"a number from {low:g} to {high:g}")
        return value

    return parse


def boolean(raw: str) -> bool:
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ValueError("true or false (also 1/0, yes/no, on/off)")


def octal_mode(raw: str) -> int:
    if not re.fullmatch(r"0?o?[0-7]{3,4}", raw):
        raise ValueError("an octal file mode such as 0660")
    return int(raw.replace("o", ""), 8)


def http_url(raw: str) -> str:
    url = urllib.parse.urlsplit(raw)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError("an http:// or https:// URL, such as http://otel-collector:4318")
    return raw


def socket_path(raw: str) -> str:
    # sun_path holds 108 bytes including the terminating NUL.
    if len(raw.encode()) > 107:
        raise ValueError("a socket path of at most 107 bytes")
    return raw
