"""Prometheus metrics: one registry per app; the only module that touches prometheus_client."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from batching import BatchObserver, BatchStats, GenerationObserver

if TYPE_CHECKING:
    from sidecar.serving import Agreement, ServedModel, Service
    from sidecar.serving.jobs import Jobs

logger = logging.getLogger(__name__)

REJECT_REASONS = ("queue_full", "deadline", "cancelled", "too_large", "invalid")
GEN_ABORT_REASONS = ("disconnect", "cancelled", "deadline", "error")
_TOKEN_GAP_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
_RATIO_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
_AGREEMENT_BUCKETS = (-0.5, 0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0)
_SWAP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
SHADOW_OUTCOMES = ("compared", "dropped", "failed", "incomparable")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics(BatchObserver, GenerationObserver):
    """Every metric of DESIGN sections 7 and 14, registered in a registry of its own."""

    content_type = CONTENT_TYPE

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
        # Model versions (DESIGN section 12); per-version series come from VersionsCollector.
        self.swap_seconds = Histogram(
            "sidecar_model_swap_seconds", "From a desired stable version to its flip.",
            buckets=_SWAP_BUCKETS, registry=r,
        )  # fmt: skip
        self.shadow = Counter(
            "sidecar_shadow", "Shadow copies, by outcome.", ["outcome"], registry=r
        )
        for outcome in SHADOW_OUTCOMES:
            self.shadow.labels(outcome)
        self.shadow_agreement = Histogram(
            "sidecar_shadow_agreement",
            "Shadow vs primary: cosine, label agreement or rank correlation (1: the same).",
            ["measure"], buckets=_AGREEMENT_BUCKETS, registry=r,
        )  # fmt: skip
        self.shadow_max_abs_diff = Histogram(
            "sidecar_shadow_max_abs_diff", "Classifications: the largest |dp| of any label.",
            buckets=_RATIO_BUCKETS, registry=r,
        )  # fmt: skip
        self.interactive_wait_on_jobs = Histogram(
            "sidecar_interactive_wait_on_jobs_seconds",
            "Time an interactive item waited for a job batch that ran when it arrived.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self._generation_metrics()

    def _generation_metrics(self) -> None:
        """DESIGN section 14; zero unless a decoder is served."""
        r = self.registry
        self.gen_ttft = Histogram(
            "sidecar_gen_time_to_first_token_seconds",
            "Time from a sequence's arrival to its first token.",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.gen_inter_token = Histogram(
            "sidecar_gen_inter_token_seconds", "Time between a sequence's successive tokens.",
            buckets=_TOKEN_GAP_BUCKETS, registry=r,
        )  # fmt: skip
        self.gen_tokens = Counter(
            "sidecar_gen_tokens", "Tokens processed, by kind.", ["kind"], registry=r
        )
        for kind in ("prompt", "generated"):
            self.gen_tokens.labels(kind)
        self.gen_running = Gauge(
            "sidecar_gen_running_sequences", "Sequences holding a KV cache slot.", registry=r
        )
        self.gen_kv_usage = Gauge(
            "sidecar_gen_kv_usage_ratio", "Share of the KV cache's slots in use.", registry=r
        )
        self.gen_aborted = Counter(
            "sidecar_gen_aborted", "Sequences ended early, by reason.", ["reason"], registry=r
        )
        for reason in GEN_ABORT_REASONS:
            self.gen_aborted.labels(reason)

    def watch(self, service: Service) -> None:
        """Read readiness, queue depth, weight bytes loaded so far and the response cache's
        figures at scrape time."""
        self.registry.register(CacheCollector(service))
        self.ready.set_function(lambda: float(service.ready))
        self.model_load_bytes.set_function(lambda: float(service.loaded_bytes))
        self.registry.register(VersionsCollector(service))
        service.on_swap = lambda seconds: self.on_swap(seconds, service.served)
        service.shadow.observer = self

        def scheduler() -> Any:
            served = service.served
            return (
                None if served is None or served.generation is None else served.generation.scheduler
            )

        self.gen_running.set_function(lambda: float(len(s.running)) if (s := scheduler()) else 0.0)
        self.gen_kv_usage.set_function(lambda: s.slot_usage if (s := scheduler()) else 0.0)
        # A decoder's queue is its sequences waiting for a KV cache slot.
        self.queue_depth.set_function(
            lambda: (
                float(s.queue_depth)
                if (s := scheduler())
                else float(service.served.engine.batcher.queue_depth)
                if service.served
                else 0.0
            )
        )

    def on_swap(self, seconds: float, served: ServedModel | None) -> None:
        """A new stable version serves: the swap's time, and the model info relabelled."""
        self.swap_seconds.observe(seconds)
        if served is not None:
            card = served.engine.card
            self.model_info.clear()
            self.model_info.labels(served.name, served.version, card.device, card.dtype).set(1)

    def on_shadow(self, outcome: str, agreement: Agreement | None) -> None:
        """One shadow copy: its outcome, and how far it agreed with the primary."""
        self.shadow.labels(outcome).inc()
        if agreement is not None:
            self.shadow_agreement.labels(agreement.measure).observe(agreement.value)
            if agreement.max_abs_diff is not None:
                self.shadow_max_abs_diff.observe(agreement.max_abs_diff)

    def watch_jobs(self, jobs: Jobs) -> None:
        """Export the jobs' figures (DESIGN section 13), read at scrape time."""
        self.registry.register(JobsCollector(jobs))

    def on_interactive_wait(self, seconds: float) -> None:
        self.interactive_wait_on_jobs.observe(seconds)

    def on_loaded(self, served: ServedModel) -> None:
        """Label the served model, record its load time, add the GPU gauges on a GPU."""
        card = served.engine.card
        self.model_info.labels(served.name, served.version, card.device, card.dtype).set(1)
        self.model_load_seconds.set(served.report.weights_s)
        if card.device.startswith("cuda"):
            gpu = GpuCollector.open(card.device.partition(":")[2] or "0", card.device_uuid)
            if gpu is not None:
                self.registry.register(gpu)

    def on_batch(self, stats: BatchStats) -> None:
        self.batch_size.observe(stats.size)
        self.batch_tokens.observe(stats.padded_tokens)
        self.padding_ratio.observe(stats.padding_ratio)
        self.inference_duration.observe(stats.inference_s)
        if stats.bulk:  # job items queue by design: their waits are not the queue's latency
            return
        self.batch_wait.observe(stats.wait_s)
        for queued_s in stats.queue_s:
            self.queue_duration.observe(queued_s)

    def on_reject(self, reason: str, count: int) -> None:
        self.rejected.labels(reason).inc(count)

    def on_first_token(self, seconds: float) -> None:
        self.gen_ttft.observe(seconds)

    def on_inter_token(self, seconds: float) -> None:
        self.gen_inter_token.observe(seconds)

    def on_tokens(self, kind: str, count: int) -> None:
        self.gen_tokens.labels(kind).inc(count)

    def on_abort(self, reason: str) -> None:
        self.gen_aborted.labels(reason).inc()

    def observe_request(self, route: str, code: int, seconds: float) -> None:
        """Count one answered request; `route` must be a bounded label value."""
        self.requests.labels(route, str(code)).inc()
        self.request_duration.labels(route).observe(seconds)

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


class CacheCollector(Collector):
    """The response cache's counts, read at scrape time; zeros while it is off.

    The cache counts on the event loop; a scrape on the health port's thread reads plain ints.
    """

    def __init__(self, service: Service) -> None:
        self._service = service

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        cache = self._service.cache
        hits, misses, items, size = (
            (0, 0, 0, 0)
            if cache is None  # an empty cache is falsy (len): test for None
            else (cache.hits, cache.misses, len(cache), cache.num_bytes)
        )
        total = CounterMetricFamily(
            "sidecar_cache", "Items looked up in the response cache, by result.", labels=["result"]
        )
        total.add_metric(["hit"], hits)
        total.add_metric(["miss"], misses)
        yield total
        yield GaugeMetricFamily("sidecar_cache_items", "Entries in the response cache.", items)
        yield GaugeMetricFamily(
            "sidecar_cache_bytes",
            "Output and key bytes the response cache holds (Python overhead not counted).",
            size,
        )


class VersionsCollector(Collector):
    """The versions' states and requests by role, read at scrape time. Series exist for
    resident and failed versions only, so label values stay bounded by what is loaded."""

    def __init__(self, service: Service) -> None:
        self._service = service

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        registry = self._service.registry
        info = GaugeMetricFamily(
            "sidecar_model_version_info", "A model version and its state.",
            labels=["model", "version", "state"],
        )  # fmt: skip
        requests = CounterMetricFamily(
            "sidecar_version_requests", "Requests routed to a version, by role.",
            labels=["version", "role"],
        )  # fmt: skip
        stable = self._service.served
        name = stable.name if stable is not None else ""
        for version in list(registry.versions.values()) if registry is not None else []:
            if version.resident or version.state.value == "failed":
                info.add_metric([name, version.name, version.state.value], 1.0)
                for role, count in list(version.requests.items()):
                    requests.add_metric([version.name, role], count)
        yield info
        yield requests


JOB_STATUSES = (
    "queued", "running", "finalizing", "completed", "failed", "cancelling", "cancelled",
)  # fmt: skip


class JobsCollector(Collector):
    """`sidecar_jobs{status}`, `sidecar_job_items_total{outcome}`, `sidecar_job_backlog_items`:
    plain values the jobs keep on the event loop, read at scrape time."""

    def __init__(self, jobs: Jobs) -> None:
        self._jobs = jobs

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        jobs = self._jobs
        counts = dict(jobs.counts)
        by_status = GaugeMetricFamily("sidecar_jobs", "Stored jobs, by status.", labels=["status"])
        for status in JOB_STATUSES:
            by_status.add_metric([status], counts.get(status, 0))
        yield by_status
        items = CounterMetricFamily(
            "sidecar_job_items", "Job items run, by outcome.", labels=["outcome"]
        )
        for outcome, count in dict(jobs.items).items():
            items.add_metric([outcome], count)
        yield items
        yield GaugeMetricFamily(
            "sidecar_job_backlog_items", "Items of unfinished jobs still to run.", jobs.backlog
        )


# GPU gauges read through NVML at scrape time. The device is looked up by its CUDA UUID, so the
# gauges describe the GPU the model runs on even when CUDA_VISIBLE_DEVICES renumbers devices (NVML
# numbers every GPU of the host). NVML may be missing altogether (a container without the
# `utility` driver capability) and a reading may be unsupported (utilisation and power on a MIG
# instance): the gauges NVML can give are exported, the others left out, each failure logged once,
# never at every scrape, and never fatal.
_READINGS: tuple[tuple[str, str, Callable[[Any, Any], float]], ...] = (
    (
        "sidecar_gpu_utilization_ratio",
        "GPU busy share over the last sample.",
        lambda nvml, handle: nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0,
    ),
    (
        "sidecar_gpu_memory_used_bytes",
        "GPU memory in use.",
        lambda nvml, handle: float(nvml.nvmlDeviceGetMemoryInfo(handle).used),
    ),
    (
        "sidecar_gpu_memory_total_bytes",
        "GPU memory in all.",
        lambda nvml, handle: float(nvml.nvmlDeviceGetMemoryInfo(handle).total),
    ),
    (
        "sidecar_gpu_power_watts",
        "GPU power draw.",
        lambda nvml, handle: nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
    ),
)


class GpuCollector(Collector):
    """The GPU gauges of one device; build it with `open`."""

    def __init__(self, nvml: Any, handle: Any, label: str) -> None:
        self._nvml = nvml
        self._handle = handle
        self._label = label
        self._failed: set[str] = set()

    @classmethod
    def open(cls, label: str, uuid: str | None, nvml: Any = None) -> GpuCollector | None:
        """The gauges of the GPU with CUDA `uuid` (else NVML index `label`); None without NVML.

        Args:
            label: the `gpu` label value: the CUDA index the model runs on.
            uuid: the CUDA device UUID, as torch gives it (with or without `GPU-`/`MIG-`).
            nvml: the NVML binding; `pynvml` unless given.
        """
        try:
            nvml = nvml or importlib.import_module("pynvml")
            nvml.nvmlInit()
            handle = _handle(nvml, label, uuid)
        except Exception as exc:  # ImportError or any NVMLError: no gauges, no crash
            logger.warning(
                "GPU gauges are off: NVML is unavailable (%s); the container needs the "
                "'utility' driver capability (NVIDIA_DRIVER_CAPABILITIES=compute,utility)",
                exc,
            )
            return None
        return cls(nvml, handle, label)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, doc, read in _READINGS:
            try:
                value = read(self._nvml, self._handle)
            except self._nvml.NVMLError as exc:
                if name not in self._failed:
                    self._failed.add(name)
                    unsupported = getattr(exc, "value", None) == self._nvml.NVML_ERROR_NOT_SUPPORTED
                    logger.log(
                        logging.INFO if unsupported else logging.WARNING,
                        "%s is not exported: NVML cannot read it (%s)",
                        name,
                        exc,
                    )
                continue
            family = GaugeMetricFamily(name, doc, labels=["gpu"])
            family.add_metric([self._label], value)
            yield family


def _handle(nvml: Any, label: str, uuid: str | None) -> Any:
    if uuid is None:
        return nvml.nvmlDeviceGetHandleByIndex(int(label))
    if uuid.startswith(("GPU-", "MIG-")):
        return nvml.nvmlDeviceGetHandleByUUID(uuid)
    try:
        return nvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
    except nvml.NVMLError:
        return nvml.nvmlDeviceGetHandleByUUID(f"MIG-{uuid}")
