"""Generation: continuous batching against one stream and against transformers' static batch.

    flock /tmp/bench.lock python -m benchmarks.generation [--prompts 32] [--max-tokens 128]

A Llama-style decoder of ~28 M parameters with random weights (hidden 512, 8 layers, 8 heads,
4 KV heads, SwiGLU 1408, tied embeddings over an 8192-token byte-level BPE trained on the
standard library's docstrings), prompts of varied length from the same real English corpus
(`harness.corpus`), greedy decoding of `--max-tokens` tokens each (EOS never ends a sequence:
the snapshot names none, so that every run does the same work). On the CPU, fp32:

- in-process: transformers' `generate` on all the prompts at once, left-padded (a static
  batch); and our decoder's prefill of each prompt alone (the floor of time to first token),
  taken right before the same prompt is sent to the server;
- served: `sidecar serve` in a subprocess over the Unix socket, `/v1/completions` streamed:
  one client taking the prompts one after another, then every prompt at once (one stream each).

Reports tokens/s, time to first token (TTFT) and inter-token latency (ITL) percentiles, and the
ratios of acceptance 5; writes benchmarks/results/generation.json.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.harness import ROOT, Served, corpus, serve

HIDDEN, LAYERS, HEADS, KV_HEADS, INNER, VOCAB = 512, 8, 8, 4, 1408, 8192
MAX_MODEL_LEN = 512


def build_snapshot(directory: Path, texts: list[str]) -> Path:
    """A random-weight Llama snapshot with a BPE tokenizer trained on `texts`."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<|bos|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(), hidden_size=HIDDEN, intermediate_size=INNER,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
        max_position_embeddings=MAX_MODEL_LEN, tie_word_embeddings=True, bos_token_id=0,
        eos_token_id=None, pad_token_id=1,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(directory, safe_serialization=True)
    (directory / "generation_config.json").write_text(json.dumps({"bos_token_id": 0}))
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<|pad|>"}))
    return directory


def static_batch(directory: Path, prompts: list[list[int]], max_tokens: int) -> Callable[[], float]:
    """transformers' generate on every prompt at once, left-padded, greedy: a pass's tokens/s."""
    import torch
    import transformers

    model: Any = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    longest = max(map(len, prompts))
    ids = torch.tensor([[1] * (longest - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
    config = transformers.GenerationConfig(
        max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False,
        eos_token_id=None, pad_token_id=1,
    )  # fmt: skip
    with torch.no_grad():
        model.generate(ids[:2, -8:], attention_mask=mask[:2, -8:], max_new_tokens=2)  # warm

    def run() -> float:
        with torch.no_grad():
            started = time.perf_counter()
            out = model.generate(ids, attention_mask=mask, generation_config=config)
            elapsed = time.perf_counter() - started
        return float((out.shape[1] - longest) * len(prompts) / elapsed)

    return run


def prefill_timer(directory: Path, first: list[int]) -> Callable[[list[int]], float]:
    """Seconds of our decoder's prefill (and first token) of a prompt alone, in this process."""
    import torch

    import loaders
    from sidecar.models import LoadOptions
    from sidecar.models.decoder import GenerationLimits
    from sidecar.models.families import load_model
    from sidecar.models.generation import Row, SamplingParams

    weights, _ = loaders.load_weights(sorted(directory.glob("*.safetensors")))
    limits = GenerationLimits(max_seqs=1, max_model_len=MAX_MODEL_LEN)
    options = LoadOptions(torch.device("cpu"), torch.float32, None, None, generation=limits)
    decoder: Any = load_model(directory, weights, options)
    greedy = decoder.sampler(SamplingParams(max_tokens=1, temperature=0.0))
    decoder.step([Row(0, 0, first, greedy)])  # warm

    def prefill(prompt: list[int]) -> float:
        started = time.perf_counter()
        decoder.step([Row(0, 0, prompt, greedy)])
        return time.perf_counter() - started

    return prefill


async def stream(
    session: aiohttp.ClientSession, base: str, prompt: str, max_tokens: int
) -> dict[str, Any]:
    """One streamed completion: when each chunk came, and the usage."""
    body = {
        "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True},
    }  # fmt: skip
    started = time.perf_counter()
    times: list[float] = []
    usage: dict[str, int] = {}
    async with session.post(f"{base}/v1/completions", json=body) as r:
        assert r.status == 200, await r.text()
        async for line in r.content:
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            elif chunk["choices"] and chunk["choices"][0]["finish_reason"] is None:
                times.append(time.perf_counter() - started)
    return {
        "ttft_s": times[0],
        "gaps_s": [b - a for a, b in itertools.pairwise(times)],
        "elapsed_s": time.perf_counter() - started,
        "tokens": usage["completion_tokens"],
    }


def summary(results: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    ttft = sorted(r["ttft_s"] for r in results)
    gaps = sorted(g for r in results for g in r["gaps_s"])
    tokens = sum(r["tokens"] for r in results)

    def pct(values: list[float], p: float) -> float:
        return round(values[min(len(values) - 1, int(len(values) * p))] * 1000, 2)

    return {
        "tokens": tokens,
        "seconds": round(wall_s, 3),
        "tokens_per_s": round(tokens / wall_s, 1),
        "ttft_ms": {"p50": pct(ttft, 0.5), "p90": pct(ttft, 0.9), "max": pct(ttft, 1.0)},
        "itl_ms": {"p50": pct(gaps, 0.5), "p90": pct(gaps, 0.9), "p99": pct(gaps, 0.99)},
    }


async def served_runs(
    served: Served,
    prompts: list[str],
    ids: list[list[int]],
    max_tokens: int,
    prefill: Callable[[list[int]], float],
    static: Callable[[], float],
    rounds: int,
) -> dict[str, Any]:
    """One client, prompt after prompt (each preceded by the in-process prefill of the same
    prompt, so that both see the same load on a shared machine); then `rounds` times, all
    prompts at once and transformers' static batch in turn (best of each: a machine shared
    with other work slows some passes of either)."""
    session, base = served.session("uds")
    prefills: list[float] = []
    async with session:
        await stream(session, base, prompts[0], 4)  # warm
        one = []
        for text, prompt in zip(prompts, ids, strict=True):
            prefills.append(prefill(prompt))
            one.append(await stream(session, base, text, max_tokens))
        one_wall = sum(r["elapsed_s"] for r in one)
        passes, static_rates = [], []
        for _ in range(rounds):
            started = time.perf_counter()
            many = await asyncio.gather(*(stream(session, base, p, max_tokens) for p in prompts))
            passes.append(summary(list(many), time.perf_counter() - started))
            static_rates.append(static())
    best = max(passes, key=lambda result: result["tokens_per_s"])
    return {
        "inprocess_prefill_ms": {"p50": round(statistics.median(prefills) * 1000, 2)},
        "one_stream": summary(one, one_wall),
        "concurrent": best | {"tokens_per_s_each_round": [r["tokens_per_s"] for r in passes]},
        "transformers_static_batch": {
            "tokens_per_s": round(max(static_rates), 1),
            "tokens_per_s_each_round": [round(rate, 1) for rate in static_rates],
        },
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from tokenizers import Tokenizer

    texts = corpus(4000)
    prompts = [t for t in corpus(args.prompts * 4, seed=11) if 5 <= len(t.split()) <= 150]
    prompts = prompts[: args.prompts]
    with tempfile.TemporaryDirectory(prefix="gen-") as tmp:
        directory = build_snapshot(Path(tmp) / "model", texts)
        tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
        ids = [tokenizer.encode(p).ids for p in prompts]
        params = sum(p.numel() for p in __import__("transformers").AutoModelForCausalLM
                     .from_pretrained(directory).parameters())  # fmt: skip
        report: dict[str, Any] = {
            "model": {"parameters": params, "hidden": HIDDEN, "layers": LAYERS,
                      "heads": HEADS, "kv_heads": KV_HEADS, "vocab": tokenizer.get_vocab_size()},
            "prompts": len(prompts),
            "prompt_tokens": {"min": min(map(len, ids)), "max": max(map(len, ids)),
                              "mean": round(statistics.mean(map(len, ids)), 1)},
            "max_tokens": args.max_tokens,
            "torch_threads": torch.get_num_threads(),
        }  # fmt: skip
        static = static_batch(directory, ids, args.max_tokens)
        prefill = prefill_timer(directory, ids[0])
        env = {
            "SIDECAR_MODEL": str(directory),
            "SIDECAR_DEVICE": "cpu",
            "SIDECAR_GEN_MAX_SEQS": str(args.prompts),
            "SIDECAR_GEN_MAX_MODEL_LEN": str(MAX_MODEL_LEN),
            "SIDECAR_REQUEST_TIMEOUT_MS": "600000",
        }
        with tempfile.TemporaryDirectory(prefix="gs-", dir="/tmp") as sockets:
            async with serve(env, sockets, name="gen") as served:
                report["served"] = await served_runs(
                    served, prompts, ids, args.max_tokens, prefill, static, args.rounds
                )
    one, many = report["served"]["one_stream"], report["served"]["concurrent"]
    report["ratios"] = {
        "concurrent_over_one_stream": round(many["tokens_per_s"] / one["tokens_per_s"], 2),
        "concurrent_over_transformers": round(
            many["tokens_per_s"] / report["served"]["transformers_static_batch"]["tokens_per_s"],
            2,
        ),
        "one_stream_ttft_p50_minus_prefill_ms": round(
            one["ttft_ms"]["p50"] - report["served"]["inprocess_prefill_ms"]["p50"], 2
        ),
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2, help="passes of the prompts at once")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads here and in the server (OMP_NUM_THREADS); 0: torch's default. "
        "On a CPU shared with other work, more than one thread makes every figure swing.",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/generation.json")
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the server inherits it
    report = asyncio.run(run(args))
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
