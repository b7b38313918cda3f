from __future__ import annotations

import math
import random

from batching import BatchCost


def test_fit_recovers_fixed_and_per_token_cost() -> None:
    cost = BatchCost()
    rng = random.Random(5)
    for _ in range(60):
        tokens = rng.randint(16, 4096)
        cost.observe(tokens, 0.010 + 0.0002 * tokens * rng.uniform(0.97, 1.03))
    assert 35 <= cost.overhead_tokens <= 65  # 0.010 / 0.0002 = 50


def test_unknown_until_enough_batches_of_different_sizes() -> None:
    cost = BatchCost(min_batches=4)
    for tokens in (100, 200, 300):
        cost.observe(tokens, 0.01 + tokens * 1e-4)
    assert not cost.fitted and math.isinf(cost.overhead_tokens)
    alike = BatchCost(min_batches=4)
    for _ in range(20):
        alike.observe(512, 0.05)
    assert not alike.fitted and math.isinf(alike.overhead_tokens)


def test_time_flat_in_tokens_means_fill_the_batches() -> None:
    cost = BatchCost()
    for tokens in (64, 4096, 128, 2048, 256, 1024, 512, 8192, 32, 16384):
        cost.observe(tokens, 0.005)
    assert cost.fitted and math.isinf(cost.overhead_tokens)


def test_follows_a_device_that_changes() -> None:
    cost = BatchCost()
    for i in range(40):
        tokens = 100 + 50 * (i % 10)
        cost.observe(tokens, 0.001 + 1e-4 * tokens)  # fixed cost worth 10 tokens
    assert cost.overhead_tokens < 20
    for i in range(200):
        tokens = 100 + 50 * (i % 10)
        cost.observe(tokens, 0.05 + 1e-4 * tokens)  # now worth 500
    assert cost.overhead_tokens > 400


def gpu_like(tokens: int) -> float:
    """A pass costs 20 ms up to 4500 padded tokens, then 4 us a token."""
    return max(0.020, 0.002 + 4e-6 * tokens)


def cpu_like(tokens: int) -> float:
    return 0.010 + 0.00021 * tokens


WARM_UP_TOKENS = [tokens for tokens in (16, 64, 256, 1024, 4096, 16384) for _ in range(2)]


def test_fit_finds_the_knee_of_a_gpu_like_device() -> None:
    cost = BatchCost()
    rng = random.Random(8)
    for _ in range(60):
        tokens = rng.randint(8, 16384)
        cost.observe(tokens, gpu_like(tokens) * rng.uniform(0.97, 1.03))
    assert 2896 <= cost.knee_tokens <= 5793  # the grid's knees around 4500
    assert 4000 <= cost.overhead_tokens <= 6500  # 20 ms / 4 us a token = 5000


def test_cpu_like_device_has_no_knee() -> None:
    cost = BatchCost()
    rng = random.Random(9)
    for _ in range(60):
        tokens = rng.randint(8, 4096)
        cost.observe(tokens, cpu_like(tokens) * rng.uniform(0.97, 1.03))
    assert cost.knee_tokens == 0.0
    assert 40 <= cost.overhead_tokens <= 56  # 10 ms / 0.21 ms a token = 48


def test_seeded_warm_up_passes_fit_at_once() -> None:
    gpu = BatchCost()
    gpu.seed((tokens, gpu_like(tokens)) for tokens in WARM_UP_TOKENS)
    assert gpu.fitted and 2896 <= gpu.knee_tokens <= 4096
    cpu = BatchCost(min_batches=100)
    cpu.seed((tokens, cpu_like(tokens)) for tokens in WARM_UP_TOKENS)
    assert cpu.fitted and cpu.knee_tokens == 0.0 and 45 <= cpu.overhead_tokens <= 51
    alike = BatchCost()
    alike.seed([(512, 0.05)] * 8)
    assert not alike.fitted and math.isinf(alike.overhead_tokens)


def test_seeded_fit_follows_the_real_batches() -> None:
    cost = BatchCost()
    cost.seed((tokens, gpu_like(tokens)) for tokens in WARM_UP_TOKENS)
    assert cost.knee_tokens > 2000
    for i in range(10):  # min_batches real batches of different sizes retire the warm-up
        tokens = 100 + 40 * i
        cost.observe(tokens, cpu_like(tokens))  # the device turned out CPU-like after all
    assert cost.knee_tokens == 0.0 and 40 <= cost.overhead_tokens <= 56
