"""The sidecar process: settings, HTTP API, lifecycle and metrics around the model."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
