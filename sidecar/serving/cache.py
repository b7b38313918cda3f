"""The response cache (SIDECAR_CACHE_MAX_ITEMS): per-item forward outputs of identical inputs.

An entry is one item's forward output, keyed by the model version it came from (a scope: a new
one for every engine, so for every load of a model, and a swap never serves the old version's
outputs) and a digest of the bytes the model says fully determine that output
(`Model.cache_key`: the token ids after truncation, a pair's ids and segments, a tensor row's
dtype, shape and bytes). Per-request choices applied after the forward pass (normalisation,
raw scores, the outputs asked for) are `finish`'s and apply to a hit as to a miss, so requests
that differ only in them share entries; choices that change the forward pass's input
(truncation) change the key.

Bounded by item count, least recently used first out. An entry holds its output (an embedding:
its dimension x 4 bytes, 1.5 KiB for 384; a rerank score: 4 bytes; a tensor row: its size),
a 32-byte digest and about 300 bytes of Python objects; `num_bytes` counts the outputs and
digests. Outputs are copied into read-only arrays when stored: an entry never keeps a whole
batch's output alive, and nothing that reads it can change it.

Touched only on the event loop (no lock). Identical items in flight at once are each computed:
the first stored stays, the later ones are dropped.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

import numpy as np

DIGEST_BYTES = 32

# What `lookup` gives for an item not in the cache.
MISS: Final = object()

# One key: (scope, digest of the model's key bytes).
Key = tuple[int, bytes]


class ResponseCache:
    """An LRU map from (model version, item) to the item's frozen forward output.

    Args:
        max_items: the most entries held (at least 1).
    """

    def __init__(self, max_items: int) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, not {max_items}")
        self.max_items = max_items
        self.hits = 0
        self.misses = 0
        self.num_bytes = 0
        self._entries: OrderedDict[Key, tuple[Any, int]] = OrderedDict()
        self._scopes = itertools.count(1)

    def __len__(self) -> int:
        return len(self._entries)

    def new_scope(self) -> int:
        """A scope for one loaded model version, never handed out before."""
        return next(self._scopes)

    @staticmethod
    def key(scope: int, raw: bytes | None) -> Key | None:
        """The key of an item of `scope` whose output `raw` determines; None: not cacheable.

        Hashing runs wherever the inputs are prepared (the loop or the preparation thread)."""
        if raw is None:
            return None
        return scope, hashlib.blake2b(raw, digest_size=DIGEST_BYTES).digest()

    def lookup(self, keys: Sequence[Key | None]) -> list[Any]:
        """Each key's output, or `MISS` (always for a None key, which is not counted)."""
        found: list[Any] = []
        for key in keys:
            entry = None if key is None else self._entries.get(key)
            if entry is None:
                found.append(MISS)
                self.misses += key is not None
            else:
                self._entries.move_to_end(key)  # type: ignore[arg-type]
                found.append(entry[0])
                self.hits += 1
        return found

    def store(self, key: Key | None, output: Any) -> None:
        """Keep a frozen copy of `output` under `key` (nothing for a None key, an output that
        cannot be frozen, or a key already held), evicting the least recently used."""
        if key is None or key in self._entries:
            return
        frozen = _frozen(output)
        if frozen is None:
            return
        self._entries[key] = frozen
        self.num_bytes += frozen[1] + DIGEST_BYTES
        while len(self._entries) > self.max_items:
            _, (_, size) = self._entries.popitem(last=False)
            self.num_bytes -= size + DIGEST_BYTES

    def discard_scope(self, scope: int) -> None:
        """Drop every entry of a retired model version."""
        for key in [key for key in self._entries if key[0] == scope]:
            _, size = self._entries.pop(key)
            self.num_bytes -= size + DIGEST_BYTES


def _frozen(output: Any) -> tuple[Any, int] | None:
    """A read-only copy of a forward output and its bytes: an array (copied, so that it owns
    its memory), a numpy or Python scalar, or a mapping of those; None for anything else."""
    if isinstance(output, np.ndarray):
        if output.dtype.hasobject:
            return None
        copy = np.array(output, copy=True)
        copy.flags.writeable = False
        return copy, copy.nbytes
    if isinstance(output, np.generic):
        return output, output.nbytes
    if isinstance(output, bool | int | float):
        return output, 8
    if isinstance(output, Mapping):
        parts = {}
        size = 0
        for name, value in output.items():
            frozen = _frozen(value)
            if frozen is None:
                return None
            parts[name], part_size = frozen
            size += part_size
        return MappingProxyType(parts), size
    return None
