"""Strict assembly of a decoder from checkpoint tensors: every parameter found, nothing left over.

A family gives the checkpoint name of each of its parameters (`names`: ours -> theirs) and, where
the checkpoint stores a parameter in another layout (GPT-2's Conv1D weights are transposed), a
function that brings it to ours. Missing and unexpected tensors are listed sorted, as
safetensors' own strict loading does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn

import loaders
from sidecar.models.errors import ModelLoadError


def assemble(
    module: nn.Module,
    weights: Mapping[str, torch.Tensor],
    names: Mapping[str, str],
    *,
    device: torch.device,
    dtype: torch.dtype,
    ignored: Iterable[str] = (),
    transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
) -> None:
    """Fill `module`'s parameters from `weights` and put it in eval mode on `device`.

    Args:
        module: built with unfilled parameters; tied parameters appear once in `names`.
        weights: the checkpoint's tensors by name.
        names: our parameter name -> its checkpoint name.
        device: where the parameters go.
        dtype: their floating dtype.
        ignored: checkpoint names that may be present and are not used (buffers some versions
            save, a tied copy of the embeddings).
        transform: (our name, tensor) -> the tensor in our layout.

    Raises:
        ModelLoadError: tensors missing, unexpected, or of the wrong shape or dtype.
    """
    wanted = set(names.values())
    skipped = set(ignored)
    missing = sorted(wanted - weights.keys())
    unexpected = sorted(weights.keys() - wanted - skipped)
    if missing or unexpected:
        raise ModelLoadError(
            f"checkpoint does not match the architecture in config.json: missing tensors "
            f"{missing}, unexpected tensors {unexpected}"
        )
    parameters = dict(module.named_parameters())
    problems = []
    state: dict[str, torch.Tensor] = {}
    for ours, theirs in names.items():
        tensor = weights[theirs]
        if transform is not None:
            tensor = transform(ours, tensor)
        expected = tuple(parameters[ours].shape)
        if tuple(tensor.shape) != expected or not tensor.is_floating_point():
            problems.append(f"{theirs}: {tensor.dtype} {tuple(tensor.shape)}, expected {expected}")
            continue
        state[ours] = tensor.to(device=device, dtype=dtype).contiguous()
    if problems:
        raise ModelLoadError(f"checkpoint tensors of the wrong shape or dtype: {sorted(problems)}")
    for ours, tensor in state.items():
        owner, _, attribute = ours.rpartition(".")
        target = module.get_submodule(owner) if owner else module
        setattr(target, attribute, nn.Parameter(tensor, requires_grad=False))
    module.requires_grad_(False)
    module.eval()
    loaders.release_unreferenced(weights.values(), state.values())
