"""The generation engine: a decoder, its scheduler, and one stream of text per sequence.

The device thread runs one step at a time, in a loop of its own (`_run`): plan the step under
the lock (`batching.Scheduler`), run it on the model, then detokenize the chosen tokens, hold
back stop strings, decide which sequences end, and hand every sequence's news to the event loop
in one `call_soon_threadsafe` per step. The event loop never waits on a step: a request's
handler reads its stream's queue; adding and cancelling a sequence take the lock only for as
long as the scheduler's bookkeeping. A sequence cancelled (its client gone) leaves at the next
step's plan, and its slot serves that step.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from batching import (
    BatcherClosedError,
    Chunk,
    DeadlineExceededError,
    DeviceFailedError,
    GenerationObserver,
    QueueFullError,
    Scheduler,
    StepFailedError,
)
from batching import Sequence as Seq
from sidecar.generation_settings import GenerationSettings
from sidecar.models import InputTooLongError, ModelCard
from sidecar.models.errors import InputError
from sidecar.models.generation import (
    Delta,
    Event,
    Finished,
    GenerativeModel,
    Row,
    SamplingParams,
    TextStream,
)
from sidecar.serving.stop_strings import StopStrings

logger = logging.getLogger(__name__)

# Prompts with more characters are tokenized (and chat templates rendered) off the event loop.
INLINE_ENCODE_CHARS = 2048


@dataclass(eq=False)
class _State:
    """A sequence's engine-side state; the fields past `queue` belong to the device thread."""

    queue: asyncio.Queue[Event | BaseException]
    params: SamplingParams
    sampler: Any
    text: TextStream
    stops: StopStrings
    arrived: float
    aborted: bool = False
    logprobs: list[float] = field(default_factory=list)
    last_token_at: float | None = None  # the event loop's


class GenerationStream:
    """One sequence's events: `Delta`s, then one `Finished`; errors raise from iteration."""

    def __init__(self, engine: GenerationEngine, sequence: Seq, state: _State) -> None:
        self._engine = engine
        self._sequence = sequence
        self._state = state
        self.prompt_tokens = len(sequence.prompt)
        self.done = False

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    async def _events(self) -> AsyncIterator[Event]:
        while not self.done:
            item = await self._state.queue.get()
            if isinstance(item, BaseException):
                self.done = True
                raise item
            self.done = isinstance(item, Finished)
            yield item

    def cancel(self, reason: str = "cancelled") -> None:
        """Stop generating (the client went away: `disconnect`); no-op once finished."""
        if not self.done:
            self.done = True
            self._engine.abort(self._sequence, reason)


class GenerationEngine:
    """Runs sequences through a decoder with iteration-level batching.

    Args:
        model: the loaded decoder.
        settings: the step's token budget.
        queue_max: sequences that may wait for a slot.
        device: the thread that owns the device (the engine's loop runs there).
        prepare: a thread for tokenizing long prompts.
        observer: receives TTFT, inter-token latency, token counts and aborts.
    """

    def __init__(
        self,
        model: GenerativeModel,
        settings: GenerationSettings,
        *,
        queue_max: int,
        device: Executor,
        prepare: Executor,
        observer: GenerationObserver,
    ) -> None:
        self.model = model
        self.card: ModelCard = model.card
        self.max_model_len = model.max_model_len
        self.scheduler = Scheduler(model.num_slots, settings.max_batch_tokens, queue_max)
        self.device_error: BaseException | None = None
        self._device = device
        self._prepare = prepare
        self._observer = observer
        self._cond = threading.Condition()
        self._stopping = False
        self._step_started: float | None = None
        self._runner: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._runner = self._loop.run_in_executor(self._device, self._run)

    async def stop(self) -> None:
        """Stop the loop; whatever is waiting or running fails with `BatcherClosedError`."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._runner is not None:
            await asyncio.wait([self._runner])  # a loop that failed has said so in the log
        closed = BatcherClosedError("the server is draining")
        for sequence in (*self.scheduler.running, *self.scheduler.waiting):
            sequence.state.queue.put_nowait(closed)

    def failure(self, forward_timeout_s: float) -> str | None:
        """Why the engine can serve no more, or None (as `Engine.failure`)."""
        if self.device_error is not None:
            return f"fatal device error ({type(self.device_error).__name__})"
        started = self._step_started
        running_s = None if started is None else time.monotonic() - started
        if forward_timeout_s and running_s is not None and running_s > forward_timeout_s:
            return f"a step has run for {running_s:.0f} s (limit {forward_timeout_s:g} s)"
        return None

    # -- the event loop's side ----------------------------------------------------------------

    async def encode(self, prompt: str) -> list[int]:
        """A completion prompt's tokens (off the loop when long)."""
        if len(prompt) <= INLINE_ENCODE_CHARS:
            return self.model.encode(prompt)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._prepare, self.model.encode, prompt)

    async def encode_chat(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        """A conversation's prompt tokens, by the model's chat template (off the loop when long)."""
        size = sum(len(str(m.get("content", ""))) for m in messages)
        if size <= INLINE_ENCODE_CHARS:
            return self.model.encode_chat(messages)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._prepare, self.model.encode_chat, messages)

    def generate(
        self, prompt: list[int], params: SamplingParams, *, deadline: float | None
    ) -> GenerationStream:
        """Queue a sequence; its stream yields its text as it comes.

        Raises:
            InputTooLongError: prompt and max_tokens do not fit in the context.
            InputError: an empty prompt.
            QueueFullError: too many sequences wait for a slot.
            DeviceFailedError: the device failed for good.
        """
        if self.device_error is not None:
            raise DeviceFailedError("the device failed; the process must restart")
        if not prompt:
            raise InputError("the prompt is empty")
        vocab = self.model.vocab_size
        if any(not 0 <= token < vocab for token in prompt):
            raise InputError(f"the prompt has token ids outside the vocabulary (0 to {vocab - 1})")
        if len(prompt) + params.max_tokens > self.max_model_len:
            raise InputTooLongError(
                f"this model's maximum context length is {self.max_model_len} tokens; the "
                f"prompt has {len(prompt)} tokens and max_tokens is {params.max_tokens}"
                f" ({len(prompt) + params.max_tokens} in all)"
            )
        state = _State(
            queue=asyncio.Queue(),
            params=params,
            sampler=self.model.sampler(params),
            text=self.model.text_stream(prompt),
            stops=StopStrings(params.stop),
            arrived=time.monotonic(),
        )
        sequence = Seq(prompt, params.max_tokens, deadline, state)
        with self._cond:
            try:
                self.scheduler.add(sequence)
            except QueueFullError:
                self._observer.on_reject("queue_full", 1)
                raise
            self._cond.notify()
        return GenerationStream(self, sequence, state)

    def abort(self, sequence: Seq, reason: str) -> None:
        with self._cond:
            sequence.state.aborted = True
            removed = self.scheduler.abort(sequence)
        if removed:
            self._observer.on_abort(reason)

    # -- the device thread's side -------------------------------------------------------------

    def _run(self) -> None:
        """The step loop; if it ever breaks, every sequence fails and the engine reports the
        failure (`/livez`), rather than leaving streams waiting for tokens that never come."""
        try:
            self._loop_steps()
        except BaseException as exc:
            logger.critical("the generation loop failed", exc_info=exc)
            with self._cond:
                self.device_error = exc
                victims = [*self.scheduler.running, *self.scheduler.waiting]
                for sequence in victims:
                    self.scheduler.abort(sequence)
            error = DeviceFailedError("generation failed; the process must restart")
            news: list[tuple[_State, Event | BaseException]] = [(v.state, error) for v in victims]
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self._deliver, news)
            raise

    def _loop_steps(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self.scheduler.has_work():
                    self._cond.wait()
                if self._stopping:
                    return
                plan = self.scheduler.schedule()
            news: list[tuple[_State, Event | BaseException]] = []
            for sequence in plan.expired:
                error = DeadlineExceededError("the deadline passed before generation ended")
                news.append((sequence.state, error))
            if plan.chunks:
                self._step(plan.chunks, news)
            if news:
                assert self._loop is not None
                self._loop.call_soon_threadsafe(self._deliver, news)
            if self.device_error is not None:
                return

    def _step(self, chunks: list[Chunk], news: list[tuple[_State, Event | BaseException]]) -> None:
        rows = [
            Row(
                c.sequence.slot or 0,
                c.start,
                c.tokens,
                c.sequence.state.sampler if c.samples else None,
            )
            for c in chunks
        ]
        self._step_started = time.monotonic()
        try:
            sampled = iter(self.model.step(rows))
        except Exception as exc:
            self._fail(chunks, exc, news)
            return
        finally:
            self._step_started = None
        with self._cond:
            for chunk in chunks:
                state: _State = chunk.sequence.state
                if state.aborted:
                    if chunk.samples:
                        next(sampled)
                    continue
                token = next(sampled) if chunk.samples else None
                self.scheduler.advance(chunk, None if token is None else token.token)
                if token is not None:
                    if token.logprob is not None:
                        state.logprobs.append(token.logprob)
                    self._emit(chunk.sequence, token.token, news)

    def _emit(
        self, sequence: Seq, token: int, news: list[tuple[_State, Event | BaseException]]
    ) -> None:
        """Turn a sequence's new token into text and decide whether it ends (under the lock)."""
        state: _State = sequence.state
        params = state.params
        reason = None
        text = ""
        if token in self.model.eos_token_ids or token in params.stop_token_ids:
            reason = "stop"
        else:
            text = state.stops.feed(state.text.push(token))
            if state.stops.stopped:
                reason = "stop"
        if reason is None and (
            len(sequence.output) >= params.max_tokens or sequence.num_tokens >= self.max_model_len
        ):
            reason = "length"
        if reason is not None:
            text += state.stops.flush()
        logprobs = tuple(state.logprobs)
        state.logprobs.clear()
        news.append((state, Delta(text, logprobs)))
        if reason is not None:
            self.scheduler.finish(sequence)
            news.append((state, Finished(reason, len(sequence.prompt), len(sequence.output))))

    def _fail(
        self,
        chunks: list[Chunk],
        exc: Exception,
        news: list[tuple[_State, Event | BaseException]],
    ) -> None:
        """A step raised: its sequences end with an error; a fatal device error ends them all."""
        fatal = self.model.is_fatal(exc)
        logger.error(
            "generation step failed (%s)", "fatal" if fatal else "recoverable", exc_info=exc
        )
        if self.model.is_oom(exc):
            self.model.release_memory()
        with self._cond:
            if fatal:
                self.device_error = exc
                victims = [*self.scheduler.running, *self.scheduler.waiting]
                error: Exception = DeviceFailedError("the device failed; the process must restart")
            else:
                victims = [chunk.sequence for chunk in chunks if not chunk.sequence.state.aborted]
                error = StepFailedError("generation failed on the device")
            for sequence in victims:
                self.scheduler.abort(sequence)
                news.append((sequence.state, error))

    def _deliver(self, news: list[tuple[_State, Event | BaseException]]) -> None:
        """On the event loop: queue each sequence's news; count tokens and latencies."""
        now = time.monotonic()
        for state, item in news:
            state.queue.put_nowait(item)
            if isinstance(item, Delta):
                self._observer.on_tokens("generated", 1)
                if state.last_token_at is None:
                    self._observer.on_first_token(now - state.arrived)
                else:
                    self._observer.on_inter_token(now - state.last_token_at)
                state.last_token_at = now
            elif isinstance(item, Finished):
                self._observer.on_tokens("prompt", item.prompt_tokens)
            elif isinstance(item, DeadlineExceededError):
                self._observer.on_abort("deadline")
            else:
                self._observer.on_abort("error")
