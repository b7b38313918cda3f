"""Incremental detokenization: text for each new token, never a partial UTF-8 character.

Decoding tokens one at a time is wrong twice over: a byte-level token may hold part of a
character (decoded alone it is U+FFFD), and tokenizers that drop a word's leading space decode
a token differently after its neighbours. So each new token is decoded with a few tokens before
it (`prefix` .. end), and only the text past what those decoded to is new; text ending in U+FFFD
waits for the token that completes the character (the method of vLLM and text-generation-
inference).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

REPLACEMENT = "\ufffd"
# Prompt tokens decoded before the first generated one, for its context.
CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    """Turns a sequence's generated tokens into text deltas.

    Args:
        decode: token ids -> text (special tokens skipped).
        prompt: the prompt's token ids (the last few give the first token its context).
    """

    def __init__(self, decode: Callable[[list[int]], str], prompt: Sequence[int]) -> None:
        self._decode = decode
        self._ids = list(prompt[-CONTEXT_TOKENS:])
        self._prefix = 0  # decoded as context for the next delta
        self._read = len(self._ids)  # everything before this has been emitted

    def push(self, token: int) -> str:
        """The text `token` completes (empty while a character is incomplete)."""
        self._ids.append(token)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) <= len(before) or after.endswith(REPLACEMENT):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before) :]
