"""Prometheus metrics: one registry per app; the only module that touches prometheus_client."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from batching import BatchObserver, BatchStats

logger = logging.getLogger(__name__)

REJECT_REASONS = ("queue_full", "deadline", "cancelled", "too_large", "invalid")
_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
_RATIO_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics(BatchObserver):
    """Every metric of DESIGN section 7, registered in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "sidecar_requests", "Requests answered, by route and status code.", ["route", "code"],
            registry=r,
        )  # fmt: skip
        self.request_duration = Histogram(
            "sidecar_request_duration_seconds", "Time from request arrival to response.",
            ["route"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge("sidecar_queue_depth", "Items queued for a batch.", registry=r)
        self.queue_duration = Histogram(
            "sidecar_queue_duration_seconds", "Time an item waited in the queue.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "sidecar_batch_size", "Items per forward pass.", buckets=_SIZE_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "sidecar_batch_tokens", "Padded tokens per forward pass.", buckets=_TOKEN_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.padding_ratio = Histogram(
            "sidecar_batch_padding_ratio", "Share of padded tokens that are padding.",
            buckets=_RATIO_BUCKETS, registry=r,
        )  # fmt: skip
        self.inference_duration = Histogram(
            "sidecar_inference_duration_seconds", "Forward pass time per batch.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_wait = Histogram(
            "sidecar_batch_wait_seconds", "Time a batch waited for company on an idle device.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.rejected = Counter(
            "sidecar_rejected", "Items refused or dropped, by reason.", ["reason"], registry=r
        )
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        self.model_info = Gauge(
            "sidecar_model_info", "The served model.", ["model", "version", "device", "dtype"],
            registry=r,
        )  # fmt: skip
        self.model_load_seconds = Gauge(
            "sidecar_model_load_seconds", "Time spent reading weights.", registry=r
        )
        self.model_load_bytes = Gauge(
            "sidecar_model_load_bytes", "Weight bytes read at start.", registry=r
        )
        self.ready = Gauge("sidecar_ready", "1 when the model serves requests.", registry=r)

    def track_queue_depth(self, depth: Callable[[], int]) -> None:
        """Read the queue depth at scrape time."""
        self.queue_depth.set_function(lambda: float(depth()))

    def add_gpu_collector(self, collector: Collector) -> None:
        """Register the GPU gauges (only when a GPU is present)."""
        self.registry.register(collector)

    def on_batch(self, stats: BatchStats) -> None:
        self.batch_size.observe(stats.size)
        self.batch_tokens.observe(stats.padded_tokens)
        self.padding_ratio.observe(stats.padding_ratio)
        self.inference_duration.observe(stats.inference_s)
        self.batch_wait.observe(stats.wait_s)
        for queued_s in stats.queue_s:
            self.queue_duration.observe(queued_s)

    def on_reject(self, reason: str, count: int) -> None:
        self.rejected.labels(reason).inc(count)

    def observe_request(self, route: str, code: int, seconds: float) -> None:
        """Count one answered request; `route` must be a bounded label value."""
        self.requests.labels(route, str(code)).inc()
        self.request_duration.labels(route).observe(seconds)

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


class GpuCollector(Collector):
    """GPU gauges read through NVML at scrape time."""

    def __init__(self, index: int) -> None:
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self._index = str(index)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        nvml, handle = self._nvml, self._handle
        try:
            utilization = nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            power_w = nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
        except nvml.NVMLError as exc:
            logger.warning("NVML read failed: %s", exc)
            return
        for name, doc, value in (
            ("sidecar_gpu_utilization_ratio", "GPU busy share over the last sample.", utilization),
            ("sidecar_gpu_memory_used_bytes", "GPU memory in use.", float(memory.used)),
            ("sidecar_gpu_memory_total_bytes", "GPU memory in all.", float(memory.total)),
            ("sidecar_gpu_power_watts", "GPU power draw.", power_w),
        ):
            family = GaugeMetricFamily(name, doc, labels=["gpu"])
            family.add_metric([self._index], value)
            yield family
