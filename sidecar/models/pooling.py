"""Sentence-transformers pooling: token states (B, T, H) to one vector per text (B, D)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from sidecar.models.errors import ModelLoadError

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
# Old 1_Pooling/config.json booleans, in the order sentence-transformers concatenates them.
_LEGACY_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


def pooling_modes(raw: Mapping[str, Any]) -> tuple[str, ...]:
    """The modes a parsed 1_Pooling/config.json asks for, old boolean keys or `pooling_mode`."""
    mode = raw.get("pooling_mode")
    if mode is None:
        modes = tuple(m for key, m in _LEGACY_KEYS.items() if raw.get(key) is True) or ("mean",)
    elif isinstance(mode, str):
        modes = (mode,)
    elif isinstance(mode, list) and mode and all(isinstance(m, str) for m in mode):
        modes = tuple(mode)
    else:
        raise ModelLoadError(f"1_Pooling/config.json pooling_mode {mode!r} is not understood")
    unknown = sorted(set(modes) - set(POOLING_MODES))
    if unknown:
        raise ModelLoadError(
            f"1_Pooling/config.json pooling modes {unknown} are not supported "
            f"(supported: {', '.join(POOLING_MODES)})"
        )
    if raw.get("include_prompt", True) is not True:
        raise ModelLoadError("1_Pooling/config.json include_prompt=false is not supported")
    return modes


def pool(hidden: torch.Tensor, mask: torch.Tensor, modes: Sequence[str]) -> torch.Tensor:
    """Pool right-padded token states, padding excluded, exactly as sentence-transformers does.

    Args:
        hidden: (B, T, H) float token states.
        mask: (B, T) 1.0 on real tokens, 0.0 on padding, same dtype as `hidden`.
        modes: pooling modes, concatenated in this order.

    Returns:
        (B, H * len(modes)).
    """
    B, T, _ = hidden.shape
    m = mask.unsqueeze(-1)  # (B, T, 1)
    counts = m.sum(1).clamp(min=1e-9)  # (B, 1)
    vectors: list[torch.Tensor] = []
    for mode in modes:
        if mode == "cls":
            vectors.append(hidden[:, 0])
        elif mode == "max":
            vectors.append(hidden.masked_fill(m == 0, float("-inf")).amax(1))
        elif mode == "mean":
            vectors.append((hidden * m).sum(1) / counts)
        elif mode == "mean_sqrt_len_tokens":
            vectors.append((hidden * m).sum(1) / counts.sqrt())
        elif mode == "weightedmean":
            positions = torch.arange(1, T + 1, device=hidden.device, dtype=hidden.dtype)
            weights = positions[None, :, None] * m  # (B, T, 1)
            vectors.append((hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9))
        elif mode == "lasttoken":
            last = mask.sum(1).long() - 1  # (B,)
            vectors.append(hidden[torch.arange(B, device=hidden.device), last])
        else:
            raise ValueError(f"unknown pooling mode {mode!r}")
    return torch.cat(vectors, dim=-1)
