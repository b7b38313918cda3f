"""What generation speaks, without torch: sampling parameters, a step's rows, and the interface a
decoder offers the serving layer (DESIGN section 14).

A decoder runs one step at a time over a static KV cache of `num_slots` sequences of up to
`max_model_len` tokens. The serving layer's scheduler decides each step's rows (a prefill chunk
or one decode token per sequence); `step` runs them and samples the next token of the rows that
ask for one, each with its own sampler (a seeded generator: the same request gives the same
tokens whatever else runs in the batch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from sidecar.models.interface import ModelCard


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each token of one sequence.

    Attributes:
        max_tokens: tokens to generate at most.
        temperature: 0 picks the most likely token (greedy); else logits are divided by it.
        top_p: sample from the smallest set of tokens whose probability reaches it (1: all).
        top_k: sample from the k most likely tokens (0: all).
        seed: seeds the sequence's own generator (None: a random seed).
        stop: strings that end the text, never part of it.
        stop_token_ids: token ids that end the sequence, besides the model's EOS.
        logprobs: return the log-probability of each chosen token.
    """

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    logprobs: bool = False


@dataclass(frozen=True)
class Sampled:
    """A token chosen in a step, and its log-probability when the sequence asked for it."""

    token: int
    logprob: float | None = None


@dataclass(frozen=True)
class Row:
    """One sequence's part of a step: `tokens` at positions `start`, `start + 1`, ... in slot
    `slot`; `sampler` (from `GenerativeModel.sampler`) when its next token is to be chosen."""

    slot: int
    start: int
    tokens: Sequence[int]
    sampler: Any = None


@dataclass(frozen=True)
class Delta:
    """Text a sequence generated: safe to show (no partial character, no part of a stop)."""

    text: str
    logprobs: tuple[float, ...] = ()


@dataclass(frozen=True)
class Finished:
    """The end of a sequence: `stop` (EOS, a stop token or string) or `length`."""

    reason: str
    prompt_tokens: int
    completion_tokens: int


Event = Delta | Finished


class TextStream(Protocol):
    """Token ids in, text out: never a partial UTF-8 character."""

    def push(self, token: int) -> str: ...


@runtime_checkable
class GenerativeModel(Protocol):
    """A decoder, as the generation engine drives it (`sidecar.models.decoder.Decoder`)."""

    @property
    def card(self) -> ModelCard: ...

    num_slots: int
    max_model_len: int
    vocab_size: int
    eos_token_ids: frozenset[int]

    def encode(self, text: str) -> list[int]:
        """A completion prompt's token ids, with the special tokens the tokenizer adds."""
        ...

    def encode_chat(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        """A conversation rendered by the snapshot's chat template, with the generation prompt.

        Raises:
            InputError: the template refuses the conversation, or the model has no template.
        """
        ...

    def sampler(self, params: SamplingParams) -> Any:
        """A sequence's sampler: its parameters and its own seeded generator."""
        ...

    def text_stream(self, prompt: Sequence[int]) -> TextStream:
        """An incremental detokenizer for the tokens generated after `prompt`."""
        ...

    def step(self, rows: Sequence[Row]) -> list[Sampled]:
        """Run one forward pass over `rows`; one token for each row that has a sampler."""
        ...

    def is_oom(self, exc: BaseException) -> bool: ...

    def is_fatal(self, exc: BaseException) -> bool: ...

    def release_memory(self) -> None: ...
