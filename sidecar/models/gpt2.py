"""GPT-2 in plain torch, for inference over a KV cache (nanoGPT's model, with a cache).

Reading order: the config, the modules from attention up to the whole decoder, then the
checkpoint names. The checkpoint stores its projections as Conv1D weights, (in, out): they are
transposed to `nn.Linear`'s (out, in) when loaded. The output projection is the token embedding.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sidecar.models.errors import ModelLoadError
from sidecar.models.kv_cache import KVCache, StepBatch

MODEL_TYPES = ("gpt2",)
# activation_function -> the `approximate` argument of F.gelu
_GELU = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu": "none"}
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


@dataclass(frozen=True)
class GPT2Config:
    """The architecture, as config.json describes it (Hugging Face names and defaults)."""

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu_new"

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> GPT2Config:
        """Read a parsed config.json; raise ModelLoadError for what this module cannot run."""
        if raw.get("activation_function", "gelu_new") not in _GELU:
            raise ModelLoadError(
                f"config.json activation_function {raw.get('activation_function')!r} is not "
                f"supported (supported: {', '.join(_GELU)})"
            )
        if raw.get("scale_attn_by_inverse_layer_idx") or raw.get("reorder_and_upcast_attn"):
            raise ModelLoadError("config.json: GPT-2 attention variants are not supported")
        if raw.get("scale_attn_weights", True) is not True:
            raise ModelLoadError("config.json: scale_attn_weights false is not supported")
        try:
            return cls(
                vocab_size=int(raw["vocab_size"]),
                n_positions=int(raw.get("n_positions", 1024)),
                n_embd=int(raw["n_embd"]),
                n_layer=int(raw["n_layer"]),
                n_head=int(raw["n_head"]),
                n_inner=int(raw["n_inner"]) if raw.get("n_inner") else None,
                layer_norm_epsilon=float(raw.get("layer_norm_epsilon", 1e-5)),
                activation_function=str(raw.get("activation_function", "gelu_new")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"config.json of a gpt2 model: bad or missing {exc}") from None


class Attention(nn.Module):
    def __init__(self, config: GPT2Config, layer: int) -> None:
        super().__init__()
        H = config.n_embd
        self.c_attn = nn.Linear(H, 3 * H)
        self.c_proj = nn.Linear(H, H)
        self.nh, self.hs, self.layer = config.n_head, H // config.n_head, layer

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, batch: StepBatch, cache: KVCache
    ) -> torch.Tensor:
        B, T, H = x.shape
        q, k, v = self.c_attn(x).split(H, dim=2)  # (B, T, H) each
        q = q.view(B, T, self.nh, self.hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.nh, self.hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.nh, self.hs).transpose(1, 2)  # (B, nh, T, hs)
        k, v = cache.update(self.layer, batch, k, v)  # (B, nh, kv_len, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).reshape(B, T, H)  # (B, T, H)
        return self.c_proj(y)  # type: ignore[no-any-return]


class MLP(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        inner = config.n_inner or 4 * config.n_embd
        self.c_fc = nn.Linear(config.n_embd, inner)
        self.c_proj = nn.Linear(inner, config.n_embd)
        self.approximate = _GELU[config.activation_function]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate))  # type: ignore[no-any-return]


class Block(nn.Module):
    def __init__(self, config: GPT2Config, layer: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = Attention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, batch: StepBatch, cache: KVCache
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask, batch, cache)
        return x + self.mlp(self.ln_2(x))  # type: ignore[no-any-return]


class GPT2(nn.Module):
    """Token and position embeddings, blocks, the final norm; the output is the embedding."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.h = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)

    def forward(self, batch: StepBatch, cache: KVCache) -> torch.Tensor:
        """Logits (B, V) at each row's last token, after its keys and values are cached."""
        x = self.wte(batch.tokens) + self.wpe(batch.positions)  # (B, T, H)
        mask = batch.attention_mask()  # (B, 1, T, kv_len)
        for block in self.h:
            x = block(x, mask, batch, cache)
        x = x[torch.arange(x.shape[0], device=x.device), batch.last]  # (B, H)
        return F.linear(self.ln_f(x), self.wte.weight)  # (B, V)


def checkpoint_names(model: GPT2, weights: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Our parameter names -> the checkpoint's: `GPT2LMHeadModel` saves them under
    `transformer.`, the original GPT-2 checkpoints without a prefix."""
    prefix = "transformer." if any(name.startswith("transformer.") for name in weights) else ""
    return {name: prefix + name for name, _ in model.named_parameters()}


def ignored_names(weights: Mapping[str, torch.Tensor]) -> tuple[str, ...]:
    # Attention-mask buffers older versions saved, and the tied output projection.
    return tuple(
        name
        for name in weights
        if name.endswith((".attn.bias", ".attn.masked_bias")) or name == "lm_head.weight"
    )


def to_linear(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Conv1D weights (in, out) -> nn.Linear's (out, in)."""
    return tensor.t() if name.endswith(_CONV1D) else tensor
