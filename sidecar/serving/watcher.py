"""A model root: found at start-up, then watched (its version directories and desired state,
re-read off the loop).

A change (a version renamed into place, the desired state edited, a failed version's files
replaced) updates the registry's desired state and wakes its reconcile loop.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import loaders
from loaders import DesiredState
from sidecar.errors import StartupError
from sidecar.serving.registry import Registry
from sidecar.serving.versions import VersionState

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Root:
    """A model root as found at start-up: its versions, oldest first, and desired state."""

    path: Path
    names: list[str]
    desired_text: bytes | None
    desired: DesiredState

    @classmethod
    def discover(cls, spec: str | None, desired_file: Path | None) -> Root | None:
        """SIDECAR_MODEL as a model root, or None for a snapshot (blocking).

        Raises:
            StartupError: an invalid desired state, or a root without any version yet.
        """
        if spec is None or spec.startswith(loaders.HUB_SCHEME):
            return None
        path = Path(spec).absolute()
        if not loaders.is_model_root(path):
            return None
        names = loaders.scan_versions(path)
        try:
            text, desired = loaders.read_desired(path, desired_file)
        except loaders.VersionsFileError as exc:
            raise StartupError(f"{loaders.DESIRED_FILE}: {exc}") from None
        if not names:
            raise StartupError("the model root holds no version directory yet")
        logger.info("model root with versions %s", names)
        return cls(path, names, text, desired or DesiredState())


class RootWatcher:
    """Re-reads a registry's model root, on a thread of its own."""

    def __init__(self, registry: Registry, root: Path, desired_file: Path | None = None) -> None:
        self.registry = registry
        self.root = root
        self.desired_file = desired_file  # None: <root>/versions.json
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="versions")
        self._names = sorted(registry.versions, key=loaders.version_order)

    async def rescan(self, *, retry: bool = False) -> bool:
        """Re-read the root's versions and versions.json (off the loop); True if the desired
        state or the versions changed (or `retry`: every failed version is tried again).

        Raises:
            VersionsFileError: versions.json is not valid (the desired state is kept).
        """
        registry, root = self.registry, self.root
        loop = asyncio.get_running_loop()
        failed = [v.name for v in registry.versions.values() if v.state is VersionState.FAILED]
        names, (text, desired), prints = await loop.run_in_executor(
            self._executor, _scan, root, self.desired_file, failed
        )
        before = (list(registry.versions), registry.desired)
        for name, version in list(registry.versions.items()):
            if name not in names and version.state in (VersionState.UNLOADED, VersionState.FAILED):
                del registry.versions[name]
        for name, print_ in prints.items():
            if retry or print_ != registry.versions[name].failed_fingerprint:
                registry.retry(name)
        if desired is not None:
            desired = _without_absent(desired, names, registry.desired.stable)
        # The file wins over the admin's last word when it changes, or when the versions under
        # the root do (one it names may have arrived); without a file the newest is stable.
        if text != registry.desired_text or names != self._names:
            registry.desired_text = text
            registry.adopt(names, desired or DesiredState(resident=registry.desired.resident))
        else:
            registry.adopt(names, registry.desired)
        self._names = names
        return registry.retrying or before != (list(registry.versions), registry.desired)

    async def watch(self, poll_s: float) -> None:
        """Re-read the root every `poll_s` seconds; a change wakes the loop (until cancelled)."""
        while True:
            await asyncio.sleep(poll_s)
            try:
                changed = await self.rescan()
            except loaders.VersionsFileError as exc:
                logger.error("%s: %s (the desired state is kept)", loaders.DESIRED_FILE, exc)
                continue
            if changed:
                self.registry.wake()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _scan(
    root: Path, desired_file: Path | None, failed: list[str]
) -> tuple[list[str], tuple[bytes | None, DesiredState | None], dict[str, object]]:
    """The root's versions, its desired state, and the failed versions' files (blocking)."""
    names = loaders.scan_versions(root)
    desired = loaders.read_desired(root, desired_file)
    prints: dict[str, object] = {n: loaders.fingerprint(root / n) for n in failed if n in names}
    return names, desired, prints


def _without_absent(desired: DesiredState, names: list[str], current: str | None) -> DesiredState:
    """The desired state less the versions absent from the root (logged): the file may name a
    version still being copied; the current stable stays until it is there."""
    known = set(names)
    for name in desired.named():
        if name not in known:
            logger.warning("%s names version %s, absent from the root", loaders.DESIRED_FILE, name)
    return DesiredState(
        stable=desired.stable if desired.stable in known else current,
        canary=desired.canary if desired.canary and desired.canary.version in known else None,
        shadow=desired.shadow if desired.shadow and desired.shadow.version in known else None,
        resident=desired.resident,
    )
