"""The shapes batches run as on a device: shape buckets, and the shapes warm-up covers.

With buckets (SIDECAR_SHAPE_BUCKETS; by default on CUDA) a batch's token length is padded up to
one of about a dozen lengths, 16 to the model's input limit in steps of sqrt(2), and on CUDA its
row count up to a power of two (batching.Buckets). A GPU then sees a bounded set of shapes that
warm-up covers in full before the server turns ready: kernels chosen and allocator blocks sized
for each, none for the first time under load, and the caching allocator's pool reused instead
of grown by ever new sizes. Padding below the GPU's knee is free. On a CPU a pass costs its
padded tokens, and the host allocator's retention is bounded by other means (README "Memory"),
so buckets are off there unless asked for; when on, only lengths are bucketed (padding rows on a
CPU costs their full compute).

The same bounded set of shapes lets a torch encoder capture a CUDA graph per shape
(SIDECAR_CUDA_GRAPHS, sidecar.models.graphs). They are off by default: their gain has not been
measured on a GPU yet (benchmarks/gpu_check.py's `graphs` step measures it), and until it is,
`auto` means off too.
"""

from __future__ import annotations

from batching import BatchConfig, Buckets
from batching.buckets import geometric

LENGTH_RATIO = 2**0.5  # 16, 24, 32, 48, 64, 88, 128, 184, 256, 360, 512, ...
MIN_LENGTH = 16


def shape_buckets(setting: str, device: str, max_size: int, max_input_tokens: int) -> Buckets:
    """The buckets for SIDECAR_SHAPE_BUCKETS (`auto`, `on`, `off`) on `device`.

    Args:
        setting: `on`, `off`, or `auto` (on unless the device is the CPU).
        device: `cpu`, `cuda:0`, ...
        max_size: the most items of a batch (the last size bucket).
        max_input_tokens: the model's input limit (the last length bucket).
    """
    on_cpu = device == "cpu"
    if setting == "off" or (setting == "auto" and on_cpu):
        return Buckets()
    lengths = geometric(min(MIN_LENGTH, max_input_tokens), max_input_tokens, LENGTH_RATIO)
    return Buckets(lengths=lengths, sizes=() if on_cpu else geometric(1, max_size, 2.0))


def warmup_shapes(config: BatchConfig, max_input_tokens: int) -> list[tuple[int, int]] | None:
    """The (items, tokens) shapes a model warms up on; None: the model's own few.

    With size buckets (CUDA), every shape a batch can take. With length buckets alone (a CPU),
    each length once, one item each: every length's code paths for a few milliseconds each.
    """
    buckets = config.buckets
    if not buckets or max_input_tokens > config.max_tokens:
        return None  # start-up refuses a limit over max_tokens; nothing to warm meanwhile
    if buckets.sizes:
        return buckets.shapes(max_input_tokens, config.max_size, config.max_tokens)
    top = buckets.length(max_input_tokens, config.max_tokens)
    return [(1, length) for length in buckets.lengths if length <= top]


def cuda_graphs(setting: str, device: str) -> bool:
    """Whether a model on `device` captures CUDA graphs, for SIDECAR_CUDA_GRAPHS (`auto`, `on`,
    `off`): `on` on CUDA; `auto` is off until the gain is measured on a GPU.

    Raises:
        ValueError: `on` with a device other than CUDA.
    """
    if setting == "on" and not device.startswith("cuda"):
        raise ValueError(f"SIDECAR_CUDA_GRAPHS=on needs a CUDA device; the model is on {device}")
    return setting == "on"
