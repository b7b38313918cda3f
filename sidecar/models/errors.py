"""Errors of the model families: HTTP-agnostic, mapped to status codes by the sidecar.

Exception
 ├── ModelLoadError            the files cannot be served as asked (bad config, missing or
 │                             unexpected tensors, a task the checkpoint has no head for, a limit
 │                             out of range, no family for the checkpoint, no such device)
 └── InputError                a request's inputs do not suit the model
      ├── InputTooLongError    an input has more tokens than the limit, and truncation was not asked
      └── WrongInputsError     inputs of another task (texts for a reranker, pairs for an encoder)
"""

from __future__ import annotations


class ModelLoadError(Exception):
    """The model files cannot be served as asked; the message says what and why."""


class InputError(Exception):
    """A request's inputs do not suit the model; the message is safe to show the client."""


class InputTooLongError(InputError):
    """An input has more tokens than allowed and truncation was not asked for."""


class WrongInputsError(InputError):
    """The inputs are of a kind this model does not take (it serves another task)."""
