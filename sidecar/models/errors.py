"""Errors raised while building a model from its files.

Exception
 └── ModelLoadError   the files cannot be served as asked (bad config, missing or unexpected
                      tensors, a task the checkpoint has no head for, a limit out of range)
"""

from __future__ import annotations


class ModelLoadError(Exception):
    """The model files cannot be served as asked; the message says what and why."""
