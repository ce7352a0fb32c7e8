"""Hugging Face text models: a folder with a tokenizer is a text classifier (a `*ForSequenceClassification`
config, or any encoder given a head size with --num-labels / --num-classes) or a causal language model (a
`*ForCausalLM` / `*LMHeadModel` config). Built from local files only; the tokenizer and its truncation length are
the model's input pipeline (ladle.data.text.Tokenization), as an image model's resize and crop are.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from torch import nn

from ladle.data.text import MAX_LENGTH, Tokenization, tokenizer_identity
from ladle.io.hf import has_tokenizer, read_config
from ladle.errors import LadleError

CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def is_text_folder(spec: str) -> bool:
    """A model folder whose inputs are tokens: it has a config and a tokenizer, and no image processor."""
    path = Path(spec)
    return (path.is_dir() and (path / "config.json").is_file() and not (path / "preprocessor_config.json").is_file()
            and has_tokenizer(path))  # matched on every model spec: files checked, no tokenizer hashed


def _tokenizer_config(path: Path) -> dict:
    try:
        return json.loads((path / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return {}


def text_task(config: dict) -> str:
    """'causal-lm' for a language model's config, else 'classify'."""
    architectures = config.get("architectures") or []
    return "causal-lm" if any(a.endswith(CAUSAL_SUFFIXES) for a in architectures) else "classify"


def real_label2id(config: dict) -> dict[str, int] | None:
    """The config's label names, unless they are transformers' placeholders (LABEL_0, LABEL_1, …)."""
    label2id = config.get("label2id") or {}
    if not label2id or all(re.fullmatch(r"LABEL_\d+", name) for name in label2id):
        return None
    return {str(k): int(v) for k, v in label2id.items()}


def tokenization(spec: str, max_length: int | None = None) -> Tokenization:
    """The folder's tokenizer, truncating at `max_length` (default: the model's own limit, at most 512)."""
    path = Path(spec)
    config = read_config(path) or {}
    limit = min(MAX_LENGTH, int(config.get("max_position_embeddings") or config.get("n_positions") or MAX_LENGTH))
    tokenizer_limit = _tokenizer_config(path).get("model_max_length")  # read, not the tokenizer loaded for it
    if isinstance(tokenizer_limit, int) and 0 < tokenizer_limit < limit:
        limit = tokenizer_limit
    if max_length is not None:
        if max_length < 2:
            raise LadleError(f"max-length: must be at least 2, got {max_length}")
        limit = max_length
    label2id = real_label2id(config)
    architectures = config.get("architectures") or []
    head = None
    if any(a.endswith("ForSequenceClassification") for a in architectures):  # its head (2 is left unsaid)
        from transformers import AutoConfig

        head = AutoConfig.from_pretrained(path, local_files_only=True).num_labels
    return Tokenization(str(path), tokenizer_identity(path), limit, text_task(config),
                        tuple(sorted(label2id.items(), key=lambda kv: kv[1])) if label2id else None, "tokenizer",
                        head)


def build_text_model(spec: str, num_classes: int | None) -> nn.Module:
    """The folder's model with its own weights: a causal LM, or a sequence classifier with `num_classes` labels
    (a new, seeded head when the folder holds an encoder without one)."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    path = Path(spec)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "newly initialized" notes: the head is new on purpose
    transformers.logging.disable_progress_bar()  # a bar per load of a small folder says nothing
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        architectures = config.architectures or []
        if any(a.endswith(CAUSAL_SUFFIXES) for a in architectures):
            return AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
        classifier = any(a.endswith("ForSequenceClassification") for a in architectures)
        if classifier and num_classes is not None and config.num_labels != num_classes:
            raise LadleError(f"model: the folder's classifier has {config.num_labels} labels, the data or "
                             f"--num-classes {num_classes}", file=path)
        kwargs = {} if classifier or num_classes is None else {"num_labels": num_classes}
        with torch.random.fork_rng(devices=[]):  # a new head is the same on every run
            torch.manual_seed(0)
            return AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True,
                                                                      dtype=torch.float32, **kwargs)
    except (OSError, ValueError, KeyError) as e:
        raise LadleError(f"model: cannot build the text model: {str(e).splitlines()[0]}", file=path) from None
    finally:
        transformers.logging.set_verbosity(verbosity)
