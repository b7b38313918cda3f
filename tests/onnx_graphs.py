"""Small real ONNX graphs for tests: torch modules exported with torch.onnx.export, and
hand-built ones (onnx.helper) where a test needs a graph no exporter writes."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn


class TwoInputMlp(nn.Module):
    """y = mlp(x) + bias, and each row's norm: two inputs and two outputs, batch axis free."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.mlp(x) + bias  # (B, 4)
        return y, y.norm(dim=1)  # (B, 4), (B,)


class SmallCnn(nn.Module):
    """Images (B, 3, H, W) of any size to two logits: height and width are left free."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, kernel_size=3, padding=1)
        self.out = nn.Linear(4, 2)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(image))  # (B, 4, H, W)
        return self.out(h.mean(dim=(2, 3)))  # (B, 2)


def export(
    module: nn.Module, args: tuple[torch.Tensor, ...], directory: Path, **kwargs: object
) -> Path:
    """`module` as `directory/model.onnx` (created), with torch's TorchScript exporter."""
    directory.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation notices
        torch.onnx.export(
            module.eval(), args, str(directory / "model.onnx"), dynamo=False, **kwargs
        )  # type: ignore[arg-type]
    return directory


def mlp_graph(directory: Path, seed: int = 0) -> tuple[Path, TwoInputMlp]:
    torch.manual_seed(seed)
    module = TwoInputMlp().eval()
    export(
        module,
        (torch.randn(2, 16), torch.randn(2, 4)),
        directory,
        input_names=["x", "bias"],
        output_names=["y", "norm"],
        dynamic_axes={
            "x": {0: "batch"},
            "bias": {0: "batch"},
            "y": {0: "batch"},
            "norm": {0: "batch"},
        },
    )
    return directory, module


def cnn_graph(directory: Path, seed: int = 0) -> tuple[Path, SmallCnn]:
    torch.manual_seed(seed)
    module = SmallCnn().eval()
    export(
        module,
        (torch.randn(2, 3, 8, 8),),
        directory,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}},
    )
    return directory, module


def matmul_graph(
    directory: Path, *, external: bool = True, domain: str = "", location: str = "weights.bin"
) -> Path:
    """y = x @ W (x: (batch, 4) float32, W: 4 x 3), W in an external data file (or inline);
    `domain` sets the operator's domain (a custom one names a custom-op library)."""
    directory.mkdir(parents=True, exist_ok=True)
    weight = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "W")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    node = helper.make_node("MatMul", ["x", "W"], ["y"], name="matmul", domain=domain)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(
        helper.make_graph([node], "g", [x], [y], [weight]), opset_imports=opsets
    )
    path = str(directory / "model.onnx")
    if external:
        onnx.save(model, path, save_as_external_data=True, location=location, size_threshold=0)
    else:
        onnx.save(model, path)
    return directory
