"""`sidecar export onnx MODEL OUT`, and how start-up picks the backend (SIDECAR_BACKEND)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import onnx
import pytest
import torch

from sidecar.config import Settings
from sidecar.errors import ConfigError, StartupError
from sidecar.models import Embeddings, LoadOptions, TextInputs, run_inline
from sidecar.models.families import load_model
from sidecar.onnx_export import ExportError, export_onnx
from sidecar.serving import loading
from tests.sidecar.test_cli import run as sidecar_cli


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return sidecar_cli(*args, timeout=300)  # an export loads, exports and checks a model


def test_the_command_writes_a_directory_the_onnx_backend_serves(
    tiny_classify_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "exported"
    result = run("export", "onnx", str(tiny_classify_dir), str(out))
    assert result.returncode == 0, result.stderr
    assert "classify model" in result.stdout and "parity on 200 samples" in result.stdout
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "config.json", "tokenizer.json", "vocab.txt"} <= names
    assert not [n for n in names if n.endswith((".safetensors", ".bin"))]
    assert [p.name for p in tmp_path.iterdir()] == ["exported"]  # no staging left behind
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False)
    metadata = {p.key: p.value for p in graph.metadata_props}
    assert metadata["sidecar.task"] == "classify"
    assert [o.name for o in graph.graph.output] == ["probabilities"]
    again = run("export", "onnx", str(tiny_classify_dir), str(out))
    assert again.returncode == 1 and "exists" in again.stderr and "Traceback" not in again.stderr
    missing = run("export", "onnx", str(tmp_path / "nothing"), str(tmp_path / "x"))
    assert missing.returncode == 1 and "cannot load" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_optimized_fp16_export_keeps_parity(tiny_embed_dir: Path, tmp_path: Path) -> None:
    samples = ["a first sample", "another one, a little longer than the first", "x"]
    report = export_onnx(
        str(tiny_embed_dir), tmp_path / "fp16", optimize=True, fp16=True, samples=samples
    )
    assert report.task == "embed" and report.num_samples == 3
    assert report.min_cosine is not None and report.min_cosine >= 0.999
    model = load_model(report.out, {}, LoadOptions(torch.device("cpu"), None, backend="onnx"))
    assert model.card.dtype == "float16"
    result = run_inline(model, TextInputs(samples))
    assert isinstance(result, Embeddings) and result.vectors.dtype.name == "float32"
    with pytest.raises(ExportError, match="exists"):
        export_onnx(str(tiny_embed_dir), report.out)


def _settings(**env: str) -> Settings:
    return Settings.from_env({"SIDECAR_DEVICE": "cpu", "SIDECAR_WARMUP": "false", **env})


def test_the_backend_follows_the_directory_unless_set(
    tiny_embed_dir: Path, tiny_embed_onnx_dir: Path
) -> None:
    assert loading.model_backend("auto", str(tiny_embed_onnx_dir)) == "onnx"
    assert loading.model_backend("auto", str(tiny_embed_dir)) == "torch"
    assert loading.model_backend("auto", "hf://org/name") == "torch"
    assert loading.model_backend("torch", str(tiny_embed_onnx_dir)) == "torch"
    loaded = loading.load(_settings(SIDECAR_MODEL=str(tiny_embed_onnx_dir)))
    assert loaded.model.card.backend == "onnxruntime" and loaded.model.card.dtype == "float32"
    assert loaded.source_name == tiny_embed_onnx_dir.name
    with pytest.raises(StartupError, match=r"has no model\.onnx"):
        loading.load(_settings(SIDECAR_MODEL=str(tiny_embed_dir), SIDECAR_BACKEND="onnx"))
    with pytest.raises(StartupError, match="not a directory"):
        loading.load(_settings(SIDECAR_MODEL="hf://org/name", SIDECAR_BACKEND="onnx"))
    pinned = {"SIDECAR_MODEL_SHA256": "0" * 64, "SIDECAR_MODEL": str(tiny_embed_onnx_dir)}
    with pytest.raises(StartupError, match="does not verify digests"):
        loading.load(_settings(**pinned))
    with pytest.raises(StartupError, match="computes in float32, not bfloat16"):
        loading.load(_settings(SIDECAR_MODEL=str(tiny_embed_onnx_dir), SIDECAR_DTYPE="bfloat16"))
    with pytest.raises(ConfigError, match="SIDECAR_BACKEND"):
        Settings.from_env({"SIDECAR_BACKEND": "tensorrt"})
