"""The tasting spec: everything that decides what an evaluation computes, declared once.

`taste`, `cook` (greedy, learned, season, self-season), `grid`, `check --predict` and the studies take a
`TastingSpec`; its fields are the CLI flags and YAML fields (`TASTING_OPTIONS`, read from the annotations as recipe
parameters are), its `argv()` is the part of the command that remakes a soup, and `model_id()` is the model half of
every stored evaluation's key. Nothing heavy is imported here, so `ladle --help` stays fast.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Annotated, Literal

from ladle.soup.schema import params_of, validate

BN_POLICIES = ("average", "recalibrate", "first")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TastingSpec:
    """What a model is tasted with: model, data, preprocessing, BatchNorm policy, device, precision, batching."""

    model: Annotated[str, "efficientnet-lite0, timm:NAME[@FILE], an HF directory (image or text) or "
                          "package.module:function (default: the first ingredient, if it is an HF directory)"] = None
    data: Annotated[list[str], "the data to taste on: SOURCE[:split] (repeatable; default split per recipe)"] = ()
    num_classes: Annotated[int, "classes of the model's head (default: the data's)"] = None
    image_size: Annotated[int, "input resolution (default: the model's own preprocessing: timm's data config, "
                               "an HF preprocessor_config.json; 64 for other models)"] = None
    bn: Annotated[Literal[BN_POLICIES], "BatchNorm statistics of soups: averaged, recomputed on --bn-data, or the "
                                        "first ingredient's"] = "average"
    bn_data: Annotated[str, "data for --bn recalibrate (default: the data's train split)"] = None
    device: Annotated[str, "cpu, cuda, cuda:1 … (default: cuda if available)"] = None
    precision: Annotated[Literal[PRECISIONS], "evaluation precision: fp32, or autocast to bf16 / fp16"] = "fp32"
    eval_batch_size: Annotated[int, "evaluation batch size (default 64 on a CPU, 256 on a GPU)"] = None
    workers: Annotated[int, "processes decoding images (default: the cores, at most 8; 0: in this process)"] = None
    cache_data: Annotated[bool, "keep the preprocessed images in a memory-mapped file in ladle's cache folder, so "
                                "later passes read no image file (default: on where the same images are read many "
                                "times: greedy, learned, season, grid)"] = None
    seed: Annotated[int, "seed of the data splits (and of the recipe, if it takes one)"] = 0
    max_length: Annotated[int, "text: truncate token sequences at this length (default: the model's, at most 512)"] = None
    text_column: Annotated[str, "text: the column of the texts (default: text, else sentence, else sentence1 "
                                "with sentence2 as its pair)"] = None
    text_pair_column: Annotated[str, "text: the column of a second text read with the first (a pair)"] = None
    label_column: Annotated[str, "text: the column of the labels (default: label); names are mapped through the "
                                 "model's label2id, else numbered in sorted order"] = None
    metric: Annotated[str, "score with your own function, package.module:function(model, batch) -> a score per "
                           "example (or one for the batch); higher is better, the split's score is the mean"] = None

    def __post_init__(self):
        object.__setattr__(self, "data", tuple(self.data or ()))
        for name, low in (("num_classes", 1), ("image_size", 1), ("eval_batch_size", 1), ("workers", 0),
                          ("max_length", 2)):
            value = getattr(self, name)
            if value is not None and value < low:
                from ladle.errors import LadleError

                raise LadleError(f"{name.replace('_', '-')}: must be at least {low}, got {value}")

    @classmethod
    def from_fields(cls, values: dict, where: str = "") -> TastingSpec:
        """A spec from flags or YAML fields, each checked against its declaration (one line naming a bad one)."""
        return cls(**validate(TASTING_OPTIONS, {k: v for k, v in values.items() if v is not None},
                              "the tasting options", where))

    def with_default_model(self, checkpoints) -> TastingSpec:
        """The spec with --model defaulting to the first checkpoint when that is a Hugging Face folder."""
        return self if self.model else self.replace(model=default_model(checkpoints))

    def replace(self, **changes) -> TastingSpec:
        return replace(self, **changes)

    def as_fields(self) -> dict:
        """The fields as plain values (lists for data), for manifests and YAML."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    def argv(self) -> list[str]:
        """The command-line words that give this spec (defaults left out); the device is where it ran, not what
        the soup is, so it is left out too."""
        return [w for p in TASTING_OPTIONS if p.name != "device" for w in p.argv(self.as_fields()[p.name])]

    def model_id(self, num_classes: int, preprocess: dict) -> str:
        """The model half of a stored evaluation's key: the model spec, its head size, the transform its inputs went
        through and the precision it ran at (the data's fingerprint and the BN policy are the other columns)."""
        what = {"model": self.model, "classes": num_classes, "precision": self.precision,
                "preprocess": {k: v for k, v in preprocess.items() if k != "origin"}}
        if self.metric:  # rows of another function's scores, never another metric's logits
            what["metric"] = self.metric
        return f"{self.model}|classes={num_classes}|" + hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def default_model(checkpoints) -> str | None:
    """The first checkpoint when it is a Hugging Face folder (its config and tokenizer or image processor say what
    the model is), else None."""
    from pathlib import Path

    first = Path(str(checkpoints[0])) if checkpoints else None
    return str(first) if first is not None and (first / "config.json").is_file() else None


TASTING_OPTIONS = params_of(TastingSpec, skip=())[0]


def tasting_options(*skip: str) -> list:
    """The declared options but `skip` (a command that has its own --bn, or no use for some of them)."""
    return [p for p in TASTING_OPTIONS if p.name not in skip]
TASTING_FIELDS = tuple(f.name for f in fields(TastingSpec))
