"""A static KV cache of fixed slots, and the batch of one generation step that runs over it.

The cache holds, for every layer, keys and values of `num_slots` sequences of up to `max_len`
tokens each: (S, nkv, L, hs). A sequence owns one slot from its first prefill chunk to its end,
so a sequence admitted can always run to `max_len` (no preemption, no paging). A step writes the
keys and values of its new tokens into their slots at their positions, then attends over its
rows' slots up to the longest row's end (gpt-fast's `KVCache`, with one slot per sequence).

`StepBatch` is one forward pass: rows of different sequences, each a run of consecutive tokens
(a prefill chunk, or the one token of a decode step), right-padded to the longest row.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StepRow:
    """One sequence's tokens in a step: `tokens` at positions `start`, `start + 1`, ..."""

    slot: int
    start: int
    tokens: Sequence[int]


@dataclass(frozen=True)
class StepBatch:
    """The tensors of one step's rows, on the model's device."""

    tokens: torch.Tensor  # (B, T) int64, right-padded with 0
    positions: torch.Tensor  # (B, T) int64, 0 on padding
    slots: torch.Tensor  # (B,) int64
    last: torch.Tensor  # (B,) int64: the index of each row's last token
    write_slots: torch.Tensor  # (N,) the slot of each real token (N real tokens in all)
    write_positions: torch.Tensor  # (N,) its position
    valid: torch.Tensor  # (B, T) bool, True on real tokens
    kv_len: int  # keys to attend over: the longest row's end
    first_slot: int | None  # the rows' slots are first_slot, first_slot + 1, ...: no gather

    @classmethod
    def of(cls, rows: Sequence[StepRow], device: torch.device) -> StepBatch:
        T = max(len(row.tokens) for row in rows)
        tokens = [list(row.tokens) + [0] * (T - len(row.tokens)) for row in rows]
        positions = [
            [row.start + i if i < len(row.tokens) else 0 for i in range(T)] for row in rows
        ]
        valid = [[i < len(row.tokens) for i in range(T)] for row in rows]
        slots = [row.slot for row in rows]
        write_slots = [row.slot for row in rows for _ in row.tokens]
        write_positions = [row.start + i for row in rows for i in range(len(row.tokens))]

        def tensor(values: object, dtype: torch.dtype = torch.int64) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)

        return cls(
            tokens=tensor(tokens),
            positions=tensor(positions),
            slots=tensor(slots),
            last=tensor([len(row.tokens) - 1 for row in rows]),
            write_slots=tensor(write_slots),
            write_positions=tensor(write_positions),
            valid=tensor(valid, torch.bool),
            kv_len=max(row.start + len(row.tokens) for row in rows),
            first_slot=slots[0] if slots == list(range(slots[0], slots[0] + len(slots))) else None,
        )

    def attention_mask(self, sliding_window: int | None = None) -> torch.Tensor:
        """(B, 1, T, kv_len) bool: a query attends to the keys at its position and before
        (within the last `sliding_window` positions when given)."""
        keys = torch.arange(self.kv_len, device=self.positions.device)  # (kv_len,)
        queries = self.positions[:, :, None]  # (B, T, 1)
        allowed = keys[None, None, :] <= queries  # (B, T, kv_len)
        if sliding_window is not None:
            allowed &= keys[None, None, :] > queries - sliding_window
        return allowed[:, None]  # (B, 1, T, kv_len)


class KVCache:
    """Keys and values of `num_slots` sequences of up to `max_len` tokens, for every layer."""

    def __init__(
        self,
        *,
        num_layers: int,
        num_slots: int,
        num_kv_heads: int,
        max_len: int,
        head_size: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        shape = (num_slots, num_kv_heads, max_len, head_size)  # (S, nkv, L, hs)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.num_slots = num_slots
        self.max_len = max_len

    def update(
        self, layer: int, batch: StepBatch, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the step's new keys and values (B, nkv, T, hs) and return every key and value
        its rows attend over: (B, nkv, kv_len, hs) each."""
        k_cache, v_cache = self.keys[layer], self.values[layer]
        valid = batch.valid
        # (B, nkv, T, hs) -> (B, T, nkv, hs) -> (N, nkv, hs): the real tokens only
        k_cache[batch.write_slots, :, batch.write_positions] = k.transpose(1, 2)[valid]
        v_cache[batch.write_slots, :, batch.write_positions] = v.transpose(1, 2)[valid]
        if batch.first_slot is not None:  # consecutive slots: views, not copies
            rows = slice(batch.first_slot, batch.first_slot + k.shape[0])
            return k_cache[rows, :, : batch.kv_len], v_cache[rows, :, : batch.kv_len]
        return (
            k_cache[batch.slots, :, : batch.kv_len],
            v_cache[batch.slots, :, : batch.kv_len],
        )


def bytes_per_slot(
    *, num_layers: int, num_kv_heads: int, head_size: int, max_len: int, dtype: torch.dtype
) -> int:
    """Keys and values of one sequence of `max_len` tokens, all layers."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * num_layers * num_kv_heads * max_len * head_size * itemsize


def free_memory_bytes(device: torch.device) -> int:
    """Memory a cache can take: free device memory on CUDA; on a CPU, the memory the system
    reports available (pages free now, as the kernel counts them)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
