"""CUDA graphs of an encoder's forward pass: one captured per shape bucket, replayed in its place.

With shape buckets on CUDA every batch runs as one of a bounded set of (rows, length) shapes. A
small pass is bound by kernel launches, not by the GPU: a CUDA graph records the pass's kernels
once, at fixed input and output addresses, and replays them with one launch. `GraphRunner`
decides what is captured and when a batch replays, without calling CUDA itself; a `Capture`
makes the graphs: `CudaCapture` with torch.cuda, or `RerunCapture`, the dry path on any device
(the same static buffers, replayed by running the pass again), which the CPU tests and the GPU
check's dry run take.

Invariants:
- One graph per (rows, length), reading static inputs (rows, length) on the device (int32 ids,
  int32 token types, a bool mask) and writing a static output (rows, D) float32. A batch of that
  shape is copied into the inputs on the current stream, the graph replays, and its first
  `num_items` output rows are read before the next replay (the backend copies them to the host).
- A batch of any other shape runs eagerly, as without graphs.
- The graph always takes the attention mask (SDPA's masked kernel), also for a batch without
  padding, which the eager pass runs maskless: one graph per shape, not two.
- Captured largest first, into one memory pool that the model's graphs share: a pass's intermediates
  are dead once its replay ends and replays never overlap (the one device thread), so each
  smaller capture reuses the blocks of the larger ones; the pool holds about the largest pass's
  working memory. At most `MAX_GRAPHS`; past that, the shapes with the fewest padded tokens,
  where launches weigh most.
- Out of memory while capturing: every graph is dropped and every pass runs eagerly (a warning,
  start-up goes on). Any other capture error is a `ModelLoadError`.
- The graphs live as long as their runner (their model), which no reference cycle holds:
  dropping the model, or `release`, drops them, and their pool goes back to the device at the
  next `torch.cuda.empty_cache()`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from sidecar.models.errors import ModelLoadError
from sidecar.models.tokens import Batch

logger = logging.getLogger(__name__)

MAX_GRAPHS = 128
# Passes on the capture stream before each capture: lazy initialisation (cuBLAS workspaces are
# per stream) and allocator blocks happen there, not inside the capture (PyTorch's CUDA graphs
# notes; the eager warm-up before ran on the default stream).
SIDE_STREAM_PASSES = 2

# (input ids, token type ids, mask), each (rows, length) on the device -> (rows, D) float32
Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Shape = tuple[int, int]


class Graph(Protocol):
    def replay(self) -> None: ...


class Capture(Protocol):
    """Makes a graph of a pass over static inputs (on the device thread)."""

    def __call__(self, run: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, Graph]:
        """(the static output, the graph whose replay rewrites it) of `run`."""
        ...

    def free_bytes(self) -> int | None:
        """Free device memory now (None where not known), to report what the graphs took."""
        ...


def capture_plan(shapes: Sequence[Shape], max_graphs: int = MAX_GRAPHS) -> list[Shape]:
    """The shapes to capture, in capture order: at most `max_graphs` (those with the fewest
    padded tokens), largest first so that the shared pool is sized once by the first."""
    unique = sorted(set(shapes), key=lambda s: (s[0] * s[1], s))
    return sorted(unique[:max_graphs], key=lambda s: (s[0] * s[1], s), reverse=True)


@dataclass
class Captured:
    """One shape's graph and the static tensors it reads and writes."""

    input_ids: torch.Tensor  # (rows, length) int32
    token_type_ids: torch.Tensor  # (rows, length) int32
    attention_mask: torch.Tensor  # (rows, length) bool
    output: torch.Tensor  # (rows, D) float32
    graph: Graph


class GraphRunner:
    """The graphs of one model's forward pass, by shape.

    Args:
        forward: the pass from device inputs to the output rows, with the mask always given.
        device: where the static tensors live.
        capture: what makes each graph.
        max_graphs: the most graphs kept.
    """

    def __init__(
        self, forward: Forward, device: torch.device, capture: Capture, max_graphs: int = MAX_GRAPHS
    ) -> None:
        self._forward = forward
        self._device = device
        self._capture = capture
        self._max_graphs = max_graphs
        self._graphs: dict[Shape, Captured] = {}
        self.num_replays = 0
        self.num_eager = 0

    @property
    def shapes(self) -> list[Shape]:
        """The captured (rows, length) shapes, ascending."""
        return sorted(self._graphs)

    def capture(self, shapes: Sequence[Shape]) -> None:
        """Capture a graph for each shape of the plan (`capture_plan`), replacing any before.

        Call under `torch.inference_mode()`, after eager passes of each shape, on the device
        thread with nothing else running on the device.

        Raises:
            ModelLoadError: a capture failed for a reason other than memory.
        """
        self.release()
        plan = capture_plan(shapes, self._max_graphs)
        if not plan:
            return
        free_before = self._capture.free_bytes()
        for rows, length in plan:
            try:
                self._graphs[(rows, length)] = self._one(rows, length)
            except Exception as exc:
                captured = len(self._graphs)
                self.release()
                if not _out_of_memory(exc):
                    raise ModelLoadError(
                        f"CUDA graph capture of shape ({rows}, {length}) failed: {exc}; "
                        "set SIDECAR_CUDA_GRAPHS=off"
                    ) from exc
                logger.warning(
                    "CUDA graphs: out of memory capturing shape (%d, %d) after %d graphs: "
                    "released them all, every batch runs eagerly",
                    rows,
                    length,
                    captured,
                )
                return
        free_after = self._capture.free_bytes()
        taken = "unknown" if free_before is None or free_after is None else (
            f"{(free_before - free_after) / 2**20:.1f} MiB"
        )  # fmt: skip
        logger.info(
            "CUDA graphs: captured %d of %d shapes (%d skipped over the cap of %d), largest %s, "
            "device memory taken %s",
            len(self._graphs),
            len(set(shapes)),
            len(set(shapes)) - len(plan),
            self._max_graphs,
            plan[0],
            taken,
        )

    def _one(self, rows: int, length: int) -> Captured:
        def filled(dtype: torch.dtype, value: int | bool) -> torch.Tensor:
            return torch.full((rows, length), value, dtype=dtype, device=self._device)

        # Valid inputs to capture with: token 0 of type 0, every position real.
        ids, types, mask = filled(torch.int32, 0), filled(torch.int32, 0), filled(torch.bool, True)
        forward = self._forward  # not `self`: a graph that keeps its pass holds no cycle
        output, graph = self._capture(lambda: forward(ids, types, mask))
        return Captured(ids, types, mask, output, graph)

    def replay(self, batch: Batch) -> torch.Tensor | None:
        """The output rows (rows, D) of the batch's shape's graph, replayed on the batch; None
        when that shape has no graph (the caller runs the pass eagerly). The rows are the
        graph's own: read them before the next replay."""
        captured = self._graphs.get((batch.input_ids.shape[0], batch.input_ids.shape[1]))
        if captured is None:
            self.num_eager += 1
            return None
        captured.input_ids.copy_(batch.input_ids, non_blocking=True)
        captured.token_type_ids.copy_(batch.token_type_ids, non_blocking=True)
        captured.attention_mask.copy_(batch.attention_mask, non_blocking=True)
        captured.graph.replay()
        self.num_replays += 1
        return captured.output

    def release(self) -> None:
        """Drop every graph and its static tensors (their pool goes at the next empty_cache)."""
        self._graphs.clear()


class RerunCapture:
    """The dry path: a "graph" whose replay runs the pass again into the static output."""

    def __call__(self, run: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, Graph]:
        output = run()
        return output, Rerun(run, output)

    def free_bytes(self) -> int | None:
        return None


@dataclass
class Rerun:
    run: Callable[[], torch.Tensor]
    output: torch.Tensor

    def replay(self) -> None:
        self.output.copy_(self.run())


class CudaCapture:
    """Graphs captured with torch.cuda into one pool shared by the model's graphs, on the
    device's one capture stream.

    The capture mode is thread-local: other threads may use CUDA meanwhile (the loading thread
    copying another version's weights, a collate pinning host memory) without voiding it.
    """

    def __init__(self, device: torch.device) -> None:
        self._device = device
        with torch.cuda.device(device):
            self._pool = torch.cuda.graph_pool_handle()
            self._stream = capture_stream(torch.cuda.current_device())

    def __call__(self, run: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, Graph]:
        with torch.cuda.device(self._device):
            current = torch.cuda.current_stream(self._device)
            self._stream.wait_stream(current)
            with torch.cuda.stream(self._stream):
                for _ in range(SIDE_STREAM_PASSES):
                    run()
            current.wait_stream(self._stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(
                graph, pool=self._pool, stream=self._stream, capture_error_mode="thread_local"
            ):
                output = run()
            return output, graph

    def free_bytes(self) -> int | None:
        torch.cuda.synchronize(self._device)
        free, _total = torch.cuda.mem_get_info(self._device)
        return int(free)


@functools.cache
def capture_stream(index: int) -> torch.cuda.Stream:
    """The one side stream every model's graphs are captured on, per device (as torch's own
    `graph.default_capture_stream`): cuBLAS keeps a workspace per stream that outlives the
    model, so a new stream per model (a version reloaded many times) would add one each."""
    return torch.cuda.Stream(torch.device("cuda", index))  # type: ignore[no-untyped-call]


def cuda_capture(device: torch.device, enabled: bool) -> CudaCapture | None:
    """What captures a model's graphs on `device` when `enabled` (None on a CPU: graphs are
    CUDA's)."""
    return CudaCapture(device) if enabled and device.type == "cuda" else None


def _out_of_memory(exc: BaseException | None) -> bool:
    """`exc` is, or was raised while handling, a CUDA out-of-memory error (ending a capture
    that ran out of memory can raise a capture error of its own)."""
    while exc is not None:
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
        exc = exc.__context__
    return False
