"""Hugging Face checkpoints name some tensors otherwise than the models that load them.

transformers 5 renames modules of some architectures (ViT's `encoder.layer.0.attention.attention.query` is
`layers.0.attention.q_proj` in the model) and keeps writing the old names to disk; `from_pretrained` renames on
the way in. ladle reads files, so it needs the same renaming: a model's state under its checkpoint names, a state
with checkpoint names put into the model, and a LoRA adapter (PEFT names modules as the model does) matched
against its base's file.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from torch import nn


def checkpoint_names(model: nn.Module) -> dict[str, str]:
    """The model's state-dict key -> the key its checkpoint file holds (only the keys that differ). Renamings
    only: an architecture whose conversion splits or fuses tensors keeps its own names."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers 4: files and models name tensors alike
        return {}
    own = list(model.state_dict())
    probe = {k: torch.tensor([i]) for i, k in enumerate(own)}  # each value says which key it came from
    try:
        reverted = revert_weight_conversion(model, probe)
    except Exception:  # noqa: BLE001  (a converter that needs real tensors: not a renaming)
        return {}
    if len(reverted) != len(own) or any(v.numel() != 1 for v in reverted.values()):
        return {}
    return {own[int(v[0])]: k for k, v in reverted.items() if own[int(v[0])] != k}


@functools.lru_cache(maxsize=8)
def folder_checkpoint_names(folder: str) -> dict[str, str]:
    """checkpoint_names of the model a Hugging Face folder's config.json describes, built without weights."""
    import transformers

    from ladle.io.hf import read_config

    config = read_config(Path(folder)) or {}
    architecture = (config.get("architectures") or [None])[0]
    cls = getattr(transformers, architecture, None) if architecture else None
    if cls is None:
        return {}
    with torch.device("meta"):
        model = cls(transformers.AutoConfig.from_pretrained(folder, local_files_only=True))
    return checkpoint_names(model)


class CheckpointNamed(nn.Module):
    """A Hugging Face model whose state goes in and out under its checkpoint's names (forward returns logits)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.to_file = checkpoint_names(model)
        self.from_file = {v: k for k, v in self.to_file.items()}

    def forward(self, x):
        out = self.model(x)
        return out.logits if hasattr(out, "logits") else out

    def state_dict(self, *args, **kwargs):
        return {self.to_file.get(k, k): v for k, v in self.model.state_dict(*args, **kwargs).items()}

    def load_state_dict(self, state, strict=True, assign=False):
        return self.model.load_state_dict(self.model_state(state), strict=strict, assign=assign)

    def model_state(self, state: dict) -> dict:
        """A state under checkpoint names, as the inner model names it."""
        return {self.from_file.get(k, k): v for k, v in state.items()}


def call_with_state(model: nn.Module, state: dict, args: tuple = (), kwargs: dict | None = None):
    """torch.func.functional_call that also takes a CheckpointNamed model (its inner model, the state renamed)."""
    from torch.func import functional_call

    if isinstance(model, CheckpointNamed):
        model, state = model.model, model.model_state(state)
    return functional_call(model, state, args, kwargs or {})
