"""Readers that move a load plan's chunks into place: one per target.

Each reader owns one uint8 region per file (the file's data region) and fills it chunk by chunk,
from the reader threads:
- `HostReader`: reads straight into an owned CPU allocation with `os.preadv` (no staging copy);
- `MappedReader`: maps the file copy-on-write and faults the chunk's pages in (no copy at all;
  see `loaders.mapping` for what sharing the page cache means);
- `CudaReader`: reads into a fixed pool of pinned host buffers and copies them to the device on a
  side stream, so that reads overlap with copies; a buffer is refilled only once the event
  recorded after its last copy has completed.
A region is complete when its file's last chunk has been read, except on CUDA, where it is
complete only after `finish` (every copy done).
"""

from __future__ import annotations

import os
import queue
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch

from loaders.errors import TruncatedFileError, WeightsReadError
from loaders.header import SafetensorsHeader
from loaders.mapping import map_file, mapped_region, populate

__all__ = ["Chunk", "CudaReader", "HostReader", "MappedReader", "Reader", "pread_into"]


class Chunk(Protocol):
    """A read: `length` bytes of file `file_index` at absolute offset `offset`."""

    @property
    def file_index(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def length(self) -> int: ...


class Reader(Protocol):
    """Fills `regions[i]` (file i's data region) one chunk at a time, from any thread."""

    regions: list[torch.Tensor]
    # Whether a file's region is complete as soon as its last chunk is read (else after finish).
    complete_on_read: bool

    def read(self, chunk: Chunk) -> None: ...

    def finish(self) -> None: ...


class HostReader:
    """Reads straight into one owned CPU allocation per file: no staging, no copy."""

    complete_on_read = True

    def __init__(
        self, fds: Sequence[int], paths: Sequence[Path], headers: Sequence[SafetensorsHeader]
    ) -> None:
        self._fds, self._paths, self._headers = fds, paths, headers
        self.regions = [torch.empty(h.data_bytes, dtype=torch.uint8) for h in headers]

    def read(self, chunk: Chunk) -> None:
        index = chunk.file_index
        begin = chunk.offset - self._headers[index].data_start
        dest = self.regions[index][begin : begin + chunk.length]
        pread_into(self._fds[index], self._paths[index], dest.numpy().data, chunk.offset)

    def finish(self) -> None:
        pass


class MappedReader:
    """Maps each file copy-on-write; reading a chunk faults its pages in."""

    complete_on_read = True

    def __init__(
        self, fds: Sequence[int], paths: Sequence[Path], headers: Sequence[SafetensorsHeader]
    ) -> None:
        self._paths = paths
        self._maps = [map_file(fd, path) for fd, path in zip(fds, paths, strict=True)]
        self.regions = [
            mapped_region(mapping, header)
            for mapping, header in zip(self._maps, headers, strict=True)
        ]

    def read(self, chunk: Chunk) -> None:
        index = chunk.file_index
        populate(self._maps[index], self._paths[index], chunk.offset, chunk.length)

    def finish(self) -> None:
        pass


class CudaReader:
    """Reads through pinned host buffers, copied to the device on a side stream.

    Args:
        num_buffers: staging buffers; two per reader thread let one be copied to the device
            while the other is filled.
        buffer_bytes: the largest chunk.
    """

    complete_on_read = False

    def __init__(
        self,
        fds: Sequence[int],
        paths: Sequence[Path],
        headers: Sequence[SafetensorsHeader],
        device: torch.device,
        *,
        num_buffers: int,
        buffer_bytes: int,
    ) -> None:
        self._fds, self._paths, self._headers = fds, paths, headers
        self.regions = [
            torch.empty(h.data_bytes, dtype=torch.uint8, device=device) for h in headers
        ]
        # torch.cuda.Stream and Event have no annotations on __init__.
        self._stream = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
        # The regions were allocated on the current stream; copies on ours must come after that.
        self._stream.wait_stream(torch.cuda.current_stream(device))
        self._buffers = [
            torch.empty(buffer_bytes, dtype=torch.uint8, pin_memory=True)
            for _ in range(num_buffers)
        ]
        self._views = [buffer.numpy().data for buffer in self._buffers]
        self._events: list[torch.cuda.Event | None] = [None] * num_buffers
        self._free: queue.SimpleQueue[int] = queue.SimpleQueue()
        for index in range(num_buffers):
            self._free.put(index)

    def read(self, chunk: Chunk) -> None:
        """Read a chunk through a free staging buffer into its place on the device."""
        file_index, length = chunk.file_index, chunk.length
        begin = chunk.offset - self._headers[file_index].data_start
        dest = self.regions[file_index][begin : begin + length]
        index = self._free.get()
        try:
            pending = self._events[index]
            if pending is not None:
                # The previous copy out of this buffer may still be running.
                pending.synchronize()
            path = self._paths[file_index]
            pread_into(self._fds[file_index], path, self._views[index][:length], chunk.offset)
            with torch.cuda.stream(self._stream):
                dest.copy_(self._buffers[index][:length], non_blocking=True)
                event = torch.cuda.Event()  # type: ignore[no-untyped-call]
                event.record(self._stream)
            self._events[index] = event
        finally:
            self._free.put(index)

    def finish(self) -> None:
        """Wait for every copy, so that the device regions are complete.

        Called even after a failure: the regions must not be freed while copies into them are
        queued.
        """
        self._stream.synchronize()


def pread_into(fd: int, path: Path, view: memoryview, offset: int) -> None:
    """Fill `view` from `offset`, looping over short reads."""
    done = 0
    while done < len(view):
        try:
            count = os.preadv(fd, [view[done:]], offset + done)
        except OSError as err:
            raise WeightsReadError(path, f"read failed: {err.strerror}") from err
        if count == 0:
            # The size was checked against the header; the file shrank while it was being read.
            raise TruncatedFileError(
                path, f"file ends at byte {offset + done}, before the data its header declares"
            )
        done += count
