"""The GPU check's CUDA graphs step: eager passes against graph replays, per bucket shape.

SIDECAR_CUDA_GRAPHS is off by default until this is measured. For a few bucket shapes it
captures the graphs as the server would (`warmup` with the shapes), then times the pass as
served (`forward`: inputs copied to the device, output rows back to the host) eagerly and by
replay, and records the ratio (eager time / replay time: above 1, graphs gain), the parity of
the replayed rows to the eager ones, the capture's time and device memory, and that a shape
outside the captured set runs eagerly. In the dry run the graphs are the dry path's
(`RerunCapture`: the same buffers and replays, the pass run again), so the ratio means nothing
there and is marked skipped.

Run by benchmarks.gpu_check in a process of its own; only the standard library is imported at
module level.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.gpu_check import Context

# (rows, length) bucket shapes: from launch-bound (one short item) to compute-bound.
GPU_SHAPES = ((1, 16), (1, 128), (8, 64), (32, 128), (64, 256), (256, 256))
DRY_SHAPES = ((1, 16), (4, 32))
OUTSIDE_SHAPE = (3, 24)  # no size bucket: runs eagerly
REPEATS = {"gpu": 20, "dry": 3}
# Cosine of the replayed rows to the eager rows that the step calls parity.
PARITY_MIN_COSINE = 0.999


def graphs(ctx: Context) -> None:
    """Eager against replayed passes for each shape: time, ratio, parity; capture time and
    memory; the fall-back to eager for a shape without a graph."""
    directory = Path(ctx.shared["model_dir"])
    repeats = REPEATS["dry" if ctx.dry_run else "gpu"]
    eager = _model(directory, ctx.device, graphs=False)
    graphed = _model(directory, ctx.device, graphs=True)
    limit = graphed.max_input_tokens
    shapes = [s for s in (DRY_SHAPES if ctx.dry_run else GPU_SHAPES) if s[1] <= limit]
    ctx.put("dtype", str(graphed.dtype).removeprefix("torch."))
    ctx.put("capture", "dry path (RerunCapture)" if ctx.dry_run else "torch.cuda.CUDAGraph")
    free_before = _free_bytes(ctx.device)
    started = time.perf_counter()
    graphed.warmup(max(s[0] for s in shapes), max(s[0] * s[1] for s in shapes), shapes=shapes)
    runner = graphed.backend.graphs
    ctx.put("captured", [list(s) for s in runner.shapes])
    ctx.put("warmup_and_capture_s", round(time.perf_counter() - started, 3))
    free_after = _free_bytes(ctx.device)
    ctx.put("capture_memory_mib", (
        round((free_before - free_after) / 2**20, 1)
        if free_before is not None and free_after is not None
        else {"skipped": "no CUDA device: no device memory to measure"}
    ))  # fmt: skip
    rows = []
    for shape in shapes:
        batch = _batch(graphed, shape)
        want = eager.forward(batch)
        eager.forward(batch)
        replays = runner.num_replays
        got = graphed.forward(batch)
        eager_s = [_seconds(lambda b=batch: eager.forward(b), ctx.device) for _ in range(repeats)]
        graph_s = [_seconds(lambda b=batch: graphed.forward(b), ctx.device) for _ in range(repeats)]
        eager_ms, graph_ms = statistics.median(eager_s) * 1e3, statistics.median(graph_s) * 1e3
        rows.append({
            "rows": shape[0],
            "tokens": shape[1],
            "replayed": runner.num_replays - replays == 1 + repeats,
            "eager_ms": round(eager_ms, 3),
            "graph_ms": round(graph_ms, 3),
            "ratio": (
                round(eager_ms / graph_ms, 3) if not ctx.dry_run
                else {"skipped": "the dry path replays by running the pass again"}
            ),
            "min_cosine": round(float(_cosines(got, want).min()), 6),
        })  # fmt: skip
        ctx.put("shapes", rows)
    ctx.put("parity", {
        "min_cosine": min(r["min_cosine"] for r in rows),
        "threshold": PARITY_MIN_COSINE,
        "passed": all(r["min_cosine"] >= PARITY_MIN_COSINE and r["replayed"] for r in rows),
    })  # fmt: skip
    eager_before = runner.num_eager
    batch = _batch(graphed, OUTSIDE_SHAPE)
    cosine = float(_cosines(graphed.forward(batch), eager.forward(batch)).min())
    ctx.put("outside_shape", {
        "shape": list(OUTSIDE_SHAPE),
        "ran_eagerly": runner.num_eager - eager_before == 1,
        "min_cosine": round(cosine, 6),
    })  # fmt: skip


def _model(directory: Path, device: str, *, graphs: bool) -> Any:
    """The snapshot's model in the served dtype; `graphs`: capturing them (on the CPU by the
    dry path's `RerunCapture`)."""
    import torch

    import loaders
    from sidecar.models import LoadOptions, text_model
    from sidecar.models.backend import Head, TorchBackend
    from sidecar.models.bert import BertConfig, build_encoder
    from sidecar.models.device import resolve_dtype
    from sidecar.models.graphs import RerunCapture, cuda_capture

    target = torch.device(device)
    dtype = resolve_dtype("auto", target)
    weights, _ = loaders.load_weights(sorted(directory.glob("*.safetensors")), device=target)
    options = LoadOptions(target, dtype, cuda_graphs=graphs)
    capture = (cuda_capture(target, graphs) or RerunCapture()) if graphs else None

    def backend(config: BertConfig, head: Head) -> TorchBackend:
        with_head = head.output != "pooled"
        encoder = build_encoder(config, weights, with_head=with_head, device=target, dtype=dtype)
        return TorchBackend(encoder, head, capture)

    return text_model.build(directory, options, backend)


def _batch(model: Any, shape: tuple[int, int]) -> Any:
    """`rows` items of lengths spread up to `length` (so the batch is padded), at that shape."""
    rows, length = shape
    full = model.truncate(model.tokenize([" ".join(["graphs"] * length)])[0], length)
    seqs = [full[: max(2, length * (i + 1) // rows - 1)] + full[-1:] for i in range(rows)]
    return model.collate(seqs, shape=lambda items, longest: (rows, length))


def _cosines(a: Any, b: Any) -> Any:
    import numpy as np

    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(norms, 1e-12)


def _seconds(run: Callable[[], Any], device: str) -> float:
    """Wall time of `run()`, the device drained before and after (`forward` itself waits for
    its rows)."""
    _drain(device)
    started = time.perf_counter()
    run()
    _drain(device)
    return time.perf_counter() - started


def _drain(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _free_bytes(device: str) -> int | None:
    """Free device memory, the device drained and the allocator's cached blocks handed back
    (None on a CPU)."""
    if device != "cuda":
        return None
    import torch

    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    free, _total = torch.cuda.mem_get_info()
    return int(free)
