"""The JSONL files of jobs: read by line and byte range, written at an offset and synced.

Called on the store thread only (`JobStore`), never on the event loop.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path


def read_lines(path: Path, offset: int, count: int) -> list[tuple[bytes, int]]:
    """Up to `count` non-blank lines from byte `offset`, each (without its line end) with the
    offset just past it."""
    lines: list[tuple[bytes, int]] = []
    with open(path, "rb") as f:
        f.seek(offset)
        while len(lines) < count:
            line = f.readline()
            if not line:
                break
            offset += len(line)
            if line.strip():
                lines.append((line.rstrip(b"\r\n"), offset))
    return lines


def read_indexed(
    path: Path, start: tuple[int, int], wanted: tuple[int, int], end_byte: int
) -> bytes:
    """Lines `wanted` = [first, stop) of a file of one line per index, reading from `start` =
    (an index, its byte offset) no later than the first, and never past `end_byte`."""
    index, position = start
    first, stop = wanted
    out = bytearray()
    with open(path, "rb") as f:
        f.seek(position)
        while index < stop and f.tell() < end_byte:
            line = f.readline()
            if index >= first:
                out += line
            index += 1
    return bytes(out)


def read_range(path: Path, start: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(max(0, size))


def count_lines(path: Path) -> int:
    """Non-blank lines of a file."""
    count = 0
    with open(path, "rb") as f:
        for line in f:
            count += bool(line.strip())
    return count


def write_lines(path: Path, lines: Iterable[bytes]) -> None:
    """A new file of `lines`, synced."""
    with open(path, "wb") as f:
        for line in lines:
            f.write(line + b"\n")
        f.flush()
        os.fsync(f.fileno())


def write_at(path: Path, data: bytes, offset: int) -> None:
    """Write `data` at `offset` and sync: idempotent, so a rerun writes the same bytes again."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        written = 0
        while written < len(data):
            written += os.pwrite(fd, data[written:], offset + written)
        os.fsync(fd)
    finally:
        os.close(fd)


def cut(path: Path, size: int) -> None:
    """Cut a file to `size` bytes (what a crash wrote past its committed length goes)."""
    if path.exists() or size:
        with open(path, "ab") as f:
            f.truncate(size)
