"""Deterministic, varied test texts."""

from __future__ import annotations

import random

_WORDS = (
    "the", "model", "serves", "embeddings", "quickly", "from", "a", "sidecar", "next", "to",
    "the", "application", "while", "the", "batcher", "groups", "requests", "of", "similar",
    "length", "so", "that", "padding", "stays", "small", "and", "latency", "low", "Kubernetes",
    "GPU", "container", "tokenizer", "weights", "network", "storage", "memory", "throughput",
    "request",
)  # fmt: skip
_ODD_WORDS = (
    "3.14159", "2024-06-01", "42", "$99.99", "e-mail", "don't", "(aside)", "naïve", "café",
    "Zürich", "Привет", "мир", "東京", "中文字符", "한국어", "🙂", "🚀", "C++", "x²", "—", "...",
    "?!", "#hashtag", "@user", "https://example.com/a?b=c", "ÀÉÎÕÜ", "straße", "1,000,000",
    "\t", "co-operate", "l'été", "αβγ", "🇫🇷",
)  # fmt: skip


def varied_sentences(count: int, seed: int = 0) -> list[str]:
    """Deterministic texts from one to a few hundred tokens: words, numbers, unicode, emoji."""
    rng = random.Random(seed)
    texts = ["", "a", "OK.", "🙂"]
    while len(texts) < count:
        i = len(texts)
        if i % 25 == 0:
            length = rng.randint(300, 450)  # well past 256 tokens: truncated
        elif i % 3 == 0:
            length = rng.randint(1, 6)
        else:
            length = rng.randint(6, 140)
        words = [rng.choice(_ODD_WORDS if rng.random() < 0.2 else _WORDS) for _ in range(length)]
        text = " ".join(words)
        texts.append(text[:1].upper() + text[1:] + rng.choice((".", "!", "?", "", " ;)")))
    return texts
