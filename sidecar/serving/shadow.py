"""Shadow traffic: a share of stable requests run again on the shadow version, compared, never
returned.

The copy is made once the primary has its answer, and only when no other request is in flight
and the device is idle: no engine has items queued or a pass running. Otherwise it is dropped,
never queued, so it cannot delay a primary request behind it; at most `MAX_INFLIGHT` copies run
at once. A copy once started is one forward pass the device cannot interrupt: a primary request
arriving during it waits for it. Agreement:

    embeddings      mean cosine of the rows (when the dimensions match)
    classifications share of inputs given the same label (and the largest |dp| of any label)
    scores          Spearman rank correlation of the documents' scores
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from sidecar.models import Classifications, Embeddings, Inputs, Result, Scores
from sidecar.serving.versions import Version, VersionState

logger = logging.getLogger(__name__)

MAX_INFLIGHT = 4
TIMEOUT_S = 10.0
COMPARED, DROPPED, FAILED, INCOMPARABLE = "compared", "dropped", "failed", "incomparable"
OUTCOMES = (COMPARED, DROPPED, FAILED, INCOMPARABLE)


@dataclass(frozen=True)
class Agreement:
    """How far the shadow's answer agrees with the primary's: `value` in [-1, 1] (1: the same),
    by `measure`; `max_abs_diff` the largest probability difference (classifications)."""

    measure: str  # cosine, label, rank
    value: float
    max_abs_diff: float | None = None


class ShadowObserver(Protocol):
    def on_shadow(self, outcome: str, agreement: Agreement | None) -> None: ...


class Shadow:
    """Runs shadow copies for a service.

    Args:
        busy: whether the device has work queued or running now.
        observer: receives each copy's outcome and agreement (the metrics).
    """

    def __init__(self, busy: Callable[[], bool], observer: ShadowObserver | None = None) -> None:
        self._busy = busy
        self.observer = observer
        self._running: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> int:
        """Copies running now."""
        return len(self._running)

    def offer(self, version: Version, inputs: Inputs, primary: Result) -> None:
        """Run `inputs` on `version` in the background, or drop the copy (device busy, too many
        copies running, the version not ready)."""
        if (
            version.state is not VersionState.READY
            or len(self._running) >= MAX_INFLIGHT
            or self._busy()
        ):
            self._report(DROPPED, None)
            return
        version.acquire("shadow")
        task = asyncio.create_task(self._run(version, inputs, primary), name="shadow")
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run(self, version: Version, inputs: Inputs, primary: Result) -> None:
        try:
            served = version.served
            assert served is not None
            inference = await served.engine.infer(inputs, deadline=time.monotonic() + TIMEOUT_S)
        except Exception as exc:  # the shadow's failure is reported, never the client's
            logger.debug("shadow copy on version %s failed: %r", version.name, exc)
            self._report(FAILED, None)
            return
        finally:
            version.release()
        agreement = compare(primary, inference.result)
        self._report(INCOMPARABLE if agreement is None else COMPARED, agreement)

    def _report(self, outcome: str, agreement: Agreement | None) -> None:
        if self.observer is not None:
            self.observer.on_shadow(outcome, agreement)

    async def stop(self) -> None:
        for task in self._running:
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)


def compare(primary: Result, shadow: Result) -> Agreement | None:
    """The agreement of two answers to the same inputs, or None when they cannot be compared."""
    if isinstance(primary, Embeddings) and isinstance(shadow, Embeddings):
        a, b = primary.vectors, shadow.vectors
        if a.shape != b.shape or a.size == 0:
            return None
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        cosines = np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)
        return Agreement("cosine", float(np.mean(cosines)))
    if isinstance(primary, Classifications) and isinstance(shadow, Classifications):
        pairs = list(zip(primary.items, shadow.items, strict=True))
        if not pairs:
            return None
        same = sum(p.label == s.label for p, s in pairs) / len(pairs)
        diffs = [abs(p.scores[k] - s.scores.get(k, 0.0)) for p, s in pairs for k in p.scores]
        return Agreement("label", same, max(diffs, default=0.0))
    if isinstance(primary, Scores) and isinstance(shadow, Scores):
        if primary.values.shape != shadow.values.shape or primary.values.size < 2:
            return None
        return Agreement("rank", _spearman(primary.values, shadow.values))
    return None


def _spearman(a: Iterable[float], b: Iterable[float]) -> float:
    ranks_a = np.argsort(np.argsort(np.asarray(a, dtype=np.float64)))
    ranks_b = np.argsort(np.argsort(np.asarray(b, dtype=np.float64)))
    n = len(ranks_a)
    d2 = float(np.sum((ranks_a - ranks_b) ** 2))
    return 1.0 - 6.0 * d2 / (n * (n * n - 1))
