"""An engine: one loaded model and its batcher. A request's inputs in, its result out.

prepare   on the event loop for small inputs, else on the preparation thread
collate   on the batcher's collation thread (or the device thread when it is idle)
forward   on the device thread, which one engine or many share
finish    on the event loop
cache     looked up on the event loop before the batcher, misses stored after it (cache.py)
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Generator, Iterable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from batching import BatchConfig, Batcher, BatchObserver, DeadlineExceededError
from sidecar.config import CPU_MAX_SIZE, CUDA_MAX_SIZE, Settings
from sidecar.models import (
    MAX_CHARS_PER_TOKEN,
    Inputs,
    Model,
    ModelCard,
    Prepared,
    Result,
    SteppedModel,
)
from sidecar.serving.cache import MISS, Key, ResponseCache
from sidecar.serving.shapes import shape_buckets

logger = logging.getLogger(__name__)

# Padding is wasted compute on a CPU (one forward's cost follows its padded tokens), so batches
# there keep padding under this share; on CUDA larger batches pay for padding, so no cap.
CPU_MAX_PADDING = 0.5
# Preparing this many characters (tokenizing them) takes well under a millisecond: cheaper on the
# loop than a thread hop. Anything longer is prepared on its own thread, overlapped with forwards.
INLINE_PREPARE_CHARS = 1024


@dataclass(frozen=True)
class Inference:
    """A request's result and the tokens its inputs took."""

    result: Result
    num_tokens: int


class Engine:
    """Runs requests through one model with dynamic batching.

    Args:
        model: the loaded, warmed model.
        config: the batching bounds.
        observer: receives batch figures (the metrics).
        executors: the threads it runs on (shared by every engine of the process).
        cache: the response cache (shared by every engine), or None: every item is computed.
    """

    def __init__(
        self,
        model: Model[Any, Any, Any],
        config: BatchConfig,
        *,
        observer: BatchObserver,
        executors: Executors,
        cache: ResponseCache | None = None,
    ) -> None:
        self.model = model
        self.card: ModelCard = model.card
        self._cache = cache
        # This load of the model: its entries are never another load's, even of the same files.
        self._cache_scope = cache.new_scope() if cache is not None else 0
        self._prepare_executor = executors.prepare
        # With shape buckets the model pads each batch to the shape the batcher counts it as.
        collate = functools.partial(model.collate, shape=config.padded_shape)
        self.batcher: Batcher[Any, Any, Any] = Batcher(
            collate if config.buckets else model.collate,
            self._forward,
            config,
            observer=observer,
            is_oom=model.is_oom,
            after_oom=model.release_memory,
            is_fatal=model.is_fatal,
            run_executor=executors.device,
            prepare_executor=executors.collate,
            run_steps=self._forward_steps if isinstance(model, SteppedModel) else None,
            steps=model.steps if isinstance(model, SteppedModel) else 1,
        )

    async def start(self, warmup_timings: Iterable[tuple[int, float]] = ()) -> None:
        """Start batching; warm-up timings (padded tokens, seconds) give the first batch cost."""
        self.batcher.seed_costs(warmup_timings)
        await self.batcher.start()

    def failure(self, forward_timeout_s: float) -> str | None:
        """Why this engine can serve no more, or None: a fatal device error, or a forward pass
        running past `forward_timeout_s` (0: no limit), as a hung device synchronisation does."""
        if self.batcher.device_error is not None:
            return f"fatal device error ({type(self.batcher.device_error).__name__})"
        running_s = self.batcher.running_for_s()
        if forward_timeout_s and running_s is not None and running_s > forward_timeout_s:
            return f"a forward pass has run for {running_s:.0f} s (limit {forward_timeout_s:g} s)"
        return None

    async def stop(self) -> None:
        """Stop batching; whatever is still queued fails with `BatcherClosedError`."""
        await self.batcher.stop()
        if self._cache is not None:
            self._cache.discard_scope(self._cache_scope)

    async def infer(
        self, inputs: Inputs, *, deadline: float | None, bulk: bool = False
    ) -> Inference:
        """Prepare `inputs`, run their items through the batcher, finish the outputs.

        `bulk`: the batcher's lower priority class, for job items (see `batching.lanes`).

        Raises:
            InputError: the model refuses the inputs (sidecar.models).
            BatchingError: the queue is full, the deadline passed, the batcher stopped (batching).
        """
        max_chars = self.card.max_input_tokens * MAX_CHARS_PER_TOKEN
        if inputs.num_chars_within(max_chars) <= INLINE_PREPARE_CHARS:
            prepared, keys = self._prepare(inputs)
        else:
            prepared, keys = await self._prepare_off_loop(inputs, deadline)
        if self._cache is None:
            outputs: Sequence[Any] = await self.batcher.submit(
                prepared.items, prepared.costs, deadline=deadline, bulk=bulk
            )
        else:
            outputs = await self._cached(prepared, keys, self._cache, deadline, bulk)
        return Inference(self.model.finish(outputs, inputs), prepared.num_tokens)

    async def _cached(
        self,
        prepared: Prepared[Any],
        keys: list[Key | None],
        cache: ResponseCache,
        deadline: float | None,
        bulk: bool = False,
    ) -> list[Any]:
        """The items' outputs: hits from the cache, misses through the batcher, then stored."""
        outputs = cache.lookup(keys)
        missing = [index for index, output in enumerate(outputs) if output is MISS]
        if missing:
            computed = await self.batcher.submit(
                [prepared.items[i] for i in missing],
                [prepared.costs[i] for i in missing],
                deadline=deadline,
                bulk=bulk,
            )
            for index, output in zip(missing, computed, strict=True):
                outputs[index] = output
                cache.store(keys[index], output)
        return outputs

    def _prepare(self, inputs: Inputs) -> tuple[Prepared[Any], list[Key | None]]:
        """`model.prepare`, and each item's cache key when there is a cache."""
        prepared = self.model.prepare(inputs)
        if self._cache is None:
            return prepared, []
        scope, key = self._cache_scope, self.model.cache_key
        return prepared, [ResponseCache.key(scope, key(item)) for item in prepared.items]

    async def _prepare_off_loop(
        self, inputs: Inputs, deadline: float | None
    ) -> tuple[Prepared[Any], list[Key | None]]:
        """`_prepare` on the preparation thread, waited for no later than the deadline.

        Past it, the request gets its 504 at once; if its turn has not come, it never runs.
        """
        loop = asyncio.get_running_loop()
        pending = loop.run_in_executor(self._prepare_executor, self._prepare, inputs)
        try:
            async with asyncio.timeout(None if deadline is None else deadline - time.monotonic()):
                return await pending
        except TimeoutError:
            raise DeadlineExceededError(
                "the deadline passed while the inputs waited to be tokenized"
            ) from None

    def _forward(self, batch: Any) -> Sequence[Any]:
        return list(self.model.forward(batch))

    def _forward_steps(self, batch: Any) -> Generator[None, None, Sequence[Any]]:
        assert isinstance(self.model, SteppedModel)
        return list((yield from self.model.forward_steps(batch)))


@dataclass(frozen=True)
class Executors:
    """The threads engines run on: one owns the device, one collates the next batch while a
    forward pass runs, one prepares inputs too large for the event loop, one loads versions."""

    device: Executor
    collate: Executor
    prepare: Executor
    # Reads and builds another model version while the device serves (sidecar.serving.registry).
    load: Executor

    @classmethod
    def create(cls) -> Executors:
        return cls(
            ThreadPoolExecutor(1, thread_name_prefix="device"),
            ThreadPoolExecutor(1, thread_name_prefix="collate"),
            ThreadPoolExecutor(1, thread_name_prefix="prepare"),
            ThreadPoolExecutor(1, thread_name_prefix="load"),
        )

    def shutdown(self) -> None:
        for executor in (self.device, self.collate, self.prepare, self.load):
            executor.shutdown(wait=False, cancel_futures=True)


def batch_config(settings: Settings, device: str, max_input_tokens: int) -> BatchConfig:
    """The batching bounds of the settings for a model of `max_input_tokens` on `device`; the
    size bound, the padding cap and the shape buckets default by device."""
    on_cpu = device == "cpu"
    max_padding = settings.batch_max_padding
    if max_padding is None:
        max_padding = CPU_MAX_PADDING if on_cpu else 1.0
    max_size = settings.batch_max_size or (CPU_MAX_SIZE if on_cpu else CUDA_MAX_SIZE)
    return BatchConfig(
        window_s=settings.batch_window_ms / 1000.0,
        min_size=settings.batch_min_size,
        max_size=max_size,
        max_tokens=settings.batch_max_tokens,
        queue_max=settings.queue_max,
        adaptive=settings.batch_adaptive,
        max_padding=max_padding,
        buckets=shape_buckets(settings.shape_buckets, device, max_size, max_input_tokens),
    )
