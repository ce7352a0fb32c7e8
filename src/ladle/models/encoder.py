"""A model's encoder and head: what self-supervised objectives train and what heterogeneous soups share.

The encoder is every tensor of the model except its classifier (the head); its output, the "embedding", is the
classifier's input (pooled penultimate features). Objectives that need a spatial map (the masked-image
objective) ask for `feature_map`, the model's `forward_features`.
"""

from __future__ import annotations

import torch
from torch import nn

from ladle.errors import LadleError


def classifier_of(model: nn.Module) -> nn.Module:
    """The head: the model's `get_classifier()` (timm, ladle's models), else its last Linear layer."""
    if hasattr(model, "get_classifier"):
        return model.get_classifier()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise LadleError("model: no classifier layer found (no get_classifier() and no Linear layer)")
    return linears[-1]


def head_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the classifier, in the model's order."""
    head = classifier_of(model)
    prefix = next((name for name, m in model.named_modules() if m is head), None)
    if prefix is None:
        raise LadleError("model: its classifier is not one of its modules")
    return [k for k in model.state_dict() if k.startswith(f"{prefix}.")] if prefix else []


def encoder_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors without the head: what an encoder-only ingredient holds."""
    drop = set(head_keys(model))
    return {k: v for k, v in model.state_dict().items() if k not in drop}


def embed(model: nn.Module, x: torch.Tensor, call=None) -> torch.Tensor:
    """The embedding of x: the classifier's input, flattened, with gradients (the model runs whole). `call(x)` runs
    the model another way (e.g. torch.func.functional_call with other weights)."""
    captured: list[torch.Tensor] = []
    hook = classifier_of(model).register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
    try:
        (call or model)(x)
    finally:
        hook.remove()
    return captured[0].flatten(1)


def feature_map(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last spatial feature map (N, C, h, w) of a convolutional encoder."""
    if not hasattr(model, "forward_features"):
        raise LadleError(f"model: {type(model).__name__} has no forward_features(x) giving a spatial feature map")
    out = model.forward_features(x)
    if out.dim() != 4:
        raise LadleError(f"model: {type(model).__name__}.forward_features gives shape {list(out.shape)}, not (N, C, h, w); "
                         "use the mae objective for transformers")
    return out


@torch.no_grad()
def probe_shapes(model: nn.Module, x: torch.Tensor, spatial: bool = False) -> tuple[int, ...]:
    """The embedding's width (or, with `spatial`, the feature map's (C, h, w)) for inputs shaped like x, from a
    forward pass in eval mode (BatchNorm statistics untouched), on the model's device."""
    was = model.training
    model.eval()
    try:
        x = x[:2].to(next(model.parameters()).device)
        return tuple(feature_map(model, x).shape[1:]) if spatial else (embed(model, x).shape[1],)
    finally:
        model.train(was)
