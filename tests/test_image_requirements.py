"""What each image installs, as docker/requirements.py prints it from pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def requirements(*args: str) -> list[str]:
    script = ROOT / "docker" / "requirements.py"
    result = subprocess.run(
        [sys.executable, str(script), "--pyproject", str(ROOT / "pyproject.toml"), *args],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return result.stdout.splitlines()


def names(lines: list[str]) -> set[str]:
    return {line.split("[")[0].split(">")[0].split("=")[0].split("<")[0] for line in lines}


def test_the_cpu_image_pins_its_torch_and_runs_onnx_on_the_cpu_build() -> None:
    lines = requirements("runtime", "torch==2.13.0+cpu")
    assert lines[0] == "torch==2.13.0+cpu"
    assert "onnxruntime" in names(lines) and "onnxruntime-gpu" not in names(lines)
    assert {"opentelemetry-sdk", "aiohttp", "safetensors"} <= names(lines)  # tracing extra too


def test_the_cuda_image_swaps_onnxruntime_for_its_cuda_build() -> None:
    lines = requirements("runtime", "torch==2.13.0", "--cuda")
    assert lines[0] == "torch==2.13.0"
    assert "onnxruntime-gpu>=1.31" in lines  # built for CUDA 13, as torch 2.13's wheel
    assert "onnxruntime" not in names(lines)
    cpu = requirements("runtime", "torch==2.13.0")
    assert names(lines) - {"onnxruntime-gpu"} == names(cpu) - {"onnxruntime"}
