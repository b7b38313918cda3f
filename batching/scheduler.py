"""The iteration-level scheduler of generation: which tokens of which sequences run each step.

Sequences wait in arrival order, then run in a slot of the KV cache until they end. Every step
is planned under a token budget (`max_batch_tokens`), as vLLM and nano-vllm plan theirs:

1. every running sequence past its prompt decodes one token (they come first: streams keep
   their pace while prompts arrive);
2. running sequences still in their prompt prefill their next chunk, in the budget left;
3. waiting sequences join while a slot is free and budget is left, with a first chunk.

So sequences join and leave the batch at every step, and a long prompt is prefilled in chunks
beside the others' decoding rather than stalling them.

When the cache is full (every slot taken), new sequences wait: a slot holds a whole sequence
(prompt + max_tokens fit in it: the serving layer checks), so a running sequence never runs out
of room and nothing is preempted. The waiting queue holds `max_waiting` sequences; past it,
`add` refuses with `QueueFullError` and a retry hint from the measured rate of sequences ending.
A sequence aborted (cancelled, client gone) or past its deadline leaves at the next `schedule`:
its slot is free for that very step.

Not thread-safe: the generation engine calls it under its lock.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from batching.errors import QueueFullError

# Sequence ends remembered for the drain rate behind `Retry-After`.
_RATE_WINDOW = 64


@dataclass(eq=False)
class Sequence:
    """One sequence to generate: its prompt, its output so far, where it stands.

    Attributes:
        prompt: the prompt's token ids.
        max_tokens: tokens to generate at most.
        deadline: monotonic time past which it is dropped (None: none).
        state: the engine's own state for it (sampler, stream), untouched here.
        slot: its KV cache slot while running.
        num_computed: tokens whose keys and values are in its slot.
        output: the tokens generated so far.
    """

    prompt: list[int]
    max_tokens: int
    deadline: float | None = None
    state: Any = None
    slot: int | None = None
    num_computed: int = 0
    output: list[int] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt) + len(self.output)

    @property
    def prefilling(self) -> bool:
        return self.num_computed < len(self.prompt)

    def token_range(self, start: int, stop: int) -> list[int]:
        """Tokens [start, stop) of prompt + output."""
        prompt = len(self.prompt)
        head = self.prompt[start:stop] if start < prompt else []
        tail = self.output[max(start - prompt, 0) : max(stop - prompt, 0)]
        return head + tail


@dataclass(frozen=True)
class Chunk:
    """A sequence's tokens in a step: positions `start` on; `samples`: its next token is chosen
    after this step (the chunk ends its prompt, or is a decode token)."""

    sequence: Sequence
    start: int
    tokens: list[int]
    samples: bool


@dataclass(frozen=True)
class Plan:
    """One step: the chunks to run, and the sequences dropped as their deadline passed."""

    chunks: list[Chunk]
    expired: list[Sequence]


class Scheduler:
    """Waiting and running sequences, and the plan of each step.

    Args:
        num_slots: sequences the KV cache holds at once.
        max_batch_tokens: tokens one step computes at most (decode tokens first).
        max_waiting: sequences that may wait for a slot; more are refused.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        num_slots: int,
        max_batch_tokens: int,
        max_waiting: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.num_slots = num_slots
        self.max_batch_tokens = max_batch_tokens
        self.max_waiting = max_waiting
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.running: list[Sequence] = []
        self._free = list(range(num_slots - 1, -1, -1))  # popped from the end: slot 0 first
        self._clock = clock
        self._ends: collections.deque[float] = collections.deque(maxlen=_RATE_WINDOW)

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    @property
    def slot_usage(self) -> float:
        """Share of the KV cache's slots held by running sequences."""
        return len(self.running) / self.num_slots

    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def add(self, sequence: Sequence) -> None:
        """Queue a sequence.

        Raises:
            QueueFullError: `max_waiting` sequences wait already.
        """
        if len(self.waiting) >= self.max_waiting:
            raise QueueFullError(
                f"{len(self.waiting)} sequences are waiting for a slot (at most "
                f"{self.max_waiting})",
                retry_after_s=self.retry_after_s(),
            )
        self.waiting.append(sequence)

    def retry_after_s(self) -> float:
        """When the waiting queue will likely have room: its length over the rate at which
        sequences ended lately (1 s to a minute)."""
        if len(self._ends) < 2 or self._ends[-1] <= self._ends[0]:
            return 1.0
        rate = (len(self._ends) - 1) / (self._ends[-1] - self._ends[0])
        return float(min(60, max(1, math.ceil(len(self.waiting) / rate))))

    def schedule(self) -> Plan:
        """The next step's chunks (decode tokens, prefill chunks, newcomers), in that order."""
        expired = self._expire(self._clock())
        budget = self.max_batch_tokens
        chunks: list[Chunk] = []
        for sequence in self.running:
            if not sequence.prefilling:
                start = sequence.num_tokens - 1
                chunks.append(Chunk(sequence, start, sequence.output[-1:], True))
                budget -= 1
        for sequence in self.running:
            if sequence.prefilling and budget > 0:
                budget -= self._prefill(sequence, budget, chunks)
        while self.waiting and self._free and budget > 0:
            sequence = self.waiting.popleft()
            sequence.slot = self._free.pop()
            self.running.append(sequence)
            budget -= self._prefill(sequence, budget, chunks)
        return Plan(chunks, expired)

    def advance(self, chunk: Chunk, token: int | None) -> None:
        """Record a chunk that ran, and the token chosen after it (when it samples)."""
        chunk.sequence.num_computed = chunk.start + len(chunk.tokens)
        if token is not None:
            chunk.sequence.output.append(token)

    def finish(self, sequence: Sequence) -> None:
        """A running sequence ended: its slot is free for the next step."""
        self._release(sequence)
        self._ends.append(self._clock())

    def abort(self, sequence: Sequence) -> bool:
        """Drop a sequence wherever it is; False if it was neither waiting nor running."""
        if sequence in self.running:
            self._release(sequence)
            return True
        try:
            self.waiting.remove(sequence)
        except ValueError:
            return False
        return True

    def _prefill(self, sequence: Sequence, budget: int, chunks: list[Chunk]) -> int:
        start = sequence.num_computed
        stop = min(len(sequence.prompt), start + budget)
        samples = stop == len(sequence.prompt)
        chunks.append(Chunk(sequence, start, sequence.prompt[start:stop], samples))
        return stop - start

    def _expire(self, now: float) -> list[Sequence]:
        expired = [
            s for s in (*self.running, *self.waiting) if s.deadline is not None and s.deadline < now
        ]
        for sequence in expired:
            self.abort(sequence)
        return expired

    def _release(self, sequence: Sequence) -> None:
        self.running.remove(sequence)
        if sequence.slot is not None:
            self._free.append(sequence.slot)
            sequence.slot = None
