"""Choosing the device and dtype: what `auto` does where a GPU is missing or old."""

from __future__ import annotations

import logging

import pytest
import torch

from sidecar.models import ModelLoadError
from sidecar.models.device import auto_cuda_dtype, resolve_device, resolve_dtype


def test_auto_on_a_cuda_build_without_a_device_warns_with_the_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # This machine has no GPU: a CUDA build of torch would find none either, and say why.
    with caplog.at_level(logging.WARNING, logger="sidecar.models.device"):
        assert resolve_device("auto", cuda_build=True) == torch.device("cpu")
    (record,) = caplog.records
    assert "finds no usable CUDA device" in record.getMessage()
    assert "SIDECAR_DEVICE=cuda" in record.getMessage()


def test_auto_on_a_cpu_build_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sidecar.models.device"):
        assert resolve_device("auto", cuda_build=False) == torch.device("cpu")
    assert caplog.records == []


def test_cuda_asked_for_without_one_fails_with_torchs_reason() -> None:
    with pytest.raises(ModelLoadError, match=r"no CUDA device is available \(.+\)"):
        resolve_device("cuda")


@pytest.mark.parametrize(
    ("capability", "dtype"),
    [
        ((6, 1), torch.float16),
        ((7, 5), torch.float16),
        ((8, 0), torch.bfloat16),
        ((9, 0), torch.bfloat16),
    ],
)
def test_auto_dtype_is_bf16_only_where_the_gpu_runs_it_natively(
    capability: tuple[int, int], dtype: torch.dtype
) -> None:
    assert auto_cuda_dtype(capability) == dtype


def test_explicit_and_cpu_dtypes() -> None:
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
