"""Items waiting for a batch, oldest first, and the choice of the next batch among them."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from batching.errors import DeadlineExceededError
from batching.grouping import select_batch

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

# Batches are formed from the oldest entries, this many or `max_size` if larger: grouping needs a
# choice of lengths, not the whole queue (see `select_batch` for what forming costs).
MAX_CANDIDATES = 256


@dataclass(eq=False)
class Entry(Generic[ItemT, ResultT]):
    """One queued item and the future its caller awaits."""

    item: ItemT
    cost: int
    length: int  # the cost padded up to its length bucket: what the item takes in a batch
    deadline: float | None
    enqueued_at: float
    future: asyncio.Future[ResultT]
    seq: int
    tag: object  # the observer's `on_submit` value for the submission
    # Read by the device thread, written on the loop: a plain bool flag is enough.
    dropped: bool = False
    taken: bool = False  # it left the queue in a batch (a drop after that may be too late)


class ItemQueue(Generic[ItemT, ResultT]):
    """Queued entries in arrival order, with O(1) removal of any of them."""

    def __init__(self) -> None:
        self._entries: OrderedDict[int, Entry[ItemT, ResultT]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, entries: Iterable[Entry[ItemT, ResultT]]) -> None:
        for entry in entries:
            self._entries[entry.seq] = entry

    def entries(self) -> list[Entry[ItemT, ResultT]]:
        """The queued entries, oldest first."""
        return list(self._entries.values())

    def discard(self, entry: Entry[ItemT, ResultT]) -> None:
        self._entries.pop(entry.seq, None)

    def clear(self) -> list[Entry[ItemT, ResultT]]:
        """Remove and return every entry."""
        entries = list(self._entries.values())
        self._entries.clear()
        return entries

    def oldest(self, now: float) -> Entry[ItemT, ResultT] | None:
        """The oldest live entry, after dropping abandoned or expired ones ahead of it."""
        while self._entries:
            entry = next(iter(self._entries.values()))
            if entry.future.done():
                del self._entries[entry.seq]
            elif entry.deadline is not None and entry.deadline <= now:
                self._expire(entry)
            else:
                return entry
        return None

    def largest_length(self) -> int:
        return max((e.length for e in self._entries.values()), default=0)

    def take(
        self,
        now: float,
        *,
        max_size: int,
        max_tokens: int,
        max_padding: float,
        batch_overhead: float,
        batch_knee: float,
        full_only: bool,
    ) -> list[Entry[ItemT, ResultT]]:
        """Remove and return the next batch; empty when `full_only` and no full batch exists.

        The oldest live entry always goes, with the entries of similar length `select_batch`
        groups with it, by their padded lengths.
        """
        live = []
        for entry in list(self._entries.values()):
            if entry.deadline is not None and entry.deadline <= now:
                self._expire(entry)
            elif not entry.future.done():
                live.append(entry)
        if not live:
            return []
        selection = select_batch(
            [e.length for e in live[: max(MAX_CANDIDATES, max_size)]],
            max_size=max_size,
            max_tokens=max_tokens,
            max_padding=max_padding,
            batch_overhead=batch_overhead,
            batch_knee=batch_knee,
        )
        if full_only and not selection.full:
            return []
        batch = [live[i] for i in selection.indices]
        for entry in batch:
            del self._entries[entry.seq]
            entry.taken = True
        return batch

    def _expire(self, entry: Entry[ItemT, ResultT]) -> None:
        self.discard(entry)
        fail([entry], lambda: DeadlineExceededError("the deadline passed while queued"))


def fail(entries: Iterable[Entry[ItemT, ResultT]], error: Callable[[], BaseException]) -> None:
    """Drop `entries` (a batch still to run skips them) and fail their pending futures."""
    for entry in entries:
        entry.dropped = True
        if not entry.future.done():
            entry.future.set_exception(error())


def withdraw(
    entries: Iterable[Entry[ItemT, ResultT]], queues: Iterable[ItemQueue[ItemT, ResultT]]
) -> int:
    """Drop the entries of a caller that went away: out of `queues`, their pending futures
    cancelled. Returns how many never reached a batch (were not computed)."""
    queues = list(queues)
    count = 0
    for entry in entries:
        future = entry.future
        if future.done() and not future.cancelled() and future.exception() is None:
            continue
        count += not entry.taken
        entry.dropped = True
        for queue in queues:
            queue.discard(entry)
        if not future.done():
            future.cancel()
    return count
