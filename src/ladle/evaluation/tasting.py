"""From a tasting spec (ladle.spec.TastingSpec) to what tastes: the model with its own preprocessing, the data splits
(streamed, or from the preprocessed cache), an Evaluator and a Taster. What `ladle taste`, `ladle cook
greedy|learned|season|self-season`, `grid`, `check --predict` and the studies call; heavy libraries are imported
inside, so reading the declarations is cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

from ladle.errors import LadleError
from ladle.spec import TastingSpec

__all__ = ["Tasting", "TastingSpec", "default_device", "logit_cache", "make_scorer",
           "resolve"]


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class Tasting:
    """A spec resolved: the model spec (head size, preprocessing), the named splits, BN recalibration data."""

    spec: TastingSpec
    model: object  # ladle.models.ModelSpec
    splits: dict  # "SOURCE:split" -> ImageSet | StreamSet, in the order given
    bn_data: object | None
    device: str

    @property
    def model_id(self) -> str:
        return self.spec.model_id(self.model.num_classes, self.model.preprocess.describe())

    def evaluator(self, *, bn: str | None = None, progress: bool = False, store=None, splits: dict | None = None,
                  net=None):
        """An Evaluator of this tasting, around `net` (default: the model built now), its class count checked
        against the first split; evaluators of several BatchNorm policies can share one model object."""
        from ladle.evaluation.evaluator import Evaluator, check_num_classes, user_metric

        net = net if net is not None else self.model.build()
        check_num_classes(net, next(iter(self.splits.values())))
        evaluator = Evaluator(net, splits if splits is not None else self.splits, mean=self.model.mean,
                              std=self.model.std, device=self.device, batch_size=self.spec.eval_batch_size,
                              bn=bn or self.spec.bn, bn_data=self.bn_data, progress=progress, store=store,
                              model_id=self.model_id, precision=self.spec.precision, workers=self.spec.workers,
                              metric=user_metric(self.spec.metric) if self.spec.metric else None)
        evaluator.record = {"transform": self.model.preprocess.describe(), "precision": self.spec.precision}
        return evaluator


def resolve(spec: TastingSpec, default_split: str, *, cache_data: bool = False, recalibrate: bool | None = None,
            progress: bool = False) -> Tasting:
    """Model spec and data splits of a tasting spec. The data go through the model's own preprocessing (at
    `image_size` if given); photos stream unless the spec (or, when it says nothing, `cache_data`) asks for the
    preprocessed cache. The head's class count defaults to the first split's; recalibration data (when `recalibrate`,
    default: the spec's bn is recalibrate) to the first source's train split."""
    from ladle.data import StreamSet, open_data, parse_spec
    from ladle.data.text import TextColumns
    from ladle.models import model_spec

    if not spec.model:
        raise LadleError("model: no model given (--model)")
    if not spec.data:
        raise LadleError("data: no data given to taste on (--data)")
    model = model_spec(spec.model, spec.num_classes, spec.image_size, spec.max_length)
    cached = spec.cache_data if spec.cache_data is not None else cache_data
    columns = TextColumns(spec.text_column, spec.text_pair_column, spec.label_column)

    def opened(text: str, split: str):
        data = open_data(text if parse_spec(text)[1] else f"{text}:{split}", preprocess=model.preprocess,
                         seed=spec.seed, workers=spec.workers, columns=columns)
        return data.cached(progress=progress) if cached and isinstance(data, StreamSet) else data

    splits = {}
    for text in spec.data:
        name = split_name(text, default_split)
        if name not in splits:  # a source given twice (data per ingredient) is opened once
            splits[name] = opened(text, default_split)
    own_head = getattr(model.preprocess, "num_labels", None)  # a text classifier folder's own head
    model.num_classes = spec.num_classes or own_head or next(iter(splits.values())).num_classes
    bn_data = None
    if recalibrate if recalibrate is not None else spec.bn == "recalibrate":
        bn_data = opened(spec.bn_data or f"{parse_spec(spec.data[0])[0]}:train", "train")
    return Tasting(spec, model, splits, bn_data, spec.device or default_device())


def split_name(text: str, default_split: str) -> str:
    """What a `--data SOURCE[:split]` is called among a tasting's splits."""
    from ladle.data import parse_spec

    source, split = parse_spec(text)
    return f"{source}:{split or default_split}"


def make_scorer(spec: TastingSpec | str | None = None, data: list[str] | None = None, *, split: str = "heldout",
                progress: bool = False, **fields):
    """A Taster from a tasting spec (or its fields: `make_scorer("timm:resnet18", ["imgs:heldout"], image_size=…)`):
    the model and the data built once and checked against each other; photos are read from the preprocessed cache
    unless the spec says `cache_data: false`, since a recipe tastes the same images many times."""
    from ladle.evaluation.scorer import Taster

    if not isinstance(spec, TastingSpec):
        spec = TastingSpec.from_fields({"model": spec, "data": data, **fields})
    tasting = resolve(spec, split, cache_data=True, progress=progress)
    evaluator = tasting.evaluator(progress=progress, store=logit_cache())
    taster = Taster(evaluator, split=next(iter(tasting.splits)))
    taster.spec = spec  # what remakes the soup (the reproduce command in manifests and model cards)
    taster.given_splits = [split_name(text, split) for text in spec.data]  # Fisher, RegMean: data per ingredient
    return taster


def logit_cache():
    """The persistent logit cache (a results store in ladle's cache folder): a second greedy, learned or seasoned
    soup of the same files on the same data evaluates nothing twice. `LADLE_LOGIT_CACHE=0` turns it off."""
    import os

    from ladle.io.hashing import cache_root
    from ladle.results.store import ResultStore

    if os.environ.get("LADLE_LOGIT_CACHE", "1") == "0":
        return None
    try:
        return ResultStore(cache_root() / "logits.sqlite")
    except (LadleError, OSError):
        return None  # an unwritable or damaged cache is no reason to fail a soup: evaluate without it
