"""ONNX graphs served as their own tensors (task `tensor`): small real graphs exported from torch,
against ONNX Runtime in-process and against the torch modules they came from."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from batching import BatchConfig, BatchObserver, BatchStats
from sidecar.models import (
    InputError,
    InputTooLongError,
    LoadOptions,
    TensorInputs,
    Tensors,
    TensorSpec,
    TextInputs,
    WrongInputsError,
    run_inline,
)
from sidecar.models.families import load_model
from sidecar.models.tensor_model import TensorModel
from sidecar.serving.cache import ResponseCache
from sidecar.serving.engine import Engine, Executors
from tests.onnx_graphs import cnn_graph, mlp_graph

CPU = torch.device("cpu")


def load(directory: Path, **options: Any) -> Any:
    return load_model(directory, {}, LoadOptions(CPU, None, backend="onnx", **options))


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    return mlp_graph(tmp_path_factory.mktemp("mlp"))


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    return cnn_graph(tmp_path_factory.mktemp("cnn"))


def in_process(directory: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(
        str(directory / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)  # type: ignore[no-any-return]


def test_a_graph_without_a_tokenizer_is_a_tensor_model_described_by_its_graph(mlp) -> None:
    directory, _ = mlp
    model = load(directory)
    assert isinstance(model, TensorModel)
    card = model.card
    assert (card.task, card.backend, card.device, card.dtype) == (
        "tensor", "onnxruntime", "cpu", "float32"
    )  # fmt: skip
    assert card.inputs == (
        TensorSpec("x", "float32", (-1, 16)),
        TensorSpec("bias", "float32", (-1, 4)),
    )
    assert card.outputs == (
        TensorSpec("y", "float32", (-1, 4)),
        TensorSpec("norm", "float32", (-1,)),
    )
    assert card.max_input_tokens == 1  # every item costs one: the graph fixes all other sizes


def test_outputs_match_onnxruntime_in_process_and_torch(mlp) -> None:
    directory, module = mlp
    rng = np.random.default_rng(0)
    feeds = {
        "x": rng.standard_normal((37, 16), dtype=np.float32),
        "bias": rng.standard_normal((37, 4), dtype=np.float32),
    }
    result = run_inline(load(directory), TensorInputs(feeds), batch_size=8)
    assert isinstance(result, Tensors) and list(result.outputs) == ["y", "norm"]
    y, norm = in_process(directory, feeds)
    np.testing.assert_allclose(result.outputs["y"], y, rtol=0, atol=1e-6)
    np.testing.assert_allclose(result.outputs["norm"], norm, rtol=0, atol=1e-6)
    with torch.no_grad():
        reference = module(torch.from_numpy(feeds["x"]), torch.from_numpy(feeds["bias"]))[0]
    np.testing.assert_allclose(result.outputs["y"], reference.numpy(), atol=1e-5)
    only = run_inline(load(directory), TensorInputs(feeds, outputs=("norm",)))
    assert isinstance(only, Tensors) and list(only.outputs) == ["norm"]


def test_items_of_different_sizes_never_share_a_run(cnn) -> None:
    directory, module = cnn
    model = load(directory)
    rng = np.random.default_rng(1)
    small = rng.standard_normal((3, 3, 8, 8), dtype=np.float32)
    large = rng.standard_normal((2, 3, 12, 10), dtype=np.float32)
    prepared = [model.prepare(TensorInputs({"image": images})) for images in (small, large)]
    assert prepared[0].costs == [64] * 3 and prepared[1].costs == [120] * 2  # H x W
    items = [prepared[0].items[0], prepared[1].items[0], prepared[0].items[1], prepared[1].items[1]]
    batch = model.collate(items)
    assert [(indices, feeds["image"].shape) for indices, feeds in batch.groups] == [
        ((0, 2), (2, 3, 8, 8)),
        ((1, 3), (2, 3, 12, 10)),
    ]
    rows = model.forward(batch)
    (small_out,) = in_process(directory, {"image": small})
    (large_out,) = in_process(directory, {"image": large})
    expected = [small_out[0], large_out[0], small_out[1], large_out[1]]
    for row, want in zip(rows, expected, strict=True):
        np.testing.assert_allclose(row["logits"], want, atol=1e-6)
    # A padded shape (size buckets) adds filler rows to each run; their outputs are dropped.
    padded = model.collate(items, shape=lambda n, longest: (4, longest))
    assert [feeds["image"].shape[0] for _, feeds in padded.groups] == [4, 4]
    assert len(model.forward(padded)) == 4
    with torch.no_grad():
        reference = module(torch.from_numpy(large)).numpy()
    np.testing.assert_allclose(large_out, reference, atol=1e-5)


def test_prepare_refuses_what_the_graph_does_not_take(mlp, cnn) -> None:
    model = load(mlp[0])
    x, bias = np.zeros((2, 16), np.float32), np.zeros((2, 4), np.float32)
    cases = [
        ({"x": x}, "missing \\['bias'\\]"),
        ({"x": x, "bias": bias, "z": bias}, "unknown \\['z'\\]"),
        ({"x": x.astype(np.float64), "bias": bias}, "'x' is float64; the graph takes float32"),
        ({"x": np.zeros((2, 15), np.float32), "bias": bias}, "'x' has shape \\[2, 15\\]"),
        ({"x": np.zeros((2, 1, 16), np.float32), "bias": bias}, "'x' has shape"),
        ({"x": x, "bias": bias[:1]}, "different numbers of rows"),
        ({"x": x[:0], "bias": bias[:0]}, "no rows"),
    ]
    for tensors, message in cases:
        with pytest.raises(InputError, match=message):
            model.prepare(TensorInputs(tensors))
    with pytest.raises(InputError, match="unknown outputs \\['z'\\]"):
        model.prepare(TensorInputs({"x": x, "bias": bias}, outputs=("z",)))
    with pytest.raises(WrongInputsError, match="named tensors"):
        model.prepare(TextInputs(["text"]))
    images = load(cnn[0], max_input_tokens=100)
    assert images.card.max_input_tokens == 100
    images.prepare(TensorInputs({"image": np.zeros((1, 3, 10, 10), np.float32)}))
    with pytest.raises(InputTooLongError, match="110 elements"):
        images.prepare(TensorInputs({"image": np.zeros((1, 3, 10, 11), np.float32)}))


def test_warmup_runs_fixed_shapes_and_skips_free_ones(mlp, cnn) -> None:
    timings = load(mlp[0]).warmup(4, 128)
    assert [count for count, _ in timings] == [1, 4] and all(s > 0 for _, s in timings)
    assert load(mlp[0]).warmup(4, 128, shapes=[(2, 16), (8, 16)])[1][0] == 8
    assert load(cnn[0]).warmup(4, 128) == []


class Sizes(BatchObserver):
    """Records each batch's size, as the metrics do."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def on_batch(self, stats: BatchStats) -> None:
        self.sizes.append(stats.size)


async def test_concurrent_requests_are_batched_and_answered_in_order(mlp) -> None:
    directory, _ = mlp
    model = load(directory)
    sizes, executors = Sizes(), Executors.create()
    config = BatchConfig(window_s=0.05, max_size=16, adaptive=False)
    engine = Engine(model, config, observer=sizes, executors=executors)
    await engine.start()
    rng = np.random.default_rng(2)
    requests = [
        {
            "x": rng.standard_normal((n, 16), dtype=np.float32),
            "bias": rng.standard_normal((n, 4), dtype=np.float32),
        }
        for n in [1, 2, 3] * 8
    ]
    try:
        answers = await asyncio.gather(
            *(engine.infer(TensorInputs(feeds), deadline=None) for feeds in requests)
        )
    finally:
        await engine.stop()
        executors.shutdown()
    for feeds, answer in zip(requests, answers, strict=True):
        y, norm = in_process(directory, feeds)
        assert isinstance(answer.result, Tensors)
        np.testing.assert_allclose(answer.result.outputs["y"], y, atol=1e-6)
        np.testing.assert_allclose(answer.result.outputs["norm"], norm, atol=1e-6)
        assert answer.num_tokens == len(y)
    assert sum(sizes.sizes) == 48 and max(sizes.sizes) > 1
    assert len(sizes.sizes) < len(requests)  # 24 requests' rows in fewer runs of the graph


async def test_cached_rows_are_not_run_again(mlp) -> None:
    directory, _ = mlp
    sizes, executors = Sizes(), Executors.create()
    cache = ResponseCache(16)
    config = BatchConfig(window_s=0.0, max_size=16, adaptive=False)
    engine = Engine(load(directory), config, observer=sizes, executors=executors, cache=cache)
    await engine.start()
    rng = np.random.default_rng(3)
    feeds = {
        "x": rng.standard_normal((3, 16), dtype=np.float32),
        "bias": rng.standard_normal((3, 4), dtype=np.float32),
    }
    changed = {name: array.copy() for name, array in feeds.items()}
    changed["bias"][2, 0] += 1.0  # one element of one row
    try:
        first = await engine.infer(TensorInputs(feeds), deadline=None)
        again = await engine.infer(TensorInputs(feeds, outputs=("norm",)), deadline=None)
        other = await engine.infer(TensorInputs(changed), deadline=None)
    finally:
        await engine.stop()
        executors.shutdown()
    assert isinstance(first.result, Tensors) and isinstance(again.result, Tensors)
    assert list(again.result.outputs) == ["norm"]  # the outputs asked for, from the hits
    assert np.array_equal(again.result.outputs["norm"], first.result.outputs["norm"])
    assert isinstance(other.result, Tensors)
    assert np.array_equal(other.result.outputs["y"][:2], first.result.outputs["y"][:2])
    assert (cache.hits, cache.misses) == (5, 4)
    assert sizes.sizes == [3, 1]  # the changed row alone ran again
    assert len(cache) == 0  # a stopped engine's entries are dropped
