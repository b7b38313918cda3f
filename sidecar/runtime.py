"""The process's state: loading, ready, draining; the model and what it took to load."""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from sidecar import __version__
from sidecar.config import Settings
from sidecar.engine import Engine, LoadReport, load_model, resolve_device, resolve_dtype
from sidecar.errors import UnavailableError
from sidecar.metrics import GpuCollector, Metrics
from sidecar.timeline import Timeline

logger = logging.getLogger(__name__)

DEMO_NAME = "all-MiniLM-L6-v2"


class Phase(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


class Runtime:
    """Holds the engine once loaded and tracks requests in flight for a clean drain."""

    def __init__(
        self,
        settings: Settings,
        *,
        auth_token: str | None = None,
        timeline: Timeline | None = None,
    ) -> None:
        self.settings = settings
        self.auth_token = auth_token
        self.timeline = timeline or Timeline()
        self.metrics = Metrics()
        self.phase = Phase.LOADING
        self.started = False
        self.engine: Engine | None = None
        self.report: LoadReport | None = None
        self.model_name = settings.model_name or "model"
        self.model_version = settings.model_version or "1"
        self.created = int(time.time())
        self.device: torch.device | None = None
        self.dtype: torch.dtype | None = None
        self._device_executor = ThreadPoolExecutor(1, thread_name_prefix="device")
        self._inflight = 0
        self._quiet = asyncio.Event()
        self._quiet.set()

    async def load(self) -> None:
        """Resolve, stream, build and warm the model off the loop, then turn readiness on."""
        settings = self.settings
        loop = asyncio.get_running_loop()
        self.device = resolve_device(settings.device)
        self.dtype = resolve_dtype(settings.dtype, self.device)
        logger.info("loading model on %s as %s", self.device, self.dtype)
        model, source, report = await loop.run_in_executor(
            self._device_executor, load_model, settings, self.device, self.dtype
        )
        self.report = report
        self.timeline.mark("load")
        default_name = DEMO_NAME if settings.model is None else _served_name(source.name)
        self.model_name = settings.model_name or default_name
        self.model_version = settings.model_version or (source.revision or "1")
        engine = Engine(model, settings, self.metrics, self._device_executor)
        await engine.start()
        self.engine = engine
        metrics = self.metrics
        metrics.track_queue_depth(lambda: engine.batcher.queue_depth)
        metrics.model_info.labels(
            self.model_name, self.model_version, str(self.device), _dtype_name(self.dtype)
        ).set(1)
        metrics.model_load_seconds.set(report.weights_s)
        metrics.model_load_bytes.set(report.weight_bytes)
        if self.device.type == "cuda":
            metrics.add_gpu_collector(GpuCollector(self.device.index or 0))
        self.phase = Phase.READY
        self.timeline.mark("ready")
        self.started = True
        metrics.ready.set(1)
        logger.info(
            "ready: %s v%s (%s) %d bytes in %.3fs (%.2f GB/s), warm-up %.3fs",
            self.model_name, self.model_version, model.task, report.weight_bytes,
            report.weights_s, report.weights_gbps, report.warmup_s,
        )  # fmt: skip

    @property
    def fatal(self) -> bool:
        """A device error made the process useless; only a restart helps."""
        return self.engine is not None and self.engine.fatal is not None

    def require_engine(self) -> Engine:
        """The engine, or the 503 that says why there is none yet."""
        if self.phase is Phase.READY and self.engine is not None:
            return self.engine
        if self.phase is Phase.DRAINING:
            raise UnavailableError("the server is draining", reason="draining", retry_after_s=1)
        raise UnavailableError("the model is loading", reason="loading", retry_after_s=5)

    def enter(self) -> None:
        """Count an inference request in flight."""
        self._inflight += 1
        self._quiet.clear()

    def leave(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._quiet.set()

    async def drain(self) -> bool:
        """Refuse new work, let accepted requests finish; False if the drain timeout ran out."""
        self.phase = Phase.DRAINING
        self.metrics.ready.set(0)
        logger.info("draining: %d requests in flight", self._inflight)
        timeout_s = self.settings.drain_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                await self._quiet.wait()
            drained = True
        except TimeoutError:
            logger.warning(
                "drain timeout (%ss) with %d requests in flight", timeout_s, self._inflight
            )
            drained = False
        if self.engine is not None:
            await self.engine.stop()
        self._device_executor.shutdown(wait=False, cancel_futures=True)
        return drained

    def model_card(self) -> dict[str, Any]:
        """What `/v1/models/{model}` says of the served model."""
        engine = self.require_engine()
        model = engine.model
        settings = self.settings
        card: dict[str, Any] = {
            "id": self.model_name,
            "object": "model",
            "version": self.model_version,
            "task": model.task,
            "architecture": model.architecture,
            "created": self.created,
            "owned_by": "sidecar",
            "device": str(self.device),
            "dtype": _dtype_name(model.dtype),
            "max_input_tokens": engine.max_input_tokens,
            "input_schema": {
                "inputs": "string | [string] | [{text: string}]",
                "parameters": {"truncate": "boolean (false)", "normalize": "boolean (true)"},
                "max_inputs": settings.max_client_batch,
            },
            "batching": {
                "window_ms": settings.batch_window_ms,
                "min_size": settings.batch_min_size,
                "max_size": settings.batch_max_size,
                "max_tokens": settings.batch_max_tokens,
                "adaptive": settings.batch_adaptive,
                "queue_max": settings.queue_max,
            },
        }
        if model.task == "embed":
            card["embedding_dimension"] = model.embedding_dim
            card["output_schema"] = {"results": [{"embedding": f"[float] x {model.embedding_dim}"}]}
        else:
            card["labels"] = list(model.labels or ())
            card["output_schema"] = {
                "results": [{"label": "string", "score": "float", "scores": {"label": "float"}}]
            }
        return card

    def info(self) -> dict[str, Any]:
        """What `/v1/info` says: effective settings, build and load figures."""
        return {
            "version": __version__,
            "phase": self.phase.value,
            "model": self.model_name,
            "model_version": self.model_version,
            "device": str(self.device) if self.device else None,
            "dtype": _dtype_name(self.dtype) if self.dtype else None,
            "torch": torch.__version__,
            "settings": self.settings.public(),
            "load": self.report.public() if self.report else None,
            "batching": self._batching(),
            "startup_s": {
                "phases": self.timeline.phases_s(),
                "to_ready": self.timeline.since_start_s("ready"),
            },
        }

    def _batching(self) -> dict[str, Any] | None:
        if self.engine is None:
            return None
        overhead = self.engine.batcher.batch_overhead_tokens
        # null until enough batches of different sizes have run, or when tokens cost nothing
        # measurable (batches then fill to the bounds)
        if overhead is None or not math.isfinite(overhead):
            return {"batch_overhead_tokens": None}
        return {"batch_overhead_tokens": round(overhead, 1)}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _served_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in name).strip("-.")
    return cleaned[:128] or "model"
