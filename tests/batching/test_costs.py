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
