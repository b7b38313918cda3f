"""Decoders for generation behind the model interface: a network, its KV cache, its tokenizer.

A `Decoder` joins a family's network (llama.py, gpt2.py), a static KV cache sized from the
settings and the free memory, the snapshot's tokenizer, chat template and generation config. It
serves task `generate` only: the request-level steps of `Model` refuse other tasks' inputs, and
the generation engine drives `step` (`sidecar.models.generation.GenerativeModel`).

Sampling is per sequence: each has its own `torch.Generator`, seeded by the request, which draws
once per token, so a seeded request gives the same tokens whatever else runs in the batch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import nn

from sidecar.models import gpt2, llama
from sidecar.models.chat_template import ChatTemplate, template_source
from sidecar.models.checkpoint import assemble
from sidecar.models.detokenizer import IncrementalDetokenizer
from sidecar.models.device import OnTorchDevice, device_uuid, dtype_name
from sidecar.models.errors import InputError, ModelLoadError, WrongInputsError
from sidecar.models.generation import Row, Sampled, SamplingParams
from sidecar.models.interface import Family, Inputs, LoadOptions, ModelCard, PadShape, Prepared
from sidecar.models.kv_cache import KVCache, StepBatch, StepRow, bytes_per_slot, free_memory_bytes
from sidecar.models.snapshot import architectures, read_json

logger = logging.getLogger(__name__)

TASKS = ("generate",)
# SIDECAR_GEN_MAX_MODEL_LEN when unset: the model's position limit, at most this.
DEFAULT_MAX_MODEL_LEN = 8192
_SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")
# Padded over real tokens of a forward pass over prefill chunks, at most.
MAX_PADDING = 1.25


@dataclass(frozen=True)
class GenerationLimits:
    """What sizes a decoder's KV cache (LoadOptions.generation; from SIDECAR_GEN_*)."""

    max_seqs: int = 32
    max_model_len: int | None = None
    kv_fraction: float = 0.9


@dataclass
class Sampler:
    """One sequence's sampling parameters and its own generator."""

    params: SamplingParams
    generator: torch.Generator


class Decoder(OnTorchDevice):
    """A loaded decoder: one step at a time over `num_slots` sequences of `max_model_len`."""

    def __init__(
        self,
        *,
        network: nn.Module,
        cache: KVCache,
        tokenizer: Tokenizer,
        template: ChatTemplate | None,
        eos_token_ids: frozenset[int],
        vocab_size: int,
        architecture: str,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.network = network
        self.cache = cache
        self.tokenizer = tokenizer
        self.template = template
        self.eos_token_ids = eos_token_ids
        self.architecture = architecture
        self.device = device
        self.dtype = dtype
        self.num_slots = cache.num_slots
        self.max_model_len = cache.max_len
        self.vocab_size = vocab_size

    @property
    def card(self) -> ModelCard:
        return ModelCard(
            task="generate",
            architecture=self.architecture,
            device=str(self.device),
            dtype=dtype_name(self.dtype),
            device_uuid=device_uuid(self.device),
            max_input_tokens=self.max_model_len,
        )

    # -- generation -------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=True).ids)

    def encode_chat(self, messages: Sequence[Mapping[str, Any]]) -> list[int]:
        if self.template is None:
            raise InputError("this model has no chat template; use /v1/completions")
        text = self.template.render(messages)
        # The template writes the special tokens it wants (a BOS among them): none are added,
        # as transformers' apply_chat_template(tokenize=True) does.
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def sampler(self, params: SamplingParams) -> Sampler:
        seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(7), "big")
        generator = torch.Generator(device=self.device)
        generator.manual_seed(seed)
        return Sampler(params, generator)

    def text_stream(self, prompt: Sequence[int]) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(self._decode, prompt)

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def step(self, rows: Sequence[Row]) -> list[Sampled]:
        """One forward pass per kind of row (decode tokens, prefill chunks: little padding),
        then sampling; the tokens come in the order of the rows that have a sampler."""
        # In slot order: a run of consecutive slots reads the cache without a gather.
        order = sorted(range(len(rows)), key=lambda i: rows[i].slot)
        decode = [i for i in order if len(rows[i].tokens) == 1]
        prefill = [i for i in order if len(rows[i].tokens) > 1]
        groups = [decode] if decode else []
        groups += length_groups(prefill, [len(rows[i].tokens) for i in prefill])
        sampled: dict[int, Sampled] = {}
        with torch.inference_mode():
            for group in groups:
                steps = [StepRow(rows[i].slot, rows[i].start, rows[i].tokens) for i in group]
                logits = self.network(StepBatch.of(steps, self.device), self.cache)  # (B, V)
                picking = [j for j, i in enumerate(group) if rows[i].sampler is not None]
                if picking:
                    samplers = [rows[group[j]].sampler for j in picking]
                    tokens = sample(logits[picking], samplers)
                    sampled.update(zip((group[j] for j in picking), tokens, strict=True))
        return [sampled[i] for i in sorted(sampled)]

    # -- the request-level steps of Model: a decoder serves no other task --------------------

    def prepare(self, inputs: Inputs) -> Prepared[Any]:
        raise WrongInputsError("this model serves 'generate': use the completions routes")

    def cache_key(self, item: Any) -> bytes | None:
        return None

    def collate(self, items: Sequence[Any], shape: PadShape | None = None) -> Any:
        raise WrongInputsError("this model serves 'generate'")

    def forward(self, batch: Any) -> list[Any]:
        raise WrongInputsError("this model serves 'generate'")

    def finish(self, outputs: Sequence[Any], inputs: Inputs) -> Any:
        raise WrongInputsError("this model serves 'generate'")

    def warmup(
        self, max_batch: int, max_tokens: int, shapes: Sequence[tuple[int, int]] | None = None
    ) -> list[tuple[int, float]]:
        """A prefill and two decode steps in the first slot (nothing else runs yet)."""
        greedy = self.sampler(SamplingParams(max_tokens=2, temperature=0.0))
        length = min(16, self.max_model_len - 2)
        token = self.step([Row(0, 0, [0] * length, greedy)])[0].token
        for position in (length, length + 1):
            token = self.step([Row(0, position, [token], greedy)])[0].token
        return []


def length_groups(indices: Sequence[int], lengths: Sequence[int]) -> list[list[int]]:
    """Prefill chunks in groups of similar length, each padded to its longest: the padded
    tokens of a group stay within `MAX_PADDING` of its real ones (a padded token costs as much
    as a real one). Longest first; each group keeps the slot order of `indices`."""
    by_length = sorted(range(len(indices)), key=lambda j: -lengths[j])
    groups: list[list[int]] = []
    longest = real = 0
    for j in by_length:
        if groups and (len(groups[-1]) + 1) * longest <= MAX_PADDING * (real + lengths[j]):
            groups[-1].append(j)
            real += lengths[j]
        else:
            groups.append([j])
            longest = real = lengths[j]
    return [[indices[j] for j in sorted(group)] for group in groups]


def sample(logits: torch.Tensor, samplers: Sequence[Sampler]) -> list[Sampled]:
    """One token per row of `logits` (B, V), each by its sequence's sampler."""
    logits = logits.float()
    greedy = logits.argmax(dim=-1).tolist()  # (B,)
    logprobs = (
        torch.log_softmax(logits, dim=-1) if any(s.params.logprobs for s in samplers) else None
    )
    chosen = []
    for index, sampler in enumerate(samplers):
        params = sampler.params
        token = greedy[index]
        if params.temperature > 0 and params.top_k != 1:
            row = logits[index] / params.temperature  # (V,)
            if 0 < params.top_k < row.shape[0]:
                kth = torch.topk(row, params.top_k).values[-1]
                row = row.masked_fill(row < kth, float("-inf"))
            if params.top_p < 1.0:
                probs, order = torch.sort(row.softmax(-1), descending=True)  # (V,), (V,)
                # Keep the most likely tokens until their mass reaches top_p (the first always).
                drop = probs.cumsum(-1) - probs >= params.top_p
                row = row.masked_fill(drop.scatter(0, order, drop), float("-inf"))
            token = int(torch.multinomial(row.softmax(-1), 1, generator=sampler.generator))
        logprob = (
            float(logprobs[index, token]) if logprobs is not None and params.logprobs else None
        )
        chosen.append(Sampled(token, logprob))
    return chosen


# -- loading --------------------------------------------------------------------------------


def detect(config: Mapping[str, Any], directory: Path) -> str | None:
    """Generate with a causal-LM checkpoint (`*ForCausalLM`, `*LMHeadModel`)."""
    heads = ("ForCausalLM", "LMHeadModel")
    return "generate" if any(a.endswith(heads) for a in architectures(config)) else None


def load(directory: Path, weights: Mapping[str, torch.Tensor], options: LoadOptions) -> Decoder:
    """Build a decoder from a snapshot: config.json, tokenizer.json, tokenizer_config.json,
    generation_config.json (each optional but the first two) and the weights.

    Raises:
        ModelLoadError: the files do not describe a supported decoder, or no cache slot fits.
    """
    raw = read_json(directory, "config.json")
    limits = options.generation if isinstance(options.generation, GenerationLimits) else None
    limits = limits or GenerationLimits()
    device, dtype = options.device, options.dtype
    network: nn.Module
    if raw.get("model_type") in gpt2.MODEL_TYPES:
        gpt2_config = gpt2.GPT2Config.from_dict(raw)
        max_len = _max_model_len(limits, gpt2_config.n_positions)
        with torch.device("cpu"):
            network = gpt2.GPT2(gpt2_config)
        assemble(
            network, weights, gpt2.checkpoint_names(network, weights), device=device,
            dtype=dtype, ignored=gpt2.ignored_names(weights), transform=gpt2.to_linear,
        )  # fmt: skip
        layers, kv_heads = gpt2_config.n_layer, gpt2_config.n_head
        head_size = gpt2_config.n_embd // gpt2_config.n_head
    else:
        config = llama.LlamaConfig.from_dict(raw)
        max_len = _max_model_len(limits, config.max_position_embeddings)
        network = llama.Llama(config, max_len)
        assemble(
            network, weights, llama.checkpoint_names(network), device=device, dtype=dtype,
            ignored=llama.ignored_names(config),
        )  # fmt: skip
        network.to(device)  # the rotary tables
        layers, kv_heads, head_size = (
            config.num_hidden_layers, config.num_key_value_heads, config.head_dim
        )  # fmt: skip
    per_slot = bytes_per_slot(
        num_layers=layers, num_kv_heads=kv_heads, head_size=head_size, max_len=max_len,
        dtype=dtype,
    )  # fmt: skip
    budget = int(limits.kv_fraction * free_memory_bytes(device))
    num_slots = min(limits.max_seqs, budget // per_slot)
    if num_slots < 1:
        raise ModelLoadError(
            f"no KV cache slot fits: one sequence of {max_len} tokens takes {per_slot} bytes, "
            f"SIDECAR_GEN_KV_FRACTION={limits.kv_fraction} of free memory is {budget}; lower "
            "SIDECAR_GEN_MAX_MODEL_LEN or raise the fraction"
        )
    cache = KVCache(
        num_layers=layers, num_slots=num_slots, num_kv_heads=kv_heads, max_len=max_len,
        head_size=head_size, device=device, dtype=dtype,
    )  # fmt: skip
    tokenizer_config = _optional_json(directory, "tokenizer_config.json")
    specials = {name: _token_text(tokenizer_config.get(name)) for name in _SPECIAL_TOKENS}
    source = template_source(directory, tokenizer_config)
    tokenizer = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    names = architectures(raw)
    decoder = Decoder(
        network=network,
        cache=cache,
        tokenizer=tokenizer,
        template=ChatTemplate(source, specials) if source else None,
        eos_token_ids=_eos_ids(directory, raw, tokenizer, specials.get("eos_token")),
        vocab_size=int(raw["vocab_size"]),
        architecture=names[0] if names else str(raw.get("model_type")),
        device=device,
        dtype=dtype,
    )
    logger.info(
        "loaded %s decoder on %s as %s: %d KV slots of %d tokens (%d bytes each), EOS %s",
        decoder.architecture, device, dtype, num_slots, max_len, per_slot,
        sorted(decoder.eos_token_ids),
    )  # fmt: skip
    return decoder


def _max_model_len(limits: GenerationLimits, position_limit: int) -> int:
    if limits.max_model_len is None:
        return min(position_limit, DEFAULT_MAX_MODEL_LEN)
    if limits.max_model_len > position_limit:
        raise ModelLoadError(
            f"SIDECAR_GEN_MAX_MODEL_LEN={limits.max_model_len} is more than the model's "
            f"position limit of {position_limit} tokens"
        )
    return limits.max_model_len


def _optional_json(directory: Path, name: str) -> dict[str, Any]:
    return read_json(directory, name) if (directory / name).is_file() else {}


def _token_text(value: Any) -> str | None:
    """A special token of tokenizer_config.json: a string, or an AddedToken's dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _eos_ids(
    directory: Path, config: Mapping[str, Any], tokenizer: Tokenizer, eos_text: str | None
) -> frozenset[int]:
    """EOS ids: generation_config.json's (one id or a list), else config.json's, else the
    tokenizer's EOS token."""
    generation = _optional_json(directory, "generation_config.json")
    value = generation.get("eos_token_id", config.get("eos_token_id"))
    ids = value if isinstance(value, list) else [value] if value is not None else []
    if not ids and eos_text is not None and tokenizer.token_to_id(eos_text) is not None:
        ids = [tokenizer.token_to_id(eos_text)]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ModelLoadError(f"eos_token_id must be an integer or a list of them, not {value!r}")
    return frozenset(ids)


LLAMA_FAMILY = Family("Llama-style decoder", llama.MODEL_TYPES, TASKS, detect, load)
GPT2_FAMILY = Family("GPT-2 decoder", gpt2.MODEL_TYPES, TASKS, detect, load)
