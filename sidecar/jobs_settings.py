"""Settings of jobs (DESIGN section 13): where they are stored, how long, how large, callbacks."""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

from sidecar.environ import EnvReader, float_in, int_in, nonempty
from sidecar.errors import ConfigError

DEFAULT_MAX_BYTES = 10 << 30
DEFAULT_MAX_BODY_BYTES = 200 << 20  # OpenAI's own limit on a batch input file


@dataclass(frozen=True)
class JobsSettings:
    """Field `x` is read from `SIDECAR_JOB(S)_X`; jobs are off while `dir` is None.

    Attributes:
        dir: SIDECAR_JOBS_DIR, the SQLite database and the JSONL files (a volume in the image).
        retention_s: SIDECAR_JOB_RETENTION_S, how long a finished job and an uploaded file stay.
        max_bytes: SIDECAR_JOBS_MAX_BYTES, the disk budget: a new job or file that would pass it
            is refused (507); jobs already accepted finish.
        max_inputs: SIDECAR_JOB_MAX_INPUTS, inputs (lines) of one job; more: 413.
        max_body_bytes: SIDECAR_JOB_MAX_BODY_BYTES, the body of `POST /v1/jobs` and of a file
            upload (larger than SIDECAR_MAX_BODY_BYTES: bulk work comes in large bodies); more:
            413. Uploads stream to disk; one job body at a time is held in memory.
        callback_allow: SIDECAR_JOB_CALLBACK_ALLOW, comma-separated origins callbacks may go to
            (`scheme://host[:port]`); empty: callbacks are refused (400 at submit).
        callback_secret_file: SIDECAR_JOB_CALLBACK_SECRET_FILE, the Standard Webhooks secret
            (`whsec_` + base64) that signs callbacks.
    """

    dir: str | None = None
    retention_s: float = 86400.0
    max_bytes: int = DEFAULT_MAX_BYTES
    max_inputs: int = 100_000
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    callback_allow: tuple[str, ...] = ()
    callback_secret_file: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> JobsSettings:
        """Raises ConfigError naming the variable, the value and what is accepted."""
        env = EnvReader(environ)
        settings = cls(
            dir=env.get("SIDECAR_JOBS_DIR", nonempty, None),
            retention_s=env.get("SIDECAR_JOB_RETENTION_S", float_in(1.0, 1e8), 86400.0),
            max_bytes=env.get("SIDECAR_JOBS_MAX_BYTES", int_in(1, 1 << 50), DEFAULT_MAX_BYTES),
            max_inputs=env.get("SIDECAR_JOB_MAX_INPUTS", int_in(1, 10_000_000), 100_000),
            max_body_bytes=env.get(
                "SIDECAR_JOB_MAX_BODY_BYTES", int_in(1024, 1 << 34), DEFAULT_MAX_BODY_BYTES
            ),
            callback_allow=env.get("SIDECAR_JOB_CALLBACK_ALLOW", origins, ()),
            callback_secret_file=env.get("SIDECAR_JOB_CALLBACK_SECRET_FILE", nonempty, None),
        )
        if settings.callback_allow and settings.callback_secret_file is None:
            raise ConfigError(
                "SIDECAR_JOB_CALLBACK_ALLOW",
                environ.get("SIDECAR_JOB_CALLBACK_ALLOW", ""),
                "unset, unless SIDECAR_JOB_CALLBACK_SECRET_FILE names the secret that signs "
                "callbacks",
            )
        return settings

    def public(self) -> dict[str, object]:
        """As served at /v1/info: where the secret lives is redacted."""
        return {
            "dir": self.dir,
            "retention_s": self.retention_s,
            "max_bytes": self.max_bytes,
            "max_inputs": self.max_inputs,
            "max_body_bytes": self.max_body_bytes,
            "callback_allow": list(self.callback_allow),
            "callback_secret_file": "<redacted>" if self.callback_secret_file else None,
        }


def origin_of(url: str) -> str | None:
    """`scheme://host[:port]` of an http(s) URL, lower-cased; None if it is not one."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + ("" if port in (None, default) else f":{port}")


def origins(raw: str) -> tuple[str, ...]:
    allowed = []
    for item in raw.split(","):
        item = item.strip().rstrip("/")
        origin = origin_of(item)
        if origin is None or urllib.parse.urlsplit(item).path not in ("", "/"):
            raise ValueError(
                "comma-separated origins such as https://hooks.example.com,http://127.0.0.1:9000"
            )
        allowed.append(origin)
    return tuple(allowed)
