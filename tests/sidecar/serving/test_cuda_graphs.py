"""SIDECAR_CUDA_GRAPHS: off by default, `auto` off until measured, `on` only where graphs can be
captured (a CUDA device, shape buckets, the warm-up, the torch backend); the start-up warm-up
captures every shape it runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sidecar.config import Settings
from sidecar.errors import ConfigError, StartupError
from sidecar.models.graphs import RerunCapture
from sidecar.serving import loading
from sidecar.serving.shapes import cuda_graphs
from tests.sidecar.models.test_graphs import graphed
from tests.snapshots import make_bert_snapshot


def test_graphs_are_off_unless_asked() -> None:
    assert Settings.from_env({}).cuda_graphs == "off"
    for value in ("auto", "on", "off"):
        assert Settings.from_env({"SIDECAR_CUDA_GRAPHS": value}).cuda_graphs == value
    with pytest.raises(ConfigError, match=r"SIDECAR_CUDA_GRAPHS='yes' is invalid.*auto.*on.*off"):
        Settings.from_env({"SIDECAR_CUDA_GRAPHS": "yes"})


@pytest.mark.parametrize(
    ("variable", "value", "needs"),
    [
        ("SIDECAR_DEVICE", "cpu", "a CUDA device"),
        ("SIDECAR_SHAPE_BUCKETS", "off", "shape buckets"),
        ("SIDECAR_WARMUP", "false", "the warm-up"),
        ("SIDECAR_BACKEND", "onnx", "the torch backend"),
    ],
)
def test_graphs_on_without_what_they_need_is_a_config_error(
    variable: str, value: str, needs: str
) -> None:
    with pytest.raises(ConfigError, match=rf"SIDECAR_CUDA_GRAPHS='on' is invalid.*{needs}"):
        Settings.from_env({"SIDECAR_CUDA_GRAPHS": "on", variable: value})
    Settings.from_env({"SIDECAR_CUDA_GRAPHS": "auto", variable: value})  # auto is never refused


def test_auto_means_off_until_measured_and_on_needs_the_device_to_be_cuda() -> None:
    assert cuda_graphs("on", "cuda:1") is True
    assert cuda_graphs("auto", "cuda:0") is False
    assert cuda_graphs("off", "cuda:0") is False
    assert cuda_graphs("auto", "cpu") is False
    with pytest.raises(ValueError, match="SIDECAR_CUDA_GRAPHS=on needs a CUDA device"):
        cuda_graphs("on", "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="SIDECAR_DEVICE=auto resolves to the GPU")
def test_graphs_on_with_auto_finding_no_gpu_fails_the_start_up(tmp_path: Path) -> None:
    snapshot = str(make_bert_snapshot(tmp_path / "model"))
    settings = Settings.from_env({"SIDECAR_MODEL": snapshot, "SIDECAR_CUDA_GRAPHS": "on"})
    with pytest.raises(StartupError, match=r"SIDECAR_CUDA_GRAPHS=on needs a CUDA device.* cpu"):
        loading.load(settings)
    served = loading.load(Settings.from_env({"SIDECAR_MODEL": snapshot}))
    assert served.model.backend.graphs is None  # type: ignore[attr-defined]


def test_the_start_up_warm_up_captures_every_shape_it_runs(tmp_path: Path) -> None:
    # On a CPU with buckets on, each length bucket once; the dry path's graphs stand in for CUDA.
    model = graphed(make_bert_snapshot(tmp_path), RerunCapture())
    settings = Settings.from_env({"SIDECAR_SHAPE_BUCKETS": "on"})
    timings = loading.warm_up(model, settings)
    runner = model.backend.graphs
    assert runner.shapes == [(1, 16), (1, 24), (1, 32), (1, 48), (1, 64)]
    assert len(timings) == 5 and runner.num_replays == 5  # the cost's seed: the replays
