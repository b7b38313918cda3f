"""Start-up: the settings that only the resolved device can refuse."""

from __future__ import annotations

import pytest
import torch

from sidecar.errors import StartupError
from sidecar.serving.loading import mapped_load


def test_mmap_for_a_model_on_a_gpu_is_a_clear_start_up_error() -> None:
    # SIDECAR_DEVICE=auto resolves to a GPU where there is one: only then is mmap wrong.
    with pytest.raises(StartupError, match=r"SIDECAR_LOAD_MODE=mmap .* runs on cuda:0"):
        mapped_load("mmap", torch.device("cuda:0"))
    assert mapped_load("mmap", torch.device("cpu")) is True
    assert mapped_load("read", torch.device("cuda:0")) is False
    assert mapped_load("auto", torch.device("cuda:0")) is None
