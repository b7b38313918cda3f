"""The JSONL files of jobs: read by line and byte range, written at an offset and synced; and
the directory's lock.

Called on the store thread only (`JobStore`), never on the event loop.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from sidecar.errors import JobsLockedError


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


@dataclass(frozen=True)
class Survey:
    """A file's non-blank lines, and the first whose key an earlier line had (line numbers
    count from 1, blank lines too, as an editor shows them): `(line, key, earlier line)`."""

    count: int
    repeat: tuple[int, str, int] | None


def survey(path: Path, key: Callable[[bytes], str | None], limit: int) -> Survey:
    """Count a file's non-blank lines and find the first repeated `key(line)` among its first
    `limit` ones (None keys are no key; memory is bounded by `limit` keys)."""
    count, seen, repeat = 0, dict[str, int](), None
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            count += 1
            if repeat is None and count <= limit and (name := key(line)) is not None:
                if name in seen:
                    repeat = (number, name, seen[name])
                seen.setdefault(name, number)
    return Survey(count, repeat)


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


LOCKED = "another sidecar process holds the jobs directory; jobs run here once it lets go"


def lock(path: Path) -> int:
    """An exclusive lock on `path` (created), as an open descriptor; closing it lets go.

    Raises:
        JobsLockedError: another open descriptor holds it, in this process or another.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise JobsLockedError(LOCKED) from None
    return fd
