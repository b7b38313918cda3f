"""A versioned model root: version directories side by side, and the desired state beside them.

    /models/sentiment/            the root (SIDECAR_MODEL)
        7/  8/                    versions: snapshot directories named [A-Za-z0-9._-]{1,64}
        .tmp-9/                   ignored: a copy tool writes here and renames when complete
        versions.json             optional desired state (a ConfigMap works)

`versions.json` reads `{"stable": "7", "canary": {"version": "8", "percent": 10},
"shadow": {"version": "8", "percent": 100}, "resident": 2}`; every key is optional. Without
a stable version named, the newest one (numeric-aware order: 10 after 9) is stable.

A directory holding a model's own files (config.json, weights, model.onnx) is a snapshot, not a
root, even when it has subdirectories (1_Pooling/).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loaders.errors import LoaderError

__all__ = [
    "DESIRED_FILE",
    "MAX_RESIDENT",
    "DesiredState",
    "Share",
    "VersionsFileError",
    "fingerprint",
    "is_model_root",
    "read_desired",
    "scan_versions",
    "version_order",
]

DESIRED_FILE = "versions.json"
VERSION_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_RESIDENT = 16
# A directory holding any of these is a snapshot: it serves as one version.
_SNAPSHOT_FILES = (
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model.onnx",
)
_MAX_DESIRED_BYTES = 64 * 1024
_KEYS = ("stable", "canary", "shadow", "resident")


class VersionsFileError(LoaderError):
    """A desired state (versions.json, or the same document sent to the admin API) that is not
    valid; the message says what and never carries a path."""


@dataclass(frozen=True)
class Share:
    """A version and the percentage of requests it takes (0 to 100)."""

    version: str
    percent: float


@dataclass(frozen=True)
class DesiredState:
    """What the operator wants: the stable version (None: the newest), a canary and a shadow
    share, and how many versions may stay loaded (previous stables kept for rollback)."""

    stable: str | None = None
    canary: Share | None = None
    shadow: Share | None = None
    resident: int = 1

    def named(self) -> list[str]:
        """The versions this state names, stable first, each once."""
        names = [self.stable, *(s.version for s in (self.canary, self.shadow) if s is not None)]
        return list(dict.fromkeys(name for name in names if name is not None))

    @classmethod
    def parse(cls, data: Any) -> DesiredState:
        """A desired state from its JSON document (already decoded).

        Raises:
            VersionsFileError: a document that is not an object, an unknown key, a version
                name or percentage out of bounds, a resident count out of 1..16.
        """
        if not isinstance(data, dict):
            raise VersionsFileError("the desired state must be a JSON object")
        unknown = sorted(str(key)[:64] for key in data if key not in _KEYS)
        if unknown:
            raise VersionsFileError(f"unknown keys {unknown}; accepted: {list(_KEYS)}")
        stable = data.get("stable")
        if stable is not None:
            stable = _version_name(stable, "stable")
        resident = data.get("resident", 1)
        if (
            not isinstance(resident, int)
            or isinstance(resident, bool)
            or not 1 <= resident <= MAX_RESIDENT
        ):
            raise VersionsFileError(f"'resident' must be an integer from 1 to {MAX_RESIDENT}")
        return cls(stable, _share(data, "canary"), _share(data, "shadow"), resident)

    @classmethod
    def decode(cls, text: bytes) -> DesiredState:
        """A desired state from JSON text.

        Raises:
            VersionsFileError: text that is not JSON, or a document `parse` refuses.
        """
        if len(text) > _MAX_DESIRED_BYTES:
            raise VersionsFileError(f"the desired state is over {_MAX_DESIRED_BYTES} bytes")
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise VersionsFileError(f"{DESIRED_FILE} is not JSON ({exc})") from None
        return cls.parse(data)

    def public(self) -> dict[str, Any]:
        """The document form, as `parse` reads it."""
        body: dict[str, Any] = {"stable": self.stable, "resident": self.resident}
        for key, share in (("canary", self.canary), ("shadow", self.shadow)):
            body[key] = (
                None if share is None else {"version": share.version, "percent": share.percent}
            )
        return body


def _version_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not VERSION_NAME.fullmatch(value) or value[0] == ".":
        shown = repr(value)[:80]
        raise VersionsFileError(
            f"'{where}' must be a version name ([A-Za-z0-9._-], 1 to 64 characters, not starting "
            f"with '.'), not {shown}"
        )
    return value


def _share(data: dict[str, Any], key: str) -> Share | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"version", "percent"}:
        raise VersionsFileError(f'\'{key}\' must be an object {{"version": ..., "percent": ...}}')
    version = _version_name(value.get("version"), f"{key}.version")
    percent = value.get("percent", 100 if key == "shadow" else 0)
    if (
        not isinstance(percent, int | float)
        or isinstance(percent, bool)
        or not math.isfinite(percent)
        or not 0 <= percent <= 100
    ):
        raise VersionsFileError(f"'{key}.percent' must be a number from 0 to 100")
    return Share(version, float(percent))


def is_model_root(path: Path) -> bool:
    """True for a local directory that holds versions rather than a model's own files."""
    if not path.is_dir() or any((path / name).exists() for name in _SNAPSHOT_FILES):
        return False
    return (path / DESIRED_FILE).is_file() or bool(scan_versions(path))


def scan_versions(root: Path) -> list[str]:
    """The version directories under `root`, oldest first (numeric-aware); dot-dirs ignored."""
    try:
        entries = list(os.scandir(root))
    except OSError:
        return []
    names = [
        entry.name
        for entry in entries
        if entry.is_dir() and not entry.name.startswith(".") and VERSION_NAME.fullmatch(entry.name)
    ]
    return sorted(names, key=version_order)


def version_order(name: str) -> tuple[tuple[int, int | str], ...]:
    """A sort key comparing digit runs as numbers: 2 < 10, 1.9 < 1.10, v2 < v10."""
    parts = re.findall(r"\d+|\D+", name)
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in parts)


def read_desired(root: Path, path: Path | None = None) -> tuple[bytes | None, DesiredState | None]:
    """The desired state as (raw bytes, parsed); (None, None) when there is none.

    Args:
        root: the model root; its versions.json is read unless `path` names another file (a
            ConfigMap mounted beside the root).

    Raises:
        VersionsFileError: the file cannot be read or is not a valid desired state.
    """
    path = path or root / DESIRED_FILE
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        raise VersionsFileError(f"{DESIRED_FILE} cannot be read ({exc.strerror})") from None
    return text, DesiredState.decode(text)


def fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """(name, size, mtime) of a version's files: a failed version is retried when it changes."""
    found: list[tuple[str, int, int]] = []
    for base, _dirs, files in os.walk(directory):
        for name in files:
            try:
                stat = os.stat(os.path.join(base, name))
            except OSError:
                continue
            found.append((os.path.relpath(os.path.join(base, name), directory), stat.st_size,
                          stat.st_mtime_ns))  # fmt: skip
    return tuple(sorted(found))
