"""The response cache's own rules: LRU order and bound, scopes, frozen copies, what is counted."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sidecar.serving.cache import DIGEST_BYTES, MISS, ResponseCache


def key(cache: ResponseCache, scope: int, text: str) -> Any:
    return cache.key(scope, text.encode())


def test_least_recently_used_entries_go_first() -> None:
    cache = ResponseCache(2)
    scope = cache.new_scope()
    a, b, c = (key(cache, scope, t) for t in "abc")
    cache.store(a, np.float32(1))
    cache.store(b, np.float32(2))
    assert cache.lookup([a]) == [np.float32(1)]  # a is now the most recently used
    cache.store(c, np.float32(3))
    assert len(cache) == 2
    assert cache.lookup([a, b, c]) == [np.float32(1), MISS, np.float32(3)]
    assert (cache.hits, cache.misses) == (3, 1)


def test_scopes_never_share_entries() -> None:
    cache = ResponseCache(8)
    old, new = cache.new_scope(), cache.new_scope()
    assert old != new
    cache.store(key(cache, old, "x"), np.float32(1))
    assert cache.lookup([key(cache, new, "x")]) == [MISS]
    cache.store(key(cache, new, "x"), np.float32(2))
    cache.discard_scope(old)
    assert len(cache) == 1
    assert cache.lookup([key(cache, new, "x")]) == [np.float32(2)]


def test_stored_outputs_are_read_only_copies() -> None:
    cache = ResponseCache(4)
    scope = cache.new_scope()
    batch = np.arange(12, dtype=np.float32).reshape(3, 4)  # (B, D): a forward pass's rows
    k = key(cache, scope, "row")
    cache.store(k, batch[1])
    batch[1] = -1.0  # the batch's memory reused or changed after the store
    (row,) = cache.lookup([k])
    assert row.tolist() == [4.0, 5.0, 6.0, 7.0]
    assert row.base is None  # owns its memory: not a view keeping the batch alive
    with pytest.raises(ValueError, match="read-only"):
        row[0] = 0.0
    assert cache.num_bytes == 16 + DIGEST_BYTES

    named = key(cache, scope, "named")
    cache.store(named, {"logits": np.ones(2, dtype=np.float32)})
    (outputs,) = cache.lookup([named])
    with pytest.raises(TypeError):
        outputs["logits"] = np.zeros(2)
    with pytest.raises(ValueError, match="read-only"):
        outputs["logits"][0] = 0.0


def test_the_first_entry_stays_and_bytes_are_counted_out() -> None:
    cache = ResponseCache(1)
    scope = cache.new_scope()
    k = key(cache, scope, "same")
    cache.store(k, np.ones(4, dtype=np.float32))
    cache.store(k, np.zeros(4, dtype=np.float32))  # a second computation of an identical miss
    assert cache.lookup([k])[0].tolist() == [1.0] * 4
    cache.store(key(cache, scope, "other"), np.ones(8, dtype=np.float32))
    assert len(cache) == 1 and cache.num_bytes == 32 + DIGEST_BYTES


def test_what_cannot_be_keyed_or_frozen_is_not_cached_nor_counted() -> None:
    cache = ResponseCache(4)
    scope = cache.new_scope()
    assert cache.key(scope, None) is None
    assert cache.lookup([None]) == [MISS]
    assert (cache.hits, cache.misses) == (0, 0)
    cache.store(None, np.float32(1))
    cache.store(key(cache, scope, "o"), np.array([b"x"], dtype=object))
    cache.store(key(cache, scope, "p"), [1.0])
    assert len(cache) == 0 and cache.num_bytes == 0


def test_an_empty_cache_is_not_none() -> None:
    assert len(ResponseCache(1)) == 0  # falsy: callers test `is None`, never truthiness
    with pytest.raises(ValueError, match="at least 1"):
        ResponseCache(0)
