"""Hand back the pages of loaded regions that no kept tensor uses.

`load_weights` reads each file into one region and returns views of it, so a single tensor kept
by a model keeps the whole region alive: tensors a model never uses (pooling or pre-training
heads) and tensors it only copied (fused or cast) stay resident for the process's lifetime.
`release_unreferenced` tells the kernel that the pages between the kept tensors are not needed
(`MADV_DONTNEED`): an owned region's pages are freed (they would read back as zeros), a mapped
region's are dropped from the process (they would read back from the file). Nothing reads them
again: every tensor of the region outside the kept ones is dead once the caller drops it.

Host memory only. A device allocation cannot be freed in part; a CUDA model that keeps views of
its region keeps all of it (a cast or copied model keeps none of it).
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import os
from collections.abc import Iterable

import torch

__all__ = ["release_unreferenced"]

logger = logging.getLogger(__name__)

_PAGE = mmap.PAGESIZE
_MADV_DONTNEED = 4  # Linux
_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


def release_unreferenced(loaded: Iterable[torch.Tensor], kept: Iterable[torch.Tensor]) -> int:
    """Release the host pages of the regions behind `loaded` that no tensor of `kept` covers.

    Args:
        loaded: the tensors `load_weights` returned (views of its regions).
        kept: every tensor still in use (a model's parameters and buffers); tensors outside
            the regions are ignored.

    Returns:
        The bytes released (whole pages between kept tensors).
    """
    regions: dict[int, tuple[int, int]] = {}  # storage address -> (address, size)
    for tensor in loaded:
        if tensor.device.type == "cpu":
            storage = tensor.untyped_storage()
            regions[storage.data_ptr()] = (storage.data_ptr(), storage.nbytes())
    used: dict[int, list[tuple[int, int]]] = {address: [] for address in regions}
    for tensor in kept:
        spans = used.get(tensor.untyped_storage().data_ptr())
        if spans is not None and tensor.numel():
            start = tensor.data_ptr()
            spans.append((start, start + _extent(tensor)))
    released = 0
    for address, (start, size) in regions.items():
        released += _release_gaps(start, start + size, sorted(used[address]))
    if released:
        logger.debug("released %d bytes of loaded weights no tensor uses", released)
    return released


def _extent(tensor: torch.Tensor) -> int:
    """Bytes from a tensor's first element to past its last, whatever its strides."""
    if not tensor.numel():
        return 0
    shape, strides = tensor.shape, tensor.stride()
    last = sum((dim - 1) * stride for dim, stride in zip(shape, strides, strict=True))
    return (last + 1) * tensor.element_size()


def _release_gaps(begin: int, end: int, spans: list[tuple[int, int]]) -> int:
    released = 0
    cursor = begin
    for start, stop in [*spans, (end, end)]:
        released += _advise(cursor, start)
        cursor = max(cursor, stop)
    return released


def _advise(start: int, stop: int) -> int:
    """MADV_DONTNEED on the whole pages within [start, stop)."""
    first = -(-start // _PAGE) * _PAGE
    last = stop // _PAGE * _PAGE
    if last <= first:
        return 0
    if _libc.madvise(first, last - first, _MADV_DONTNEED) != 0:
        err = ctypes.get_errno()
        logger.debug("madvise failed: %s", os.strerror(err))
        return 0
    return last - first
