"""Acceptance 1: greedy decoding is token-exact against transformers' `generate` in fp32, for the
Llama-style families and GPT-2, across batch mixes: sequences of different lengths joining
mid-way, prompts prefilled in chunks beside other sequences' decode steps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from sidecar.models import LoadOptions
from sidecar.models.decoder import Decoder, GenerationLimits
from sidecar.models.families import load_model
from sidecar.models.generation import Row, SamplingParams
from tests.decoder_snapshots import CORPUS, make_decoder_snapshot
from tests.sidecar.models.conftest import read_weights

CPU = torch.device("cpu")
NEW_TOKENS = 12
CASES = {
    "llama": {"model_type": "llama"},
    "llama3-rope-tied": {
        "model_type": "llama",
        "tie": True,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    },
    "qwen2-tied": {"model_type": "qwen2", "tie": True, "num_kv_heads": 1},
    "mistral-window": {"model_type": "mistral"},
    "gpt2": {"model_type": "gpt2"},
}


@pytest.fixture(scope="module", params=sorted(CASES))
def snapshot(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_decoder_snapshot(tmp_path_factory.mktemp(request.param), **CASES[request.param])


def load_decoder(directory: Path, max_seqs: int = 4) -> Decoder:
    limits = GenerationLimits(max_seqs=max_seqs, max_model_len=128)
    options = LoadOptions(CPU, torch.float32, None, None, generation=limits)
    model = load_model(directory, read_weights(directory), options)
    assert isinstance(model, Decoder)
    return model


def prompts(decoder: Decoder) -> list[list[int]]:
    lines = [line for line in CORPUS.splitlines() if line]
    texts = [lines[0], lines[1][:20], lines[2] + " " + lines[3], "The", lines[8]]
    return [decoder.encode(text) for text in texts]


def reference(directory: Path, prompt: Sequence[int], new_tokens: int) -> list[int]:
    import transformers

    model: Any = transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    config = transformers.GenerationConfig(
        max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    ids = torch.tensor([list(prompt)])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
    return [int(t) for t in out[0, len(prompt) :]]


def run_mixed(
    decoder: Decoder, prompts: Sequence[list[int]], joins: Sequence[int], chunk: int
) -> list[list[int]]:
    """Greedy generation of every prompt, sequence i joining at step joins[i] in slot 2i mod n
    (runs of consecutive slots read the cache as views, others through a gather),
    prompts prefilled `chunk` tokens a step beside the others' decode steps (EOS ignored)."""
    greedy = decoder.sampler(SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0))
    outputs: list[list[int]] = [[] for _ in prompts]
    computed = [0] * len(prompts)
    slots = [2 * i % len(prompts) for i in range(len(prompts))]
    step = 0
    while any(len(out) < NEW_TOKENS for out in outputs):
        rows, owners = [], []
        for i, prompt in enumerate(prompts):
            if joins[i] > step or len(outputs[i]) == NEW_TOKENS:
                continue
            ids = prompt + outputs[i]
            if computed[i] < len(prompt):
                n = min(chunk, len(prompt) - computed[i])
                last = computed[i] + n == len(prompt)
                rows.append(
                    Row(
                        slots[i],
                        computed[i],
                        ids[computed[i] : computed[i] + n],
                        greedy if last else None,
                    )
                )
            else:
                n, last = 1, True
                rows.append(Row(slots[i], computed[i], ids[-1:], greedy))
            computed[i] += n
            if last:
                owners.append(i)
        for i, sampled in zip(owners, decoder.step(rows), strict=True):
            outputs[i].append(sampled.token)
        step += 1
    return outputs


def test_greedy_decoding_matches_transformers_across_batch_mixes(snapshot: Path) -> None:
    decoder = load_decoder(snapshot, max_seqs=5)
    batch = prompts(decoder)
    expected = [reference(snapshot, prompt, NEW_TOKENS) for prompt in batch]
    alone = [run_mixed(decoder, [p], [0], chunk=64)[0] for p in batch]
    assert alone == expected
    # Joining at different steps, prefilled in chunks of 5 tokens beside the others' decoding.
    mixed = run_mixed(decoder, batch, joins=[0, 1, 3, 3, 7], chunk=5)
    assert mixed == expected
    assert len({tuple(out) for out in expected}) > 1  # the prompts lead somewhere different
