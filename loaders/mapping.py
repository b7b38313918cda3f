"""Private (copy-on-write) mappings of safetensors files: the zero-copy CPU path.

A mapped region shares the page cache's pages instead of copying them into fresh memory, so a warm
load costs page-table entries only. Its tensors are not owned: a write to one copies that page for
the process alone (the file never changes), but a file changed in place by another process shows
through, and one truncated under the mapping makes a later access fault (SIGBUS). That is why
`load_weights` maps by default only on a CPU with every file on local storage, where model
volumes are mounted read-only and tools that replace a file write a new inode; on a network
filesystem the page cache may drop pages under memory pressure and fault them back one round
trip at a time, long after the load, so there it reads into owned memory.
"""

from __future__ import annotations

import errno
import mmap
from pathlib import Path

import torch

from loaders.errors import TruncatedFileError, WeightsReadError
from loaders.header import SafetensorsHeader

__all__ = ["map_file", "mapped_region", "populate"]

# Linux 5.14: fault the pages of a range in now (reading them if they are not cached), writable
# mappings included, without making them dirty. Python's mmap module names it from 3.13 only.
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)


def map_file(fd: int, path: Path) -> mmap.mmap:
    """Map a whole file privately: readable, and writable without writing to the file."""
    try:
        return mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
    except OSError as err:
        raise WeightsReadError(path, f"cannot map: {err.strerror}") from err


def mapped_region(mapping: mmap.mmap, header: SafetensorsHeader) -> torch.Tensor:
    """The data region of a mapped file as a uint8 tensor that keeps the mapping alive."""
    if header.data_bytes == 0:
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(
        mapping, dtype=torch.uint8, count=header.data_bytes, offset=header.data_start
    )


def populate(mapping: mmap.mmap, path: Path, offset: int, length: int) -> None:
    """Fault in the pages of `length` bytes at `offset`, reading them from storage if needed."""
    start = offset - offset % mmap.PAGESIZE
    try:
        mapping.madvise(_MADV_POPULATE_READ, start, length + offset - start)
    except OSError as err:
        if err.errno == errno.EINVAL:
            # A kernel before 5.14: ask for readahead; the first access faults the rest in.
            mapping.madvise(mmap.MADV_WILLNEED, start, length + offset - start)
        elif err.errno == errno.EFAULT:
            raise TruncatedFileError(
                path, f"file ends before byte {offset + length}, which its header declares"
            ) from err
        else:
            raise WeightsReadError(path, f"read failed: {err.strerror}") from err
