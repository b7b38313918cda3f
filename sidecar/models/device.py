"""The torch device a model runs on: choosing it and its dtype, and reading its errors."""

from __future__ import annotations

import logging

import torch

from sidecar.models.errors import ModelLoadError

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(spec: str, *, cuda_build: bool | None = None) -> torch.device:
    """`auto` picks the first CUDA device when there is one.

    A CUDA build of torch that finds no usable device (no driver mounted, a driver too old for
    the wheel's CUDA, libraries off the path) makes `auto` fall back to the CPU: that is logged as
    a warning with torch's reason, since a GPU pod serving on its CPU is rarely what was meant.

    Args:
        spec: `auto`, `cpu`, `cuda` or `cuda:N`.
        cuda_build: whether torch was built with CUDA (None: ask torch).

    Raises:
        ModelLoadError: a CUDA device was asked for and is not there (with torch's reason).
    """
    cuda_build = torch.version.cuda is not None if cuda_build is None else cuda_build
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda:0")
        if cuda_build:
            logger.warning(
                "torch is a CUDA build (CUDA %s) but finds no usable CUDA device (%s): serving "
                "on the CPU. Set SIDECAR_DEVICE=cuda to fail instead.",
                torch.version.cuda,
                cuda_unavailable_reason(),
            )
        return torch.device("cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(f"no CUDA device is available ({cuda_unavailable_reason()})")
        if (device.index or 0) >= torch.cuda.device_count():
            raise ModelLoadError(f"only {torch.cuda.device_count()} CUDA devices exist")
    return device


def cuda_unavailable_reason() -> str:
    """Why torch sees no CUDA device, in torch's words."""
    try:
        torch.cuda.init()  # type: ignore[no-untyped-call]
    except Exception as exc:  # torch raises RuntimeError, AssertionError, ... with the reason
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{torch.cuda.device_count()} devices visible"


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """`auto` is bf16 on CUDA devices with native bf16 (Ampere and later), fp16 on older ones,
    fp32 on CPU."""
    if spec != "auto":
        return DTYPES[spec]
    if device.type == "cuda":
        return auto_cuda_dtype(torch.cuda.get_device_capability(device))
    return torch.float32


def auto_cuda_dtype(capability: tuple[int, int]) -> torch.dtype:
    """bf16 from compute capability 8.0 (Ampere) on, where tensor cores run it; fp16 before.

    `torch.cuda.is_bf16_supported()` says yes on older GPUs too, where bf16 is emulated (slow),
    and it asks about the current device rather than the chosen one.
    """
    return torch.bfloat16 if capability >= (8, 0) else torch.float16


def device_uuid(device: torch.device) -> str | None:
    """A CUDA device's UUID, which NVML resolves whatever CUDA_VISIBLE_DEVICES renumbered."""
    if device.type != "cuda":
        return None
    return str(torch.cuda.get_device_properties(device).uuid)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


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


class OnTorchDevice:
    """The device facts of `Model` for the torch families: which errors mean what."""

    device: torch.device

    def is_oom(self, exc: BaseException) -> bool:
        return isinstance(exc, torch.cuda.OutOfMemoryError)

    def is_fatal(self, exc: BaseException) -> bool:
        return self.device.type == "cuda" and is_fatal_device_error(exc)

    def release_memory(self) -> None:
        """Hand cached blocks back: device memory, and pinned host memory (staging buffers,
        pinned batches), which counts against the pod's memory and is never swapped."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            empty_host_cache = getattr(torch.accelerator, "empty_host_cache", None)  # torch 2.13
            if empty_host_cache is not None:
                empty_host_cache()
