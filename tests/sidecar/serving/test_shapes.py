"""Shape buckets by device and setting, the shapes warm-up covers, and a served model padding
each batch to the shape the batcher counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from batching import Buckets
from sidecar.config import Settings
from sidecar.models import Embeddings, TextInputs, run_inline
from sidecar.serving import loading
from sidecar.serving.engine import batch_config
from sidecar.serving.shapes import shape_buckets, warmup_shapes
from tests.sidecar.conftest import StartServer
from tests.snapshots import make_bert_snapshot


def test_buckets_are_on_for_cuda_and_off_for_a_cpu_unless_asked() -> None:
    cuda = shape_buckets("auto", "cuda:0", 256, 512)
    assert cuda.lengths == (16, 24, 32, 48, 64, 88, 128, 184, 256, 360, 512)
    assert cuda.sizes == (1, 2, 4, 8, 16, 32, 64, 128, 256)
    assert shape_buckets("auto", "cpu", 32, 512) == Buckets()
    assert shape_buckets("off", "cuda:0", 256, 512) == Buckets()
    cpu = shape_buckets("on", "cpu", 32, 256)  # lengths only: a padded row costs a CPU in full
    assert (cpu.lengths[-1], cpu.sizes) == (256, ())
    assert shape_buckets("on", "cpu", 32, 10).lengths == (10,)  # a limit under the first bucket


def test_cuda_warms_up_every_shape_a_batch_can_take() -> None:
    settings = Settings.from_env({"SIDECAR_BATCH_MAX_TOKENS": "4096"})
    config = batch_config(settings, "cuda:0", 256)
    shapes = warmup_shapes(config, 256)
    assert shapes is not None and len(shapes) == len(set(shapes)) == 65  # of 9 x 9 buckets
    assert max(rows * length for rows, length in shapes) <= 4096
    assert {length for _, length in shapes} == set(config.buckets.lengths)
    # Every batch the bounds let through runs at one of these shapes.
    for longest in range(1, 257):
        padded = config.padded_length(longest)
        for items in range(1, min(256, 4096 // padded) + 1):
            assert config.padded_shape(items, longest) in shapes


def test_a_cpu_warms_up_each_length_bucket_once_or_keeps_its_own_few() -> None:
    on = batch_config(Settings.from_env({"SIDECAR_SHAPE_BUCKETS": "on"}), "cpu", 256)
    assert warmup_shapes(on, 256) == [(1, length) for length in on.buckets.lengths]
    assert warmup_shapes(batch_config(Settings.from_env({}), "cpu", 256), 256) is None


async def test_a_served_model_pads_to_the_length_buckets_the_batcher_counts(
    start_server: StartServer, tiny_embed_dir
) -> None:
    s = await start_server(tiny_embed_dir, SIDECAR_SHAPE_BUCKETS="on")
    engine = s.service.model(None).engine
    assert engine.batcher.config.buckets.lengths[:3] == (16, 24, 32)
    # 18 to 23 tokens each ([CLS] + words + [SEP]): whatever batches they form, each pads to 24.
    texts = [" ".join(["word"] * n) for n in range(16, 22)]
    assert [len(ids) for ids in engine.model.tokenize(texts)] == list(range(18, 24))

    async def padded_tokens() -> float:
        async with s.health.get("/metrics") as r:
            line = next(
                x for x in (await r.text()).splitlines() if x.startswith("sidecar_batch_tokens_sum")
            )
        return float(line.split()[-1])

    before = await padded_tokens()
    inference = await engine.infer(TextInputs(texts), deadline=None)
    assert await padded_tokens() - before == 24 * len(texts)
    assert isinstance(inference.result, Embeddings)
    unpadded = run_inline(engine.model, TextInputs(texts))
    assert isinstance(unpadded, Embeddings)
    cosines = (inference.result.vectors * unpadded.vectors).sum(axis=1)
    assert np.all(cosines >= 0.99999), cosines


def test_a_cpu_with_buckets_warms_up_every_length_up_to_the_input_limit(tmp_path: Path) -> None:
    directory = make_bert_snapshot(tmp_path, max_seq_length=None)  # the 512 positions
    settings = Settings.from_env(
        {"SIDECAR_MODEL": str(directory), "SIDECAR_DEVICE": "cpu", "SIDECAR_SHAPE_BUCKETS": "on"}
    )
    loaded = loading.load(settings)
    lengths = batch_config(settings, "cpu", 512).buckets.lengths
    assert lengths[-1] == 512
    assert [tokens for tokens, _ in loaded.warmup_timings] == list(lengths)
