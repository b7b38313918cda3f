"""What an ONNX model directory may not do: reach outside itself, be cut short, or need a
custom-op library. Each is refused before ONNX Runtime sees the graph, naming the file; the same
errors stop the server's start-up."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from sidecar.config import Settings
from sidecar.errors import StartupError
from sidecar.models import LoadOptions, ModelLoadError, TensorInputs, Tensors, run_inline
from sidecar.models.families import load_model
from sidecar.models.onnx_graph import check_graph
from sidecar.serving import loading
from tests.onnx_graphs import matmul_graph


def load(directory: Path) -> object:
    return load_model(directory, {}, LoadOptions(torch.device("cpu"), None, backend="onnx"))


def start_up(directory: Path) -> None:
    settings = Settings.from_env(
        {"SIDECAR_MODEL": str(directory), "SIDECAR_DEVICE": "cpu", "SIDECAR_WARMUP": "false"}
    )
    loading.load(settings)


def test_a_graph_with_external_data_inside_its_directory_serves(tmp_path: Path) -> None:
    directory = matmul_graph(tmp_path / "model")
    checked = check_graph(directory)
    assert checked.num_bytes == (directory / "model.onnx").stat().st_size + 48
    x = np.ones((2, 4), np.float32)
    result = run_inline(load(directory), TensorInputs({"x": x}))  # type: ignore[arg-type]
    assert isinstance(result, Tensors)
    np.testing.assert_array_equal(result.outputs["y"], x @ np.arange(12.0).reshape(4, 3))


def _relocate(directory: Path, location: str) -> None:
    """Point the weight tensor's external data at `location`, as a hostile file would."""
    model = onnx.load(str(directory / "model.onnx"), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    onnx.save(model, str(directory / "model.onnx"))


def test_external_data_outside_the_directory_is_refused(tmp_path: Path) -> None:
    directory = matmul_graph(tmp_path / "model")
    os.replace(directory / "weights.bin", tmp_path / "weights.bin")
    for location in ("../weights.bin", str(tmp_path / "weights.bin")):
        _relocate(directory, location)
        with pytest.raises(ModelLoadError) as refused:
            check_graph(directory)
        message = str(refused.value)
        assert "model.onnx" in message and location in message
        assert "not a path inside the model directory" in message
        with pytest.raises(StartupError, match=re.escape("weights.bin")):
            start_up(directory)


def test_a_symlink_escaping_the_directory_is_refused(tmp_path: Path) -> None:
    directory = matmul_graph(tmp_path / "model")
    os.replace(directory / "weights.bin", tmp_path / "elsewhere.bin")
    (directory / "weights.bin").symlink_to(tmp_path / "elsewhere.bin")
    with pytest.raises(
        ModelLoadError, match=re.escape("'weights.bin' is a symlink that leads out")
    ):
        check_graph(directory)
    with pytest.raises(StartupError, match=re.escape("weights.bin")):
        start_up(directory)
    # The graph itself, a symlink out of the directory.
    other = matmul_graph(tmp_path / "other", external=False)
    os.replace(other / "model.onnx", tmp_path / "outside.onnx")
    (other / "model.onnx").symlink_to(tmp_path / "outside.onnx")
    with pytest.raises(StartupError, match=re.escape("'model.onnx' is a symlink that leads out")):
        start_up(other)
    # External data is a regular file (ONNX's rule), even when the link stays inside.
    (directory / "weights.bin").unlink()
    os.replace(tmp_path / "elsewhere.bin", directory / "real.bin")
    (directory / "weights.bin").symlink_to("real.bin")
    with pytest.raises(ModelLoadError, match=re.escape("'weights.bin' is a symlink, not a")):
        check_graph(directory)
    # The graph may be a link inside the directory (volumes link files to ..data/).
    os.replace(other / "model.onnx", other / "link.onnx")
    os.replace(tmp_path / "outside.onnx", other / "real.onnx")
    (other / "model.onnx").symlink_to("real.onnx")
    assert check_graph(other).path == other.resolve() / "real.onnx"


def test_truncated_files_are_refused(tmp_path: Path) -> None:
    directory = matmul_graph(tmp_path / "model")
    data = directory / "weights.bin"
    data.write_bytes(data.read_bytes()[:40])  # 48 bytes of weights, cut short
    with pytest.raises(ModelLoadError, match=r"weights.bin: 40 bytes, too short .* truncated"):
        check_graph(directory)
    with pytest.raises(StartupError, match=re.escape("weights.bin")):
        start_up(directory)
    inline = matmul_graph(tmp_path / "inline", external=False)
    graph = inline / "model.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    with pytest.raises(StartupError, match=re.escape("model.onnx: not a readable ONNX graph")):
        start_up(inline)
    graph.write_bytes(b"")
    with pytest.raises(StartupError, match=re.escape("model.onnx: 0 bytes")):
        start_up(inline)


def test_a_custom_operator_domain_is_refused(tmp_path: Path) -> None:
    directory = matmul_graph(tmp_path / "model", domain="com.example.custom")
    with pytest.raises(ModelLoadError) as refused:
        check_graph(directory)
    message = str(refused.value)
    assert message.startswith("model.onnx: operator 'MatMul' of domain 'com.example.custom'")
    assert "custom-op libraries are never loaded" in message
    with pytest.raises(StartupError, match=re.escape("com.example.custom")):
        start_up(directory)
