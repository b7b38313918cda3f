"""Llama-style decoders (Llama, Qwen2, Mistral) in plain torch, for inference over a KV cache.

Reading order: the config, rotary position tables (with the snapshot's `rope_scaling`), the
modules from RMSNorm up to the whole decoder, then the checkpoint names. The three families differ
in a few switches: Qwen2 has biases on q, k and v; Llama's `attention_bias` puts them on o too;
Mistral may attend within a sliding window. Keys and values have `num_key_value_heads` heads
(grouped-query attention: SDPA repeats them for the query heads). Embeddings may be tied to the
output projection (`tie_word_embeddings`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sidecar.models.errors import ModelLoadError
from sidecar.models.kv_cache import KVCache, StepBatch

MODEL_TYPES = ("llama", "qwen2", "mistral")
ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class LlamaConfig:
    """The architecture, as config.json describes it (Hugging Face names and defaults)."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: Mapping[str, Any] | None = None
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    sliding_window: int | None = None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> LlamaConfig:
        """Read a parsed config.json; raise ModelLoadError for what this module cannot run."""
        model_type = str(raw.get("model_type"))
        if raw.get("hidden_act", "silu") != "silu":
            raise ModelLoadError(f"config.json hidden_act {raw.get('hidden_act')!r}: only silu")
        try:
            H, nh = int(raw["hidden_size"]), int(raw["num_attention_heads"])
            # transformers 5 writes `rope_parameters` (theta inside); 4.x `rope_theta` and
            # `rope_scaling` (None for the default rotation).
            rope = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or {})
            theta = float(rope.pop("rope_theta", raw.get("rope_theta", 10000.0)))
            window = raw.get("sliding_window")
            if model_type == "qwen2" and not raw.get("use_sliding_window", False):
                window = None
            config = cls(
                model_type=model_type,
                vocab_size=int(raw["vocab_size"]),
                hidden_size=H,
                intermediate_size=int(raw["intermediate_size"]),
                num_hidden_layers=int(raw["num_hidden_layers"]),
                num_attention_heads=nh,
                num_key_value_heads=int(raw.get("num_key_value_heads") or nh),
                head_dim=int(raw.get("head_dim") or H // nh),
                max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
                rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
                rope_theta=theta,
                rope_scaling=rope or None,
                qkv_bias=model_type == "qwen2" or bool(raw.get("attention_bias", False)),
                o_bias=bool(raw.get("attention_bias", False)),
                mlp_bias=bool(raw.get("mlp_bias", False)),
                tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
                sliding_window=int(window) if window else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(
                f"config.json of a {model_type} model: bad or missing {exc}"
            ) from None
        rope_type = (config.rope_scaling or {}).get("rope_type", "default")
        if rope_type not in ROPE_TYPES:
            raise ModelLoadError(
                f"config.json rope type {rope_type!r} is not supported "
                f"(supported: {', '.join(ROPE_TYPES)})"
            )
        if config.num_attention_heads % config.num_key_value_heads:
            raise ModelLoadError("config.json num_attention_heads is not a multiple of kv heads")
        return config


def rope_frequencies(config: LlamaConfig) -> torch.Tensor:
    """(hs/2,) inverse frequencies, scaled as `rope_scaling` asks (Hugging Face's formulas)."""
    hs = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, hs, 2, dtype=torch.int64).float() / hs))
    scaling = config.rope_scaling or {}
    rope_type = scaling.get("rope_type", "default")
    if rope_type == "linear":
        return inv_freq / float(scaling["factor"])
    if rope_type == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_len / high) * ~(wavelen > old_len / low)
        return torch.where(medium, smoothed, scaled)
    return inv_freq


def rope_tables(config: LlamaConfig, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every position's angles: (max_len, hs) each, in fp32."""
    inv_freq = rope_frequencies(config)  # (hs/2,)
    positions = torch.arange(max_len, dtype=torch.float32)  # (L,)
    freqs = (inv_freq[:, None] @ positions[None, :]).T  # (L, hs/2)
    angles = torch.cat((freqs, freqs), dim=-1)  # (L, hs)
    return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, nh, T, hs) by (B, 1, T, hs) angles: Hugging Face's rotate-half layout."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, config: LlamaConfig, layer: int) -> None:
        super().__init__()
        nh, nkv, hs, H = (
            config.num_attention_heads, config.num_key_value_heads, config.head_dim,
            config.hidden_size,
        )  # fmt: skip
        self.q_proj = nn.Linear(H, nh * hs, bias=config.qkv_bias)
        self.k_proj = nn.Linear(H, nkv * hs, bias=config.qkv_bias)
        self.v_proj = nn.Linear(H, nkv * hs, bias=config.qkv_bias)
        self.o_proj = nn.Linear(nh * hs, H, bias=config.o_bias)
        self.nh, self.nkv, self.hs, self.layer = nh, nkv, hs, layer

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor,
        batch: StepBatch,
        cache: KVCache,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.nh, self.hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, self.nkv, self.hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = self.v_proj(x).view(B, T, self.nkv, self.hs).transpose(1, 2)  # (B, nkv, T, hs)
        q, k = rotate(q, *rope), rotate(k, *rope)
        k, v = cache.update(self.layer, batch, k, v)  # (B, nkv, kv_len, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.nh != self.nkv)
        y = y.transpose(1, 2).reshape(B, T, self.nh * self.hs)  # (B, T, nh * hs)
        return self.o_proj(y)  # type: ignore[no-any-return]


class MLP(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        H, inner, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(H, inner, bias=bias)
        self.up_proj = nn.Linear(H, inner, bias=bias)
        self.down_proj = nn.Linear(inner, H, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        swiglu = F.silu(self.gate_proj(x)) * self.up_proj(x)  # (B, T, inner)
        return self.down_proj(swiglu)  # type: ignore[no-any-return]


class Block(nn.Module):
    def __init__(self, config: LlamaConfig, layer: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor,
        batch: StepBatch,
        cache: KVCache,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, mask, batch, cache)
        return x + self.mlp(self.post_attention_layernorm(x))  # type: ignore[no-any-return]


class Llama(nn.Module):
    """The decoder: embeddings, blocks, final norm, and the output projection (tied or not)."""

    def __init__(self, config: LlamaConfig, max_len: int) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        )
        cos, sin = rope_tables(config, max_len)
        self.cos: torch.Tensor
        self.sin: torch.Tensor
        self.register_buffer("cos", cos, persistent=False)  # (L, hs)
        self.register_buffer("sin", sin, persistent=False)  # (L, hs)

    def forward(self, batch: StepBatch, cache: KVCache) -> torch.Tensor:
        """Logits (B, V) at each row's last token, after its keys and values are cached."""
        x = self.embed_tokens(batch.tokens)  # (B, T, H)
        cos = self.cos[batch.positions][:, None].to(x.dtype)  # (B, 1, T, hs)
        sin = self.sin[batch.positions][:, None].to(x.dtype)  # (B, 1, T, hs)
        mask = batch.attention_mask(self.config.sliding_window)  # (B, 1, T, kv_len)
        for block in self.layers:
            x = block(x, (cos, sin), mask, batch, cache)
        x = x[torch.arange(x.shape[0], device=x.device), batch.last]  # (B, H)
        x = self.norm(x)
        weight = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(x, weight)  # (B, V)


def checkpoint_names(model: Llama) -> dict[str, str]:
    """Our parameter names -> Hugging Face's `*ForCausalLM` names (`model.` before the body)."""
    return {
        name: name if name.startswith("lm_head.") else f"model.{name}"
        for name, _ in model.named_parameters()
    }


def ignored_names(config: LlamaConfig) -> tuple[str, ...]:
    # A tied checkpoint may still carry the output projection's copy of the embeddings.
    return ("lm_head.weight",) if config.tie_word_embeddings else ()
