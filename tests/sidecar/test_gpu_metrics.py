"""GPU gauges through NVML: found by UUID, partial readings exported, missing NVML harmless.

NVML is a third-party driver library: where a test needs a GPU's answers on this CPU-only
machine it stands in a small fake of the NVML binding; the real binding is used where there is
none to find.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from sidecar.metrics import GpuCollector

UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


class FakeNvml:
    """A MIG instance as NVML shows it: memory readable, utilisation and power not supported."""

    NVMLError = pynvml.NVMLError
    NVML_ERROR_NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED

    def __init__(self, known: str) -> None:
        self.known = known
        self.looked_up: list[str] = []

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        self.looked_up.append(uuid)
        if uuid != self.known:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return "handle"

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        raise AssertionError("looked up by index, not by UUID")

    def nvmlDeviceGetUtilizationRates(self, handle: str) -> Any:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> Any:
        return SimpleNamespace(used=2 << 30, total=10 << 30)

    def nvmlDeviceGetPowerUsage(self, handle: str) -> int:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)


def scrape(collector: GpuCollector) -> str:
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode()


def test_without_nvml_the_gauges_are_off_and_nothing_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # This machine has the binding but no driver: nvmlInit fails as in a container without the
    # 'utility' capability.
    with caplog.at_level(logging.WARNING, logger="sidecar.metrics"):
        assert GpuCollector.open("0", UUID) is None
    assert "NVIDIA_DRIVER_CAPABILITIES" in caplog.text


def test_a_mig_instance_exports_what_nvml_can_read_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    nvml = FakeNvml(known=f"MIG-{UUID}")
    collector = GpuCollector.open("1", UUID, nvml)
    assert collector is not None
    assert nvml.looked_up == [f"GPU-{UUID}", f"MIG-{UUID}"]
    with caplog.at_level(logging.INFO, logger="sidecar.metrics"):
        first, second = scrape(collector), scrape(collector)
    for text in (first, second):
        assert 'sidecar_gpu_memory_used_bytes{gpu="1"} 2.147483648e+09' in text
        assert 'sidecar_gpu_memory_total_bytes{gpu="1"}' in text
        assert "sidecar_gpu_utilization_ratio{" not in text
        assert "sidecar_gpu_power_watts{" not in text
    notes = [r for r in caplog.records if "is not exported" in r.getMessage()]
    assert len(notes) == 2 and all(r.levelno == logging.INFO for r in notes)


def test_a_full_gpu_is_found_by_its_uuid_whatever_the_cuda_index() -> None:
    nvml = FakeNvml(known=f"GPU-{UUID}")
    nvml.nvmlDeviceGetUtilizationRates = lambda handle: SimpleNamespace(gpu=87)  # type: ignore[method-assign]
    nvml.nvmlDeviceGetPowerUsage = lambda handle: 250_000  # type: ignore[method-assign]
    collector = GpuCollector.open("0", f"GPU-{UUID}", nvml)
    assert collector is not None and nvml.looked_up == [f"GPU-{UUID}"]
    text = scrape(collector)
    assert 'sidecar_gpu_utilization_ratio{gpu="0"} 0.87' in text
    assert 'sidecar_gpu_power_watts{gpu="0"} 250.0' in text
