"""The GPU check's measurements on the model and the weights, one function per step.

Each step runs in a process of its own (benchmarks.gpu_check) and records what it finds with
`ctx.put` as it goes, so a step stopped at its time limit still leaves what it measured. In the
dry run (no CUDA) each takes the same path on the CPU at tiny sizes, and what only a GPU can
measure is recorded as `{"skipped": reason}`. The machine, the setup and the tests are in
benchmarks.gpu_machine, the serving steps in benchmarks.gpu_serving.

Only the standard library is imported at module level: the check imports this before the
carried wheels are installed, and the benchmarks must import without CUDA.
"""

from __future__ import annotations

import re
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.gpu_carry import DEMO_SHAPE, ModelShape

if TYPE_CHECKING:
    from benchmarks.gpu_check import Context

# Cosine to the CPU's float32 embeddings that each dtype must reach on the device.
PARITY_MIN_COSINE = {"bfloat16": 0.999, "float16": 0.999, "float32": 0.9999}
# Our load's GB/s to the device as a share of the pinned host-to-device bandwidth.
LOAD_TARGET_SHARE = 0.8
# The aten operator SDPA dispatches to names the kernel family it chose.
SDPA_BACKENDS = {
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash (CPU)",
    "aten::_scaled_dot_product_efficient_attention": "mem-efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cuDNN",
    "aten::_scaled_dot_product_attention_math": "math",
}
_ATTENTION_KERNEL = re.compile(r"flash|fmha|attention|attn|sdpa|cudnn|softmax", re.IGNORECASE)


@dataclass(frozen=True)
class Sizes:
    """How much each step does: the GPU run's sizes, or the dry run's tiny ones."""

    model_shape: ModelShape
    parity_texts: int
    h2d_bytes: int
    h2d_repeats: int
    checkpoint_bytes: int
    load_repeats: int
    attention_batch: tuple[int, int]  # items, longest tokens
    grid_items: tuple[int, ...]
    grid_tokens: tuple[int, ...]
    grid_max_tokens: int  # padded tokens of the largest shape timed
    grid_repeats: int
    serve_clients: tuple[int, ...]
    serve_run_s: float  # each closed loop is sized to last about this long
    serve_max_requests: int
    oom_items: int


GPU_SIZES = Sizes(
    model_shape=DEMO_SHAPE,
    parity_texts=64,
    h2d_bytes=1 << 30,
    h2d_repeats=10,
    checkpoint_bytes=2_100_000_000,  # as benchmarks/load.py generates it
    load_repeats=3,
    attention_batch=(32, 256),
    grid_items=(1, 4, 16, 64, 256),
    grid_tokens=(16, 64, 128, 256, 512),
    grid_max_tokens=65536,
    grid_repeats=10,
    serve_clients=(1, 16, 128),
    serve_run_s=12.0,
    serve_max_requests=60000,
    oom_items=128,
)
DRY_SIZES = Sizes(
    model_shape=ModelShape(hidden_size=32, num_layers=2, num_heads=4),
    parity_texts=8,
    h2d_bytes=16 << 20,
    h2d_repeats=3,
    checkpoint_bytes=16_000_000,
    load_repeats=2,
    attention_batch=(4, 16),
    grid_items=(1, 4),
    grid_tokens=(8, 32),
    grid_max_tokens=128,
    grid_repeats=3,
    serve_clients=(1, 16, 128),
    serve_run_s=0.3,
    serve_max_requests=256,
    oom_items=16,
)


# -- parity -------------------------------------------------------------------------------------


def parity(ctx: Context) -> None:
    """Embeddings in each dtype on the device against float32 on the CPU, as served
    (`run_inline`: the server's recipe without the batcher)."""
    from tests.sidecar.models.sentences import varied_sentences

    directory = Path(ctx.shared["model_dir"])
    texts = varied_sentences(ctx.sizes.parity_texts)
    reference = _embed(model_at(directory, "cpu", "float32"), texts)
    ctx.put("reference", "float32 on the CPU")
    ctx.put("texts", len(texts))
    for dtype, threshold in PARITY_MIN_COSINE.items():
        cosines = (_embed(model_at(directory, ctx.device, dtype), texts) * reference).sum(axis=1)
        ctx.put(dtype, {
            "device": ctx.device,
            "min_cosine": round(float(cosines.min()), 6),
            "mean_cosine": round(float(cosines.mean()), 6),
            "threshold": threshold,
            "passed": bool(cosines.min() >= threshold),
        })  # fmt: skip


def _embed(model: Any, texts: list[str]) -> Any:
    from sidecar.models import Embeddings, TextInputs, run_inline

    result = run_inline(model, TextInputs(texts, truncate=True))
    assert isinstance(result, Embeddings)
    return result.vectors


def model_at(directory: Path, device: str, dtype: str = "auto") -> Any:
    """The snapshot's model on `device`, built as the server builds it (`auto`: its dtype)."""
    import torch

    import loaders
    from sidecar.models import LoadOptions
    from sidecar.models.device import resolve_dtype
    from sidecar.models.families import load_model

    target = torch.device(device)
    weights, _ = loaders.load_weights(sorted(directory.glob("*.safetensors")), device=target)
    return load_model(directory, weights, LoadOptions(target, resolve_dtype(dtype, target)))


def filler_ids(model: Any, length: int) -> list[int]:
    """Token ids of exactly `length` tokens (special tokens included)."""
    ids: list[int] = model.tokenize([" ".join(["serving"] * length)])[0]
    return list(model.truncate(ids, length))


# -- weights to the device ----------------------------------------------------------------------


def load(ctx: Context) -> None:
    """Pinned host-to-device bandwidth, then a generated checkpoint loaded to the device by ours
    and by safetensors' `load_file(device=...)`: time, bit-identity on the device, and each
    one's GB/s as a share of the pinned bandwidth measured here (the page cache warm)."""
    from safetensors.torch import load_file

    import loaders
    from benchmarks.load import generated_checkpoint, run_cat

    sizes = ctx.sizes
    if ctx.device == "cuda":
        ctx.put("pinned_h2d", _h2d(sizes.h2d_bytes, sizes.h2d_repeats, pinned=True))
        ctx.put("pageable_h2d", _h2d(sizes.h2d_bytes, sizes.h2d_repeats, pinned=False))
        ceiling = ctx.results["pinned_h2d"]["median_gbps"]
    else:
        ctx.put("pinned_h2d", {"skipped": "no CUDA device"})
        ctx.put("host_copy", _host_copy(sizes.h2d_bytes, sizes.h2d_repeats))
        ceiling = ctx.results["host_copy"]["median_gbps"]
    files = list(generated_checkpoint(ctx.work / "checkpoint", sizes.checkpoint_bytes).files)
    ctx.put("checkpoint", {"files": len(files), "bytes": sum(f.stat().st_size for f in files)})
    run_cat(files)  # into the page cache: storage is not what this measures
    _, cat_s = _timed(lambda: run_cat(files), device=None)

    def ours() -> dict[str, Any]:
        tensors, stats = loaders.load_weights(files, device=ctx.device)
        ctx.put("ours_mapped", stats.mapped)
        return tensors

    def theirs() -> dict[str, Any]:
        return {name: t for path in files for name, t in load_file(path, device=ctx.device).items()}

    data_bytes = sum(loaders.read_header(path).data_bytes for path in files)
    times: dict[str, list[float]] = {"ours": [], "safetensors": []}
    loaded: dict[str, dict[str, Any]] = {}
    for _ in range(sizes.load_repeats):
        for name, loader in (("ours", ours), ("safetensors", theirs)):
            loaded.pop(name, None)
            _release(ctx.device)
            loaded[name], seconds = _timed(loader, device=ctx.device)
            times[name].append(seconds)
            ctx.put("load_seconds", times)
    gbps = {name: data_bytes / statistics.median(runs) / 1e9 for name, runs in times.items()}
    ctx.put("data_bytes", data_bytes)
    ctx.put("cat_warm_gbps", round(sum(f.stat().st_size for f in files) / cat_s / 1e9, 2))
    ctx.put("ceiling", "pinned H2D" if ctx.device == "cuda" else "host copy (no CUDA)")
    for name, runs in times.items():
        ctx.put(name, {
            "seconds": [round(s, 4) for s in runs],
            "median_gbps": round(gbps[name], 2),
            "share_of_ceiling": round(gbps[name] / ceiling, 3),
        })  # fmt: skip
    ctx.put("ours_over_safetensors", round(gbps["ours"] / gbps["safetensors"], 3))
    ctx.put("bit_identity", _identical(loaded["ours"], loaded["safetensors"]))
    ctx.put("bit_identical", ctx.results["bit_identity"]["identical"])


def _h2d(num_bytes: int, repeats: int, *, pinned: bool) -> dict[str, Any]:
    """One host tensor copied to the device `repeats` times, each timed with CUDA events."""
    import torch

    source = torch.empty(num_bytes, dtype=torch.uint8, pin_memory=pinned)
    source.view(torch.int64).random_()  # never time on zeros
    target = torch.empty(num_bytes, dtype=torch.uint8, device="cuda")
    for _ in range(2):
        target.copy_(source, non_blocking=True)
    torch.cuda.synchronize()
    seconds = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        target.copy_(source, non_blocking=True)
        end.record()
        end.synchronize()
        seconds.append(start.elapsed_time(end) / 1e3)
    probe = min(num_bytes, 1 << 20)
    return {
        "bytes": num_bytes,
        "repeats": repeats,
        "median_gbps": round(num_bytes / statistics.median(seconds) / 1e9, 2),
        "best_gbps": round(num_bytes / min(seconds) / 1e9, 2),
        "copied_right": bool(torch.equal(target[-probe:].cpu(), source[-probe:])),
    }


def _host_copy(num_bytes: int, repeats: int) -> dict[str, Any]:
    """The dry run's stand-in for pinned H2D: a host memory copy of the same shape."""
    import torch

    source = torch.empty(num_bytes, dtype=torch.uint8)
    source.view(torch.int64).random_()
    target = torch.empty_like(source)
    seconds = [_timed(lambda: target.copy_(source), device=None)[1] for _ in range(repeats + 1)]
    return {
        "what": "host memory copy, standing in for pinned H2D",
        "bytes": num_bytes,
        "median_gbps": round(num_bytes / statistics.median(seconds[1:]) / 1e9, 2),
    }


def _identical(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """Every tensor's bytes compared where they lie (on the device), with dtype and shape."""
    import torch

    def same(a: torch.Tensor, b: torch.Tensor) -> bool:
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        return torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))

    mismatched = sorted(n for n in ours.keys() & theirs.keys() if not same(ours[n], theirs[n]))
    missing, unexpected = sorted(theirs.keys() - ours.keys()), sorted(ours.keys() - theirs.keys())
    return {
        "tensors": len(theirs),
        "devices": sorted({str(t.device) for t in ours.values()}),
        "mismatched": mismatched[:10],
        "missing": missing[:10],
        "unexpected": unexpected[:10],
        "identical": not (mismatched or missing or unexpected),
    }


def _timed(fn: Callable[[], Any], *, device: str | None) -> tuple[Any, float]:
    """`fn()` and its wall time, the device drained before and after."""
    _sync(device)
    started = time.perf_counter()
    result = fn()
    _sync(device)
    return result, time.perf_counter() - started


def _sync(device: str | None) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _release(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


# -- attention kernels --------------------------------------------------------------------------


def attention(ctx: Context) -> None:
    """The SDPA backend and kernels the encoder runs, for a padded batch (an attention mask)
    and an unpadded one (none), in the served dtype, read from the profiler."""
    model = model_at(Path(ctx.shared["model_dir"]), ctx.device)
    items, longest = ctx.sizes.attention_batch
    lengths = [max(4, longest * (items - i) // items) for i in range(items)]
    cases = {
        "padded": [filler_ids(model, length) for length in lengths],
        "unpadded": [filler_ids(model, longest)] * items,
    }
    ctx.put("dtype", str(model.dtype).removeprefix("torch."))
    for case, seqs in cases.items():
        padded = len(seqs) * max(map(len, seqs))
        ctx.put(case, {
            "items": len(seqs),
            "tokens": max(map(len, seqs)),
            "padding_share": round(1 - sum(map(len, seqs)) / padded, 3),
            **_profiled(model, seqs, ctx.device),
        })  # fmt: skip


def _profiled(model: Any, seqs: Sequence[Sequence[int]], device: str) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    batch = model.collate(seqs)
    model.forward(batch)  # kernel selection and allocation stay out of the profile
    activities = [ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        model.forward(batch)
    events = prof.events()
    ops = sorted({e.name for e in events if e.name in SDPA_BACKENDS})
    kernels = Counter(
        e.name for e in events if e.device_type.name == "CUDA" and _ATTENTION_KERNEL.search(e.name)
    )
    return {
        "sdpa_ops": ops,
        "backends": [SDPA_BACKENDS[op] for op in ops],
        "attention_kernels": (
            [f"{name} x{count}" for name, count in kernels.most_common(6)]
            if device == "cuda"
            else {"skipped": "no CUDA device: no kernels to name"}
        ),
    }


# -- the forward-time grid and the batch cost ---------------------------------------------------


def forward_grid(ctx: Context) -> None:
    """Forward time over items x tokens in the served dtype, and what `batching.BatchCost`
    fits to it: the floor, the knee and the overhead in padded tokens; also its fit to the
    model's warm-up passes, which is all the server knows before its first batches."""
    from batching import BatchCost

    sizes = ctx.sizes
    model = model_at(Path(ctx.shared["model_dir"]), ctx.device)
    rows, samples = [], []
    for tokens in sizes.grid_tokens:
        ids = filler_ids(model, tokens)
        for items in sizes.grid_items:
            if items * tokens > sizes.grid_max_tokens:
                continue
            batch = model.collate([ids] * items)
            model.forward(batch)
            model.forward(batch)
            seconds = [
                _timed(lambda b=batch: model.forward(b), device=None)[1]
                for _ in range(sizes.grid_repeats)
            ]
            samples += [(items * tokens, s) for s in seconds]
            rows.append({
                "items": items,
                "tokens": tokens,
                "padded_tokens": items * tokens,
                "median_ms": round(statistics.median(seconds) * 1e3, 3),
                "min_ms": round(min(seconds) * 1e3, 3),
            })  # fmt: skip
    ctx.put("dtype", str(model.dtype).removeprefix("torch."))
    ctx.put("grid", rows)
    fit = BatchCost(decay=1.0)  # every sample counts the same: the grid is one moment
    fit.seed(samples)
    ctx.put("cost_model", _cost_report(fit, rows))
    warm = BatchCost()
    warm.seed(model.warmup(max(sizes.grid_items), sizes.grid_max_tokens))
    ctx.put("cost_model_from_warmup", _cost_report(warm, rows))


def _cost_report(cost: Any, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The fit's knee and overhead, and the time it predicts for each shape against the time
    measured (the floor: the median time of the shapes at or under the knee)."""
    if not cost.fitted:
        return {"fitted": False}
    knee, overhead = cost.knee_tokens, cost.overhead_tokens
    under = [r["median_ms"] for r in rows if r["padded_tokens"] <= knee] or [rows[0]["median_ms"]]
    floor_ms = statistics.median(under)
    report: dict[str, Any] = {
        "fitted": True,
        "knee_tokens": round(knee, 1),
        "overhead_tokens": round(overhead, 1) if overhead != float("inf") else None,
        "floor_ms": round(floor_ms, 3),
    }
    if overhead == float("inf") or overhead <= 0:
        return report | {"note": "tokens cost nothing measurable: batches fill to the bounds"}
    per_token_ms = floor_ms / overhead
    errors = [
        abs(floor_ms + per_token_ms * max(0.0, r["padded_tokens"] - knee) - r["median_ms"])
        / r["median_ms"]
        for r in rows
    ]
    return report | {
        "per_token_us": round(per_token_ms * 1e3, 4),
        "median_relative_error": round(statistics.median(errors), 3),
        "worst_relative_error": round(max(errors), 3),
    }
