"""BERT-family encoders (BERT, RoBERTa, XLM-RoBERTa) in plain torch, for inference only.

Reading order: the config, the modules from embeddings up to the whole encoder with its optional
classification head, then loading: the one function that maps our parameter names to the
checkpoint's, and the strict assembly of a ready-to-run encoder from already-loaded tensors.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import loaders
from sidecar.models.errors import ModelLoadError
from sidecar.models.tokens import Batch

logger = logging.getLogger(__name__)

MODEL_TYPES = ("bert", "roberta", "xlm-roberta")
# RoBERTa-style models number positions from pad_token_id + 1 and skip padding.
_ROBERTA_STYLE = frozenset({"roberta", "xlm-roberta"})
# hidden_act -> the `approximate` argument of F.gelu
_GELU_APPROXIMATIONS = {"gelu": "none", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}


@dataclass(frozen=True)
class BertConfig:
    """The architecture, as config.json describes it (Hugging Face names and defaults)."""

    model_type: str = "bert"
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    num_labels: int = 2

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> BertConfig:
        """Read a parsed config.json; raise ModelLoadError for what this module cannot run."""
        model_type = raw.get("model_type")
        if model_type not in MODEL_TYPES:
            raise ModelLoadError(
                f"config.json model_type {model_type!r} is not supported "
                f"(supported: {', '.join(MODEL_TYPES)})"
            )
        position_type = raw.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ModelLoadError(
                f"config.json position_embedding_type {position_type!r} is not supported "
                "(supported: 'absolute')"
            )
        hidden_act = raw.get("hidden_act", "gelu")
        if hidden_act not in _GELU_APPROXIMATIONS:
            raise ModelLoadError(
                f"config.json hidden_act {hidden_act!r} is not supported "
                f"(supported: {', '.join(_GELU_APPROXIMATIONS)})"
            )
        id2label = raw.get("id2label")
        defaults = cls(pad_token_id=1 if model_type in _ROBERTA_STYLE else 0)

        def integer(key: str, default: int) -> int:
            value = raw.get(key, default)
            if value is None:
                return default
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ModelLoadError(
                    f"config.json {key} must be a non-negative integer, not {value!r}"
                )
            return value

        eps = raw.get("layer_norm_eps", defaults.layer_norm_eps)
        if not isinstance(eps, int | float) or isinstance(eps, bool) or eps <= 0:
            raise ModelLoadError(
                f"config.json layer_norm_eps must be a positive number, not {eps!r}"
            )
        config = cls(
            model_type=model_type,
            vocab_size=integer("vocab_size", defaults.vocab_size),
            hidden_size=integer("hidden_size", defaults.hidden_size),
            num_hidden_layers=integer("num_hidden_layers", defaults.num_hidden_layers),
            num_attention_heads=integer("num_attention_heads", defaults.num_attention_heads),
            intermediate_size=integer("intermediate_size", defaults.intermediate_size),
            hidden_act=hidden_act,
            max_position_embeddings=integer(
                "max_position_embeddings", defaults.max_position_embeddings
            ),
            type_vocab_size=integer("type_vocab_size", defaults.type_vocab_size),
            layer_norm_eps=float(eps),
            pad_token_id=integer("pad_token_id", defaults.pad_token_id),
            num_labels=len(id2label)
            if isinstance(id2label, dict) and id2label
            else integer("num_labels", defaults.num_labels),
        )
        if config.num_attention_heads == 0 or config.hidden_size % config.num_attention_heads:
            raise ModelLoadError(
                f"config.json hidden_size {config.hidden_size} is not a multiple of "
                f"num_attention_heads {config.num_attention_heads}"
            )
        if config.max_positions < 1:
            raise ModelLoadError(
                f"config.json max_position_embeddings {config.max_position_embeddings} leaves no "
                f"position for tokens (pad_token_id {config.pad_token_id})"
            )
        return config

    @property
    def roberta_style(self) -> bool:
        return self.model_type in _ROBERTA_STYLE

    @property
    def max_positions(self) -> int:
        """The longest input, special tokens included, that the position table can number."""
        if self.roberta_style:
            return self.max_position_embeddings - self.pad_token_id - 1
        return self.max_position_embeddings


class _Unfilled:
    """Leaves parameters as allocated (`torch.empty`, pages untouched): the checkpoint fills them.

    Random initialisation would be wasted work, and building on the meta device instead pulls in
    seconds of lazy imports (torch's Python meta kernels) on the first model of a process.
    """

    def reset_parameters(self) -> None:
        pass


class Linear(_Unfilled, nn.Linear):
    pass


class Embedding(_Unfilled, nn.Embedding):
    pass


class LayerNorm(_Unfilled, nn.LayerNorm):
    pass


class Embeddings(nn.Module):
    """Word + token type + position embeddings, then LayerNorm."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word = Embedding(config.vocab_size, config.hidden_size)
        self.token_type = Embedding(config.type_vocab_size, config.hidden_size)
        self.position = Embedding(config.max_position_embeddings, config.hidden_size)
        self.norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, position_ids: torch.Tensor
    ) -> torch.Tensor:
        # Summed in the reference implementation's order, which matters in half precision.
        x = self.word(input_ids) + self.token_type(token_type_ids)  # (B, T, H)
        x = x + self.position(position_ids)  # (B, T, H); position_ids may be (1, T)
        return self.norm(x)  # type: ignore[no-any-return]


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused query/key/value projection."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.qkv = Linear(config.hidden_size, 3 * config.hidden_size)
        self.proj = Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, H = x.shape
        nh = self.num_heads
        qkv = self.qkv(x).view(B, T, 3, nh, H // nh)  # (B, T, 3, nh, hs)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, H)  # (B, T, H)
        return self.proj(y)  # type: ignore[no-any-return]


class Layer(nn.Module):
    """One post-LayerNorm transformer layer: attention, then a GELU feed-forward block."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attn = SelfAttention(config)
        self.attn_norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.up = Linear(config.hidden_size, config.intermediate_size)
        self.down = Linear(config.intermediate_size, config.hidden_size)
        self.mlp_norm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.approximate = _GELU_APPROXIMATIONS[config.hidden_act]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.feed(self.attend(x, mask))

    def attend(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The first half of `forward`: attention and its residual."""
        return self.attn_norm(x + self.attn(x, mask))  # type: ignore[no-any-return]

    def feed(self, x: torch.Tensor) -> torch.Tensor:
        """The second half of `forward`: the feed-forward block and its residual."""
        h = F.gelu(self.up(x), approximate=self.approximate)  # (B, T, intermediate)
        return self.mlp_norm(x + self.down(h))  # type: ignore[no-any-return]


class ClassificationHead(nn.Module):
    """Dense + tanh on the first token, then logits: BERT's pooler + classifier, RoBERTa's head."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)
        self.out = Linear(config.hidden_size, config.num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        first = hidden[:, 0]  # (B, H): [CLS] or <s>
        return self.out(torch.tanh(self.dense(first)))  # type: ignore[no-any-return]


class BertEncoder(nn.Module):
    """Token ids to contextual token states, with an optional sequence-classification head."""

    def __init__(self, config: BertConfig, *, with_head: bool) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))
        self.head = ClassificationHead(config) if with_head else None

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Token states (B, T, H).

        Args:
            input_ids: (B, T) int32 or int64, right-padded with pad_token_id.
            token_type_ids: (B, T) int32 or int64.
            attention_mask: (B, T) bool, True on real tokens; None when nothing is padded, which
                lets SDPA pick its fastest kernel.
        """
        mask = None if attention_mask is None else attention_mask[:, None, None, :]  # (B, 1, 1, T)
        x: torch.Tensor = self.embeddings(input_ids, token_type_ids, self._position_ids(input_ids))
        for layer in self.layers:
            x = layer(x, mask)
        return x

    def encode(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states (B, T, H) of a collated batch, and its mask (B, T) bool, on our device.

        Call under `torch.inference_mode()`.
        """
        x, mask, attention = self.embed(batch)
        for layer in self.layers:
            x = layer(x, attention)
        return x, mask

    def embed(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The first step of `encode`: the embeddings (B, T, H) of a collated batch on our
        device, its mask (B, T) bool, and the attention mask (B, 1, 1, T) each layer takes
        (None when nothing is padded). `encode` is this, then each of `layers` in turn.

        Call under `torch.inference_mode()`.
        """
        num_tokens = batch.input_ids.shape[1]
        if num_tokens > self.config.max_positions:
            raise ValueError(
                f"batch of {num_tokens} tokens exceeds the model's {self.config.max_positions}"
            )
        device = self.embeddings.word.weight.device
        input_ids = batch.input_ids.to(device, non_blocking=True)
        token_type_ids = batch.token_type_ids.to(device, non_blocking=True)
        mask = batch.attention_mask.to(device, non_blocking=True)  # (B, T) bool
        # `padded` was found on the host while collating: no device sync to ask the mask.
        attention = mask[:, None, None, :] if batch.padded else None  # (B, 1, 1, T)
        positions = self._position_ids(input_ids)
        return self.embeddings(input_ids, token_type_ids, positions), mask, attention

    def classify(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_labels) from token states (B, T, H)."""
        if self.head is None:
            raise RuntimeError("this encoder was built without a classification head")
        return self.head(hidden)  # type: ignore[no-any-return]

    def _position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        if not self.config.roberta_style:
            return torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]  # (1, T)
        # fairseq numbering: pad_token_id + 1, + 2, ... on real tokens, pad_token_id on padding
        pad = self.config.pad_token_id
        real = input_ids.ne(pad).int()  # (B, T)
        return (real.cumsum(1) * real).long() + pad  # (B, T)


_LAYER_NAMES = {
    "attn.proj": "attention.output.dense",
    "attn_norm": "attention.output.LayerNorm",
    "up": "intermediate.dense",
    "down": "output.dense",
    "mlp_norm": "output.LayerNorm",
}
_EMBEDDING_NAMES = {
    "embeddings.word": "embeddings.word_embeddings",
    "embeddings.token_type": "embeddings.token_type_embeddings",
    "embeddings.position": "embeddings.position_embeddings",
    "embeddings.norm": "embeddings.LayerNorm",
}
# Checkpoints of *ForSequenceClassification (and *ForMaskedLM, ...) nest the encoder under these.
_PREFIXES = ("bert.", "roberta.")


def checkpoint_names(name: str, config: BertConfig) -> tuple[str, ...]:
    """The unprefixed checkpoint tensors that make up our parameter `name`, in order."""
    module, kind = name.rsplit(".", 1)  # kind: weight | bias
    if module.startswith("layers."):
        _, index, rest = module.split(".", 2)
        base = f"encoder.layer.{index}"
        if rest == "attn.qkv":
            return tuple(f"{base}.attention.self.{p}.{kind}" for p in ("query", "key", "value"))
        return (f"{base}.{_LAYER_NAMES[rest]}.{kind}",)
    if module == "head.dense":
        return ("classifier.dense." + kind,) if config.roberta_style else ("pooler.dense." + kind,)
    if module == "head.out":
        return ("classifier.out_proj." + kind,) if config.roberta_style else ("classifier." + kind,)
    return (f"{_EMBEDDING_NAMES[module]}.{kind}",)


def _unprefixed(name: str) -> str:
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    # TF-converted checkpoints call LayerNorm parameters gamma and beta.
    if name.endswith(".gamma"):
        return name[: -len("gamma")] + "weight"
    if name.endswith(".beta"):
        return name[: -len("beta")] + "bias"
    return name


def _is_unused(name: str, config: BertConfig, *, with_head: bool) -> bool:
    """Tensors a checkpoint may carry that this encoder knowingly does not use."""
    if name in ("embeddings.position_ids", "embeddings.token_type_ids"):
        return True  # buffers, not weights
    if name.startswith(("cls.", "lm_head.")):
        return True  # pre-training and masked-LM heads
    if name.startswith("pooler."):
        return not with_head or config.roberta_style
    return name.startswith("classifier.") and not with_head


def build_encoder(
    config: BertConfig,
    weights: Mapping[str, torch.Tensor],
    *,
    with_head: bool,
    device: torch.device,
    dtype: torch.dtype,
) -> BertEncoder:
    """Assemble an encoder in eval mode on `device` from checkpoint tensors, strictly.

    Args:
        config: the architecture.
        weights: tensors keyed by checkpoint name, prefixed ("bert.", "roberta.") or not.
        with_head: build the sequence-classification head (the checkpoint must carry it).
        device: where the parameters go.
        dtype: floating dtype of the parameters.

    Returns:
        The encoder, with gradients off.

    Raises:
        ModelLoadError: tensors missing, unexpected, duplicated or of the wrong shape.
    """
    model = BertEncoder(config, with_head=with_head)
    found: dict[str, tuple[str, torch.Tensor]] = {}
    for original, tensor in weights.items():
        name = _unprefixed(original)
        if name in found:
            raise ModelLoadError(
                f"checkpoint holds {found[name][0]!r} and {original!r}, the same weight twice"
            )
        found[name] = (original, tensor)
    parameters = model.state_dict()
    wanted = {ck for ours in parameters for ck in checkpoint_names(ours, config)}
    prefix = next((p for p in _PREFIXES if any(k.startswith(p) for k in weights)), "")
    missing = sorted(
        n if n.startswith("classifier.") else prefix + n for n in wanted - found.keys()
    )
    unexpected = sorted(
        found[n][0] for n in found.keys() - wanted if not _is_unused(n, config, with_head=with_head)
    )
    if missing or unexpected:
        raise ModelLoadError(
            f"checkpoint does not match the {config.model_type} architecture in config.json: "
            f"missing tensors {missing}, unexpected tensors {unexpected}"
        )
    state: dict[str, torch.Tensor] = {}
    problems: list[str] = []
    for ours, parameter in parameters.items():
        names = checkpoint_names(ours, config)
        expected = (parameter.shape[0] // len(names), *parameter.shape[1:])
        for ck in names:
            original, tensor = found[ck]
            if tuple(tensor.shape) != expected or not tensor.is_floating_point():
                problems.append(
                    f"{original}: {tensor.dtype} {tuple(tensor.shape)}, "
                    f"expected floating {expected}"
                )
        if problems:
            continue  # keep collecting problems; nothing is assembled
        parts = [found[ck][1] for ck in names]
        fused = parts[0] if len(parts) == 1 else torch.cat(parts)
        state[ours] = fused.to(device=device, dtype=dtype).contiguous()
    if problems:
        raise ModelLoadError(f"checkpoint tensors of the wrong shape or dtype: {sorted(problems)}")
    model.load_state_dict(state, strict=True, assign=True)
    model.requires_grad_(False)
    model.eval()
    # Parameters that are views of the loaded regions keep them alive whole: hand back the
    # pages of the tensors this encoder copied (fused attention projections, casts) or skips.
    loaders.release_unreferenced(weights.values(), model.state_dict().values())
    logger.debug(
        "built %s encoder: %d layers, hidden %d, head %s",
        config.model_type,
        config.num_hidden_layers,
        config.hidden_size,
        with_head,
    )
    return model
