"""Streaming of safetensors data to a device in large concurrent reads.

The idea is the Run:ai model streamer's: once every header is validated, each file's data region is
split into file-contiguous chunks of `chunk_bytes`, regardless of tensor boundaries (one plan for
every target), and a thread pool reads them with `os.preadv` (which releases the GIL, so reads
overlap). Each file's data region lands in one uint8 region on the target; tensors are typed views
of its bytes. How a chunk gets there is the business of one reader per target
(`loaders.readers`): straight into owned CPU memory, faulted into a private mapping (the default
on a CPU with local storage), or staged through pinned buffers to a CUDA device. Returned tensors
never alias a buffer that is reused.

Files pinned to a SHA-256 digest are hashed from what was read (the header bytes and the data
region), never read twice; on CPU each file is hashed in a worker as soon as its last chunk lands,
overlapping with the reads of the files after it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import torch

from loaders.digests import pinned_files, sha256_of_loaded
from loaders.errors import DigestMismatchError, DuplicateTensorError, WeightsReadError
from loaders.header import DTYPES, SafetensorsHeader, TensorInfo, read_header_and_bytes_fd
from loaders.progress import ProgressLog
from loaders.readers import CudaReader, HostReader, MappedReader, Reader
from loaders.storage import is_network_filesystem

__all__ = ["LoadStats", "ReadChunk", "load_weights", "plan_chunks"]

logger = logging.getLogger(__name__)

_READS_PER_THREAD = 4
_MIN_READ_BYTES = 1 << 20
# Pinned host memory a CUDA load may stage through (see `staging_buffers`).
MAX_STAGING_BYTES = 256 << 20


@dataclass(frozen=True)
class LoadStats:
    """Figures of one weight load."""

    num_bytes: int
    seconds: float
    num_tensors: int
    num_files: int
    num_verified_files: int = 0
    mapped: bool = False  # zero-copy mapping of the page cache, not reads into owned memory

    @property
    def gbps(self) -> float:
        """Throughput in gigabytes (1e9 bytes) per second."""
        return self.num_bytes / self.seconds / 1e9 if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class ReadChunk:
    """One read: `length` bytes of file `file_index`, starting at absolute offset `offset`."""

    file_index: int
    offset: int
    length: int


def plan_chunks(regions: Sequence[tuple[int, int]], chunk_bytes: int) -> list[ReadChunk]:
    """Split data regions into file-contiguous reads of at most `chunk_bytes`.

    Args:
        regions: per file, the `(start, end)` byte range of its data region.
        chunk_bytes: the largest read.

    Returns:
        Reads that cover every region exactly once, in file then offset order.
    """
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be >= 1, got {chunk_bytes}")
    return [
        ReadChunk(file_index=index, offset=offset, length=min(chunk_bytes, end - offset))
        for index, (start, end) in enumerate(regions)
        for offset in range(start, end, chunk_bytes)
    ]


def load_weights(
    files: Sequence[Path],
    *,
    device: torch.device | str = "cpu",
    num_threads: int = 8,
    chunk_bytes: int = 16 << 20,
    progress: Callable[[int, int], None] | None = None,
    expected_sha256: Mapping[str, str] | None = None,
    mapped: bool | None = None,
) -> tuple[dict[str, torch.Tensor], LoadStats]:
    """Load every tensor of safetensors files onto a device.

    All headers are validated before any data is read, so a bad file fails fast. A load that takes
    more than a second logs its progress at INFO about once a second; every load logs one summary.

    Args:
        files: safetensors files, e.g. the shards of one checkpoint.
        device: where the tensors go.
        num_threads: concurrent reads.
        chunk_bytes: the largest read (and pinned staging buffer on CUDA); a small load uses
            smaller reads, down to 1 MiB, so that every thread has several.
        progress: called as `progress(bytes_done, bytes_total)` after each chunk, always from the
            calling thread.
        expected_sha256: SHA-256 hex digests of whole files (header included) by file name, as
            `recorded_digests` gives them; files not named are not checked.
        mapped: CPU only: map the files copy-on-write and fault their pages in with the same
            chunked parallel reads, instead of reading into owned memory. No allocation and no
            copy, but the tensors share the page cache (see `loaders.mapping`): for read-only
            local storage, never a network filesystem. None (the default) maps on the CPU when
            every file is on local storage (`loaders.storage`) and reads eagerly otherwise.

    Returns:
        The tensors by name, in the files' dtypes, and the load figures.

    Raises:
        CorruptWeightsError: a file is not valid safetensors, or a name is in two files.
        DigestMismatchError: a pinned file's digest differs (a CorruptWeightsError).
        WeightsReadError: a file cannot be opened or read.
        ValueError: a bad argument, or a pin that is not a digest or names no file to load.
    """
    if num_threads < 1 or chunk_bytes < 1:
        raise ValueError(f"num_threads and chunk_bytes must be >= 1: {num_threads}, {chunk_bytes}")
    target = torch.device(device)
    if target.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be a cpu or cuda device, got {target}")
    if mapped and target.type != "cpu":
        raise ValueError(f"mapped loads are for the cpu device only, got {target}")
    paths = [Path(file) for file in files]
    if mapped is None:
        mapped = target.type == "cpu" and not any(map(is_network_filesystem, paths))
    pins = pinned_files(expected_sha256 or {}, paths)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        fds = [_open(path, stack) for path in paths]
        opened = [read_header_and_bytes_fd(fd, path) for fd, path in zip(fds, paths, strict=True)]
        headers = [header for header, _ in opened]
        # Only pinned files keep their header bytes: a header may be up to 100 MB.
        heads = {index: opened[index][1] for index in pins}
        del opened
        _check_unique_names(headers)
        total = sum(h.data_bytes for h in headers)
        chunks = plan_chunks(
            [(h.data_start, h.file_size) for h in headers],
            _read_size(total, num_threads, chunk_bytes),
        )
        reader = _reader(fds, paths, headers, target, mapped, chunks, num_threads)
        digests = stack.enter_context(
            _Digests(heads, pins, reader.regions, chunk_bytes, num_threads)
        )
        remaining = [h.data_bytes for h in headers]
        _read_and_hash(chunks, reader, digests, remaining, num_threads, started, progress)
        digests.verify(paths)
        regions = reader.regions
    tensors = {
        info.name: _typed_view(region, header, info)
        for region, header in zip(regions, headers, strict=True)
        for info in header.tensors
    }
    stats = LoadStats(
        num_bytes=total,
        seconds=time.perf_counter() - started,
        num_tensors=len(tensors),
        num_files=len(headers),
        num_verified_files=len(pins),
        mapped=mapped,
    )
    logger.info(
        "loaded %d tensors from %d files: %d bytes in %.3f s (%.2f GB/s) to %s (%s), "
        "%d sha256-verified",
        stats.num_tensors,
        stats.num_files,
        stats.num_bytes,
        stats.seconds,
        stats.gbps,
        target,
        "mapped" if mapped else "read",
        stats.num_verified_files,
    )
    return tensors, stats


def _reader(
    fds: Sequence[int],
    paths: Sequence[Path],
    headers: Sequence[SafetensorsHeader],
    target: torch.device,
    mapped: bool,
    chunks: Sequence[ReadChunk],
    num_threads: int,
) -> Reader:
    if mapped:
        return MappedReader(fds, paths, headers)
    if target.type == "cuda":
        largest = max((chunk.length for chunk in chunks), default=0)
        return CudaReader(
            fds,
            paths,
            headers,
            target,
            num_buffers=staging_buffers(num_threads, largest, len(chunks)),
            buffer_bytes=largest,
        )
    return HostReader(fds, paths, headers)


def _read_and_hash(
    chunks: Sequence[ReadChunk],
    reader: Reader,
    digests: _Digests,
    remaining: list[int],
    num_threads: int,
    started: float,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Read every chunk; hash each file once its region is complete; report progress."""
    total = sum(remaining)
    done = 0
    report = ProgressLog(total, started=started)

    def chunk_done(chunk: ReadChunk) -> None:
        nonlocal done
        done += chunk.length
        remaining[chunk.file_index] -= chunk.length
        if reader.complete_on_read and remaining[chunk.file_index] == 0:
            digests.start(chunk.file_index)
        if progress is not None:
            progress(done, total)
        report.update(done)

    try:
        if reader.complete_on_read:
            for index in (index for index, size in enumerate(remaining) if size == 0):
                digests.start(index)
        _read_all(chunks, reader.read, num_threads, chunk_done)
    finally:
        reader.finish()
    if not reader.complete_on_read:
        for index in range(len(remaining)):
            digests.start(index)


class _Digests:
    """SHA-256 of the pinned files, each hashed in a worker as soon as its region is complete."""

    def __init__(
        self,
        heads: Mapping[int, bytes],
        pins: Mapping[int, str],
        regions: Sequence[torch.Tensor],
        piece_bytes: int,
        num_threads: int,
    ) -> None:
        self._heads, self._pins, self._regions = heads, pins, regions
        self._piece_bytes = piece_bytes
        self._pool = (
            ThreadPoolExecutor(min(num_threads, len(pins)), "loaders-hash") if pins else None
        )
        self._futures: dict[int, Future[str]] = {}

    def __enter__(self) -> _Digests:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # On failure, hashes not yet started are dropped; on success none are left.
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def start(self, index: int) -> None:
        if self._pool is not None and index in self._pins:
            self._futures[index] = self._pool.submit(
                sha256_of_loaded, self._heads[index], self._regions[index], self._piece_bytes
            )

    def verify(self, paths: Sequence[Path]) -> None:
        for index in sorted(self._futures):
            actual = self._futures[index].result()
            if actual != self._pins[index]:
                raise DigestMismatchError(paths[index], expected=self._pins[index], actual=actual)


def staging_buffers(num_threads: int, buffer_bytes: int, num_chunks: int) -> int:
    """Pinned staging buffers for a CUDA load: two per reader, at most MAX_STAGING_BYTES in all.

    Two per reader let one be copied to the device while the other is filled; past the cap,
    readers wait for a free buffer rather than pin more host memory (pinned pages are taken from
    the pod's memory and never swapped). Never fewer than two, never more than there are chunks.
    """
    fit = MAX_STAGING_BYTES // max(buffer_bytes, 1)
    return max(1, min(2 * num_threads, num_chunks, max(fit, 2)))


def _read_size(total_bytes: int, num_threads: int, chunk_bytes: int) -> int:
    """`chunk_bytes`, or less so that each thread gets `_READS_PER_THREAD` reads to overlap.

    On network storage a read costs round trips whatever its size, so idle threads are lost
    throughput: 90 MB in 16 MB chunks would keep only 6 of 8 threads busy, and none for the tail.
    """
    spread = -(-total_bytes // (num_threads * _READS_PER_THREAD))
    return min(chunk_bytes, max(spread, _MIN_READ_BYTES))


def _open(path: Path, stack: contextlib.ExitStack) -> int:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as err:
        raise WeightsReadError(path, f"cannot open: {err.strerror}") from err
    stack.callback(os.close, fd)
    return fd


def _check_unique_names(headers: Sequence[SafetensorsHeader]) -> None:
    owner: dict[str, int] = {}
    for index, header in enumerate(headers):
        for info in header.tensors:
            first = owner.setdefault(info.name, index)
            if first != index:
                raise DuplicateTensorError(
                    header.path, f"also in {headers[first].path.name}", tensor=info.name
                )


def _read_all(
    chunks: Sequence[ReadChunk],
    read_chunk: Callable[[ReadChunk], None],
    num_threads: int,
    chunk_done: Callable[[ReadChunk], None],
) -> None:
    """Read every chunk on a pool; call `chunk_done` for each, in the calling thread."""
    with ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix="loaders-read") as pool:
        futures = {pool.submit(read_chunk, chunk): chunk for chunk in chunks}
        try:
            for future in as_completed(futures):
                future.result()
                chunk_done(futures[future])
        except BaseException:
            # Leaving the pool waits for reads in flight; the queued ones must not start.
            for future in futures:
                future.cancel()
            raise


def _typed_view(region: torch.Tensor, header: SafetensorsHeader, info: TensorInfo) -> torch.Tensor:
    dtype = DTYPES[info.dtype]
    begin = info.start - header.data_start
    raw = region[begin : begin + (info.end - info.start)]
    if begin % dtype.itemsize:
        # view(dtype) needs a storage offset aligned to the item size: give it its own allocation.
        raw = raw.clone()
    return raw.view(dtype).reshape(info.shape)
