"""CUDA graphs per shape bucket, on the CPU: what is captured, when a batch replays its graph
and when it runs eagerly, out of memory while capturing, and the graphs' lifetime.

The models are real (random-weight snapshots, the torch backend); their graphs are made by the
dry path's `RerunCapture` (the same static buffers and replay protocol, the pass run again).
tests/sidecar/test_gpu_graphs.py covers the real capture on a CUDA device.
"""

from __future__ import annotations

import gc
import logging
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from batching import Buckets
from batching.buckets import geometric
from sidecar.models import LoadOptions, ModelLoadError, cross_encoder, text_model
from sidecar.models.backend import Head, TorchBackend
from sidecar.models.bert import BertConfig, build_encoder
from sidecar.models.graphs import Graph, GraphRunner, RerunCapture, capture_plan, cuda_capture
from tests.sidecar.models.conftest import read_weights
from tests.snapshots import make_bert_snapshot, make_cross_encoder_snapshot

CPU = torch.device("cpu")
MAX_SIZE, MAX_LENGTH, MAX_TOKENS = 8, 64, 512
BUCKETS = Buckets(lengths=geometric(16, MAX_LENGTH, 2**0.5), sizes=geometric(1, MAX_SIZE, 2.0))
SHAPES = BUCKETS.shapes(MAX_LENGTH, MAX_SIZE, MAX_TOKENS)


def graphed(directory: Path, capture: Any, *, rerank: bool = False) -> Any:
    """The snapshot's model as `load` builds it, its torch backend capturing with `capture`."""
    weights = read_weights(directory)

    def backend(config: BertConfig, head: Head) -> TorchBackend:
        with_head = head.output != "pooled"
        encoder = build_encoder(
            config, weights, with_head=with_head, device=CPU, dtype=torch.float32
        )
        return TorchBackend(encoder, head, capture)

    options = LoadOptions(CPU, torch.float32, max_input_tokens=MAX_LENGTH)
    return (cross_encoder if rerank else text_model).build(directory, options, backend)


def batch_of(model: Any, shape: tuple[int, int], items: int) -> Any:
    """`items` items of varied lengths (the last of the shape's length), collated to `shape`."""
    rows, length = shape
    least = 3 if isinstance(model, text_model.TextModel) else 5
    lengths = [max(least, length * (i + 1) // items) for i in range(items)]
    if isinstance(model, cross_encoder.CrossEncoder):
        seqs: list[Any] = [(list(range(5, 5 + n)), [0] * (n - 2) + [1, 1]) for n in lengths]
    else:
        seqs = [[101, *range(1000, 1000 + n - 2), 102] for n in lengths]
    return model.collate(seqs, shape=lambda n, longest: (rows, length))


def warm(model: Any, shapes: Sequence[tuple[int, int]] = SHAPES) -> GraphRunner:
    timings = model.warmup(MAX_SIZE, MAX_TOKENS, shapes=shapes)
    runner = model.backend.graphs
    assert isinstance(runner, GraphRunner)
    assert len(timings) == len(shapes)
    # With graphs, the timings that seed the batch cost are of replays.
    assert runner.num_replays == (len(shapes) if runner.shapes else 0)
    return runner


SNAPSHOTS: dict[str, Callable[[Path], Path]] = {
    "bert embed": lambda d: make_bert_snapshot(d),
    "roberta embed": lambda d: make_bert_snapshot(
        d, model_type="roberta", max_position_embeddings=130
    ),
    "bert classify": lambda d: make_bert_snapshot(d, task="classify"),
    "cross-encoder": lambda d: make_cross_encoder_snapshot(d),
}  # fmt: skip


def test_the_plan_captures_largest_first_and_keeps_the_smallest_past_the_cap() -> None:
    shapes = [(1, 16), (8, 64), (2, 16), (4, 32), (2, 16), (1, 64)]
    assert capture_plan(shapes) == [(8, 64), (4, 32), (1, 64), (2, 16), (1, 16)]
    assert capture_plan(shapes, max_graphs=3) == [(1, 64), (2, 16), (1, 16)]
    assert capture_plan([]) == []


@pytest.mark.parametrize("kind", list(SNAPSHOTS))
def test_every_bucket_shape_replays_its_graph_as_the_eager_pass(tmp_path: Path, kind: str) -> None:
    directory = SNAPSHOTS[kind](tmp_path)
    rerank = kind == "cross-encoder"
    model, eager = (
        graphed(directory, RerunCapture(), rerank=rerank),
        graphed(directory, None, rerank=rerank),
    )
    runner = warm(model)
    assert runner.shapes == sorted(SHAPES) and eager.backend.graphs is None
    eager_passes = runner.num_eager  # the warm-up's, before the capture
    for shape in SHAPES:
        for items in sorted({1, shape[0] // 2 or 1, shape[0]}):
            batch = batch_of(model, shape, items)
            replays = runner.num_replays
            got = model.forward(batch)
            assert runner.num_replays == replays + 1, (shape, items)
            assert len(got) == items
            np.testing.assert_allclose(got, eager.forward(batch), rtol=1e-5, atol=1e-6)
    assert runner.num_eager == eager_passes


def test_a_shape_outside_the_captured_set_runs_eagerly(tmp_path: Path) -> None:
    directory = make_bert_snapshot(tmp_path)
    model, eager = graphed(directory, RerunCapture()), graphed(directory, None)
    runner = warm(model, [(4, 32), (1, 16)])
    runner.num_eager = runner.num_replays = 0
    for shape in [(3, 32), (4, 24), (1, 32), (8, 16)]:
        batch = batch_of(model, shape, shape[0])
        np.testing.assert_allclose(model.forward(batch), eager.forward(batch), rtol=1e-5, atol=1e-6)
    assert (runner.num_eager, runner.num_replays) == (4, 0)
    # Unpadded: the eager pass runs without a mask; the graph of the shape takes it anyway.
    seqs = [[101, *range(1000, 1030), 102]] * 4
    unpadded = model.collate(seqs)
    assert tuple(unpadded.input_ids.shape) == (4, 32) and not unpadded.padded
    np.testing.assert_allclose(
        model.forward(unpadded), eager.forward(unpadded), rtol=1e-5, atol=1e-6
    )
    assert runner.num_replays == 1


def test_warmup_without_bucket_shapes_captures_nothing(tmp_path: Path) -> None:
    model = graphed(make_bert_snapshot(tmp_path), RerunCapture())
    model.warmup(MAX_SIZE, MAX_TOKENS)  # its own few shapes: no buckets, no graphs
    assert model.backend.graphs.shapes == []


class OutOfMemoryAt(RerunCapture):
    """Captures as the dry path does, but runs out of device memory at the `at`-th capture, as
    torch reports it; `ending`: the end of the capture then fails too (the error the caller
    sees has the out-of-memory error as its context)."""

    def __init__(self, at: int, *, ending: bool = False) -> None:
        self.at, self.ending, self.calls = at, ending, 0

    def __call__(self, run: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, Graph]:
        self.calls += 1
        if self.calls < self.at:
            return super().__call__(run)
        try:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        except torch.cuda.OutOfMemoryError:
            if not self.ending:
                raise
            raise RuntimeError(
                "CUDA error: operation failed due to a previous error during capture"
            ) from None


@pytest.mark.parametrize("ending", [False, True])
def test_out_of_memory_while_capturing_falls_back_to_eager_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, ending: bool
) -> None:
    directory = make_bert_snapshot(tmp_path)
    model, eager = graphed(directory, OutOfMemoryAt(3, ending=ending)), graphed(directory, None)
    with caplog.at_level(logging.WARNING, logger="sidecar.models.graphs"):
        runner = warm(model)
    assert runner.shapes == []
    runner.num_eager = 0
    (record,) = [r for r in caplog.records if r.name == "sidecar.models.graphs"]
    assert record.levelno == logging.WARNING
    assert "out of memory" in record.getMessage() and "after 2 graphs" in record.getMessage()
    batch = batch_of(model, SHAPES[0], 1)
    np.testing.assert_allclose(model.forward(batch), eager.forward(batch), rtol=1e-5, atol=1e-6)
    assert runner.num_eager == 1


class Unsupported(RerunCapture):
    def __call__(self, run: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, Graph]:
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")


def test_another_capture_error_fails_the_warmup_with_what_to_set(tmp_path: Path) -> None:
    model = graphed(make_bert_snapshot(tmp_path), Unsupported())
    with pytest.raises(
        ModelLoadError, match=r"capture of shape \(\d+, \d+\) failed.*CUDA_GRAPHS=off"
    ):
        model.warmup(MAX_SIZE, MAX_TOKENS, shapes=SHAPES)
    assert model.backend.graphs.shapes == []


def test_the_graphs_and_their_buffers_go_with_their_model(tmp_path: Path) -> None:
    model = graphed(make_bert_snapshot(tmp_path), RerunCapture())
    runner = warm(model, [(2, 16)])
    with torch.inference_mode():
        output = weakref.ref(runner.replay(batch_of(model, (2, 16), 2)))
    gone = weakref.ref(runner)
    del model, runner  # no reference cycle holds them: no collection needed
    assert gone() is None and output() is None


def test_release_drops_every_graph_and_later_batches_run_eagerly(tmp_path: Path) -> None:
    model = graphed(make_bert_snapshot(tmp_path), RerunCapture())
    runner = warm(model, [(2, 16)])
    with torch.inference_mode():
        output = weakref.ref(runner.replay(batch_of(model, (2, 16), 2)))
    runner.release()
    gc.collect()
    assert output() is None and runner.shapes == []
    with torch.inference_mode():
        assert runner.replay(batch_of(model, (2, 16), 2)) is None


def test_graphs_are_cudas_alone() -> None:
    assert cuda_capture(CPU, True) is None
    assert cuda_capture(torch.device("cuda:0"), False) is None
