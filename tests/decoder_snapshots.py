"""Tiny real decoder snapshots for tests: random weights saved by transformers, a real tokenizer.

The tokenizer is a byte-level BPE trained here on a small English corpus (with some non-Latin
text, so that characters span tokens), with special tokens, a BOS the post-processor adds, and a
chat template in tokenizer_config.json that writes the BOS itself (so it must not be added twice).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role']) }}{% endif %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CORPUS = """\
The sidecar serves a small model next to the application in the same pod. It owns the GPU,
streams weights from shared storage and answers over a Unix socket or the loopback interface.
Requests are queued, batched and run on one device thread; the event loop never waits for the
model. When the queue is full the client is told to retry after a few seconds. A decoder writes
one token at a time: the scheduler lets sequences join and leave the running batch at every step,
so that a short request does not wait for a long one to finish. Prompts are split into chunks so
that a long prompt does not stall the tokens of the others. Each sequence has a slot in the cache
of keys and values, and gives it back as soon as it ends, is cancelled or its client goes away.
Température, café, naïve, Zürich, straße, Привет мир, 東京の天気は晴れです, 中文字符, 한국어 🙂 🚀.
Stop strings such as ### or END must never appear in the text that is streamed to the client.
"""


def train_tokenizer(vocab_size: int = 400) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = [BOS, EOS, PAD, "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS.splitlines() * 4, trainer)
    bos_id = tokenizer.token_to_id(BOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return tokenizer


def _write_tokenizer(directory: Path, tokenizer: Tokenizer, *, template: bool) -> None:
    tokenizer.save(str(directory / "tokenizer.json"))
    config: dict[str, Any] = {
        "bos_token": BOS,
        "eos_token": {"content": EOS, "special": True},
        "pad_token": PAD,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    if template:
        config["chat_template"] = CHAT_TEMPLATE
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def make_decoder_snapshot(
    directory: Path,
    *,
    model_type: str = "llama",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    tie: bool = False,
    rope_scaling: dict[str, Any] | None = None,
    max_positions: int = 256,
    seed: int = 0,
    template: bool = True,
    eos_in_generation_config: bool = True,
) -> Path:
    """Write a random-weight `*ForCausalLM` snapshot (llama, qwen2, mistral or gpt2)."""
    import transformers  # slow to import: only where a snapshot is built

    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer()
    vocab = tokenizer.get_vocab_size()
    bos, eos, pad = (tokenizer.token_to_id(t) for t in (BOS, EOS, PAD))
    common = {"vocab_size": vocab, "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}
    torch.manual_seed(seed)
    if model_type == "gpt2":
        config: Any = transformers.GPT2Config(
            n_embd=hidden_size, n_layer=num_layers, n_head=num_heads, n_positions=max_positions,
            initializer_range=0.05, **common,
        )  # fmt: skip
        model: Any = transformers.GPT2LMHeadModel(config)
    else:
        classes = {
            "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
            "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
            "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        }
        config_class, model_class = classes[model_type]
        extra: dict[str, Any] = {"rope_scaling": rope_scaling} if rope_scaling else {}
        if model_type == "mistral":
            extra["sliding_window"] = 16  # shorter than the prompts: the window bites
        config = config_class(
            hidden_size=hidden_size, intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers, num_attention_heads=num_heads,
            num_key_value_heads=num_kv_heads, max_position_embeddings=max_positions,
            tie_word_embeddings=tie, initializer_range=0.05, **common, **extra,
        )  # fmt: skip
        model = model_class(config)
        if model_type == "qwen2":  # biases start at zero: make them count
            with torch.no_grad():
                for name, parameter in model.named_parameters():
                    if name.endswith("_proj.bias"):
                        parameter.normal_(0, 0.05)
    model.eval()
    model.save_pretrained(directory, safe_serialization=True)
    generation = {"bos_token_id": bos, "eos_token_id": [eos] if eos_in_generation_config else None}
    (directory / "generation_config.json").write_text(json.dumps(generation))
    _write_tokenizer(directory, tokenizer, template=template)
    return directory
