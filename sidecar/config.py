"""Settings from the environment: parsed once, validated in one place, passed down.

A feature with several variables of its own (DESIGN sections 12-14) keeps them in a frozen
dataclass in its own module with a `from_env(environ)` built on `sidecar.environ`, and `Settings`
holds it as one field.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.environ import (
    EnvReader,
    boolean,
    choice,
    float_in,
    http_url,
    int_in,
    nonempty,
    octal_mode,
    socket_path,
)
from sidecar.errors import ConfigError
from sidecar.generation_settings import GenerationSettings
from sidecar.jobs_settings import JobsSettings
from sidecar.versions_settings import VersionsSettings

# The tasks the contract names (DESIGN section 11). Which of them a snapshot can serve is its
# model family's business: asking for one it cannot serve stops start-up (exit code 1).
TASKS = ("embed", "classify", "rerank", "generate", "tensor")
DTYPES = ("auto", "float32", "float16", "bfloat16")
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("json", "text")
LOAD_MODES = ("auto", "mmap", "read")
BACKENDS = ("auto", "torch", "onnx")
# Names in URLs and responses: SIDECAR_MODEL_NAME must match; names derived from a source are
# made to match (`served_name_from`).
SERVED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


# SIDECAR_BATCH_MAX_SIZE when unset. On a CPU a forward pass costs about its padded tokens, so
# batches gain little past a few dozen items. On a GPU a pass costs about the same up to a knee
# of thousands of tokens: 32 short inputs (a few hundred tokens) leave most of it idle, so the
# bound lets the batcher fill up to the knee it measures (still under SIDECAR_BATCH_MAX_TOKENS).
CPU_MAX_SIZE = 32
CUDA_MAX_SIZE = 256
# SIDECAR_CACHE_MAX_ITEMS at most: 16.7 million entries, ~30 GiB of 384-dimension embeddings.
MAX_CACHE_ITEMS = 1 << 24


@dataclass(frozen=True)
class DigestPins:
    """SIDECAR_MODEL_SHA256: weight-file digests to verify before serving.

    `recorded` (the digests a Hugging Face cache snapshot records), one digest for a single-file
    model, or one digest per weight file name; digests are sha256 hex, in either case.
    """

    text: str
    recorded: bool = False
    digest: str | None = None
    by_name: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, value: str) -> DigestPins:
        """Parse the setting's text.

        Raises:
            ValueError: saying what is wrong.
        """
        text = value.strip()
        if not text:
            raise ValueError("no digest given: expected a sha256 digest or name=digest pairs")
        if text == "recorded":
            return cls(text, recorded=True)
        if "=" not in text:
            return cls(text, digest=_digest(text))
        pins: dict[str, str] = {}
        for item in text.split(","):
            name, equals, digest = (part.strip() for part in item.partition("="))
            if not equals or not name:
                raise ValueError(f"{item.strip()!r} is not name=digest")
            if name in pins:
                raise ValueError(f"{name!r} is pinned twice")
            pins[name] = _digest(digest)
        return cls(text, by_name=tuple(pins.items()))

    def for_files(self, names: Sequence[str]) -> dict[str, str]:
        """`{file name: lowercase digest}` for a model's weight files (not for `recorded`).

        Every file must be pinned, so that a pin cannot silently leave a shard unchecked.

        Raises:
            ValueError: the pins do not cover exactly these files.
        """
        if self.digest is not None:
            if len(names) != 1:
                raise ValueError(
                    f"a single digest pins a single-file model, but this model has {len(names)}"
                    f" weight files ({', '.join(names) or 'none'}): give name=digest,name=digest"
                )
            return {names[0]: self.digest}
        pins = dict(self.by_name)
        for name in pins:
            if name not in names:
                raise ValueError(
                    f"{name!r} is not a weight file of this model (its files: {', '.join(names)})"
                )
        unpinned = [name for name in names if name not in pins]
        if unpinned:
            raise ValueError(
                f"no digest for {', '.join(unpinned)}: every weight file must be pinned"
            )
        return pins


def _digest(text: str) -> str:
    digest = text.strip().lower()
    if not _SHA256_HEX.fullmatch(digest):
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise ValueError(f"{shown!r} is not a sha256 digest (64 hex characters)")
    return digest


@dataclass(frozen=True)
class Tracing:
    """Where spans go, from the OpenTelemetry variables (tracing is off without an endpoint).

    Only these are read here; the SDK reads the rest itself (OTEL_TRACES_SAMPLER and its
    argument, OTEL_EXPORTER_OTLP_HEADERS, _TIMEOUT, _COMPRESSION, OTEL_RESOURCE_ATTRIBUTES, the
    OTEL_BSP_* batch processor limits).
    """

    endpoint: str  # the traces URL: OTLP over HTTP, protobuf
    service_name: str | None = None  # None: service.name of OTEL_RESOURCE_ATTRIBUTES, else sidecar

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Tracing | None:
        """The tracing settings, or None when no OTLP endpoint is set or tracing is disabled.

        Raises:
            ConfigError: an endpoint that is not an http(s) URL, an exporter or protocol the
                sidecar does not export with.
        """
        env = EnvReader(environ)
        if env.get("OTEL_SDK_DISABLED", boolean, False):
            return None
        endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", http_url, None)
        if endpoint is None:
            # The general endpoint is a base URL: the signal's path is appended (OTLP spec).
            base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", http_url, None)
            if base is None:
                return None
            endpoint = base.rstrip("/") + "/v1/traces"
        if env.get("OTEL_TRACES_EXPORTER", choice(("otlp", "none")), "otlp") == "none":
            return None
        # The per-signal variable wins over the general one.
        protocol = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
        if not environ.get(protocol, "").strip():
            protocol = "OTEL_EXPORTER_OTLP_PROTOCOL"
        env.get(protocol, _otlp_protocol, None)
        return cls(endpoint, env.get("OTEL_SERVICE_NAME", nonempty, None))

    def public(self) -> dict[str, str | None]:
        """As served at /v1/info: credentials in the URL redacted."""
        url = urllib.parse.urlsplit(self.endpoint)
        if url.username is not None or url.password is not None:
            url = url._replace(netloc="<redacted>@" + url.netloc.rpartition("@")[2])
        return {"endpoint": url.geturl(), "service_name": self.service_name}


def served_name_from(name: str) -> str:
    """A served name made from a source's name: other characters become '-'; 'model' if none."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", name).lstrip("._-").rstrip("-.")[:128]
    return cleaned if SERVED_NAME.fullmatch(cleaned) else "model"


@dataclass(frozen=True)
class Settings:
    """Every knob of the process; field `x` is read from `SIDECAR_X` unless noted."""

    model: str | None = None  # None: the bundled demo model
    model_name: str | None = None
    model_version: str | None = None
    task: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    backend: str = "auto"  # auto: onnx when the model directory holds model.onnx, else torch
    batch_window_ms: int = 20
    batch_min_size: int = 1
    batch_max_size: int | None = None  # None: by device (see CPU_MAX_SIZE, CUDA_MAX_SIZE)
    batch_max_tokens: int = 16384
    batch_adaptive: bool = True
    batch_max_padding: float | None = None  # None: by device (serving.engine.CPU_MAX_PADDING)
    shape_buckets: str = "auto"  # auto: on CUDA, not on a CPU (see serving.shapes)
    cuda_graphs: str = "off"  # auto: off until measured on a GPU (see serving.shapes)
    queue_max: int = 512
    cache_max_items: int = 0  # 0: no response cache
    request_timeout_ms: int = 30000
    max_input_tokens: int | None = None
    max_client_batch: int = 256  # from_env: unset follows a lower queue_max
    max_body_bytes: int = 8 * 1024 * 1024
    keepalive_timeout_s: float = 15.0
    max_connections: int = 1024
    host: str = "127.0.0.1"
    port: int = 8080
    uds: str | None = None
    uds_mode: int = 0o660
    health_host: str = "0.0.0.0"
    health_port: int = 9090
    auth_token_file: str | None = None
    load_threads: int = 8
    load_chunk_mb: int = 16
    load_mode: str = "auto"
    model_sha256: DigestPins | None = None
    warmup: bool = True
    drain_timeout_s: float = 30.0
    forward_timeout_s: float = 120.0  # 0: no watchdog
    log_level: str = "info"
    log_format: str = "json"
    # Read from the Hugging Face variables, not SIDECAR_*.
    hf_home: str | None = None
    hf_offline: bool = False
    hf_token: str | None = dataclasses.field(default=None, repr=False)
    # Read from the OpenTelemetry variables (see Tracing); None: no tracing.
    tracing: Tracing | None = None
    # Model versions in one pod (DESIGN section 12).
    versions: VersionsSettings = dataclasses.field(default_factory=VersionsSettings)
    # Jobs (DESIGN section 13), from SIDECAR_JOB(S)_* (see sidecar.jobs_settings).
    jobs: JobsSettings = dataclasses.field(default_factory=JobsSettings)
    # SIDECAR_GEN_* (sidecar.generation_settings)
    generation: GenerationSettings = dataclasses.field(default_factory=GenerationSettings)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Parse and validate settings from `environ`.

        Raises:
            ConfigError: naming the variable, the value and what is accepted.
        """
        env = EnvReader(environ)
        settings = cls(
            model=env.get("SIDECAR_MODEL", nonempty, None),
            model_name=env.get("SIDECAR_MODEL_NAME", _served_name, None),
            model_version=env.get("SIDECAR_MODEL_VERSION", nonempty, None),
            task=env.get("SIDECAR_TASK", choice(TASKS), None),
            device=env.get("SIDECAR_DEVICE", _device, "auto"),
            dtype=env.get("SIDECAR_DTYPE", choice(DTYPES), "auto"),
            backend=env.get("SIDECAR_BACKEND", choice(BACKENDS), "auto"),
            batch_window_ms=env.get("SIDECAR_BATCH_WINDOW_MS", int_in(0, 1000), 20),
            batch_min_size=env.get("SIDECAR_BATCH_MIN_SIZE", int_in(1, 4096), 1),
            batch_max_size=env.get("SIDECAR_BATCH_MAX_SIZE", int_in(1, 4096), None),
            batch_max_tokens=env.get("SIDECAR_BATCH_MAX_TOKENS", int_in(1, 1 << 24), 16384),
            batch_adaptive=env.get("SIDECAR_BATCH_ADAPTIVE", boolean, True),
            batch_max_padding=env.get("SIDECAR_BATCH_MAX_PADDING", float_in(0.0, 1.0), None),
            shape_buckets=env.get("SIDECAR_SHAPE_BUCKETS", choice(("auto", "on", "off")), "auto"),
            cuda_graphs=env.get("SIDECAR_CUDA_GRAPHS", choice(("auto", "on", "off")), "off"),
            queue_max=(queue_max := env.get("SIDECAR_QUEUE_MAX", int_in(1, 1 << 20), 512)),
            cache_max_items=env.get("SIDECAR_CACHE_MAX_ITEMS", int_in(0, MAX_CACHE_ITEMS), 0),
            request_timeout_ms=env.get("SIDECAR_REQUEST_TIMEOUT_MS", int_in(1, 3_600_000), 30000),
            max_input_tokens=env.get("SIDECAR_MAX_INPUT_TOKENS", int_in(2, 1 << 20), None),
            # Unset, it follows a lower queue limit: only limits the user set can contradict.
            max_client_batch=env.get(
                "SIDECAR_MAX_CLIENT_BATCH", int_in(1, 1 << 16), min(256, queue_max)
            ),
            max_body_bytes=env.get("SIDECAR_MAX_BODY_BYTES", int_in(1024, 1 << 31), 8 << 20),
            keepalive_timeout_s=env.get("SIDECAR_KEEPALIVE_TIMEOUT_S", float_in(0.1, 3600.0), 15.0),
            max_connections=env.get("SIDECAR_MAX_CONNECTIONS", int_in(1, 1 << 20), 1024),
            host=env.get("SIDECAR_HOST", nonempty, "127.0.0.1"),
            port=env.get("SIDECAR_PORT", int_in(0, 65535), 8080),
            uds=env.get("SIDECAR_UDS", socket_path, None),
            uds_mode=env.get("SIDECAR_UDS_MODE", octal_mode, 0o660),
            health_host=env.get("SIDECAR_HEALTH_HOST", nonempty, "0.0.0.0"),
            health_port=env.get("SIDECAR_HEALTH_PORT", int_in(0, 65535), 9090),
            auth_token_file=env.get("SIDECAR_AUTH_TOKEN_FILE", nonempty, None),
            load_threads=env.get("SIDECAR_LOAD_THREADS", int_in(1, 256), 8),
            load_chunk_mb=env.get("SIDECAR_LOAD_CHUNK_MB", int_in(1, 1024), 16),
            load_mode=env.get("SIDECAR_LOAD_MODE", choice(LOAD_MODES), "auto"),
            model_sha256=env.get("SIDECAR_MODEL_SHA256", _digest_pins, None),
            warmup=env.get("SIDECAR_WARMUP", boolean, True),
            drain_timeout_s=env.get("SIDECAR_DRAIN_TIMEOUT_S", float_in(0.0, 3600.0), 30.0),
            forward_timeout_s=env.get("SIDECAR_FORWARD_TIMEOUT_S", float_in(0.0, 86400.0), 120.0),
            log_level=env.get("SIDECAR_LOG_LEVEL", choice(LOG_LEVELS), "info"),
            log_format=env.get("SIDECAR_LOG_FORMAT", choice(LOG_FORMATS), "json"),
            hf_home=env.get("HF_HOME", nonempty, None),
            hf_offline=env.get("HF_HUB_OFFLINE", boolean, False),
            hf_token=env.get("HF_TOKEN", nonempty, None),
            tracing=Tracing.from_env(environ),
            versions=VersionsSettings.from_env(environ),
            jobs=JobsSettings.from_env(environ),
            generation=GenerationSettings.from_env(environ),
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Validate relations between settings.

        Raises:
            ConfigError: naming the first variable out of bounds.
        """
        max_size = self.batch_max_size or CPU_MAX_SIZE  # the smaller default, device unknown
        if self.batch_min_size > max_size:
            raise ConfigError(
                "SIDECAR_BATCH_MIN_SIZE",
                str(self.batch_min_size),
                f"at most SIDECAR_BATCH_MAX_SIZE ({max_size}"
                + (")" if self.batch_max_size else ", its default on a CPU; set it)"),
            )
        if self.max_client_batch > self.queue_max:
            raise ConfigError(
                "SIDECAR_MAX_CLIENT_BATCH",
                str(self.max_client_batch),
                f"at most SIDECAR_QUEUE_MAX ({self.queue_max})",
            )
        if self.max_input_tokens is not None and self.max_input_tokens > self.batch_max_tokens:
            raise ConfigError(
                "SIDECAR_MAX_INPUT_TOKENS",
                str(self.max_input_tokens),
                f"at most SIDECAR_BATCH_MAX_TOKENS ({self.batch_max_tokens})",
            )
        if self.load_mode == "mmap" and self.device.startswith("cuda"):
            raise ConfigError("SIDECAR_LOAD_MODE", "mmap", "auto or read with a CUDA device")
        if self.versions.admin_uds is not None and self.versions.admin_uds == self.uds:
            raise ConfigError(
                "SIDECAR_ADMIN_UDS", self.versions.admin_uds, "a socket path other than SIDECAR_UDS"
            )
        if self.cuda_graphs == "on":
            self._check_cuda_graphs()
        if self.port == 0 and self.uds is None:
            raise ConfigError("SIDECAR_PORT", "0", "a TCP port, unless SIDECAR_UDS is set")

    def _check_cuda_graphs(self) -> None:
        """SIDECAR_CUDA_GRAPHS=on: graphs are captured per shape bucket in the torch warm-up."""
        needs = {
            "a CUDA device (SIDECAR_DEVICE cuda or auto)": self.device == "cpu",
            "shape buckets (SIDECAR_SHAPE_BUCKETS auto or on)": self.shape_buckets == "off",
            "the warm-up (SIDECAR_WARMUP=true)": not self.warmup,
            "the torch backend (SIDECAR_BACKEND auto or torch)": self.backend == "onnx",
        }
        for need, missing in needs.items():
            if missing:
                raise ConfigError("SIDECAR_CUDA_GRAPHS", "on", f"off or auto without {need}")

    def public(self) -> dict[str, Any]:
        """The effective settings as served at /v1/info, secrets redacted."""
        values = dataclasses.asdict(self)
        values["hf_token"] = "<redacted>" if self.hf_token else None
        # Where the secret lives is nobody's business over the API either.
        values["auth_token_file"] = "<redacted>" if self.auth_token_file else None
        values["uds_mode"] = oct(self.uds_mode)
        values["model_sha256"] = self.model_sha256.text if self.model_sha256 else None
        values["tracing"] = self.tracing.public() if self.tracing else None
        values["versions"] = self.versions.public()
        values["jobs"] = self.jobs.public()
        return values


def _served_name(raw: str) -> str:
    if not SERVED_NAME.fullmatch(raw):
        raise ValueError("letters, digits, '.', '_' and '-', starting with a letter or digit")
    return raw


def _device(raw: str) -> str:
    if not _DEVICE.match(raw.lower()):
        raise ValueError("auto, cpu, cuda or cuda:N")
    return raw.lower()


def _digest_pins(raw: str) -> DigestPins:
    try:
        return DigestPins.parse(raw)
    except ValueError as exc:
        raise ValueError(
            f"'recorded', one sha256 hex digest, or name=digest pairs separated by commas ({exc})"
        ) from None


def _otlp_protocol(raw: str) -> str:
    if raw.lower() != "http/protobuf":
        raise ValueError("http/protobuf: the sidecar exports spans as OTLP over HTTP (port 4318)")
    return raw.lower()
