"""Building a scorer from specs (model spec, data specs): what `ladle cook greedy|learned|season` and the studies
call. Its signature declares the tasting options once (CLI flags and YAML fields are read from it); heavy
libraries are imported inside, so reading the declaration is cheap.
"""

from __future__ import annotations

from typing import Annotated, Literal

from ladle.errors import LadleError

BN_POLICIES = ("average", "recalibrate", "first")


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_splits(data: list[str], default_split: str, image_size: int = 64, seed: int = 0) -> dict:
    """Data specs -> {"SOURCE:split": ImageSet}, in the order given."""
    from ladle.data import load_data, parse_spec

    out = {}
    for spec in data:
        source, split = parse_spec(spec)
        name = f"{source}:{split or default_split}"
        out[name] = load_data(name, image_size=image_size, seed=seed)
    return out


def load_model_and_data(model: str, data: list[str], default_split: str, *, num_classes: int | None = None,
                        image_size: int = 64, bn_data: str | None = None, seed: int = 0, recalibrate: bool = False):
    """(model spec, {name: split}, BatchNorm recalibration data or None) from specs; the head's class count
    defaults to the first split's, the recalibration data to the first source's train split."""
    from ladle.data import load_data, parse_spec
    from ladle.models import model_spec

    splits = load_splits(data, default_split, image_size, seed)
    if not splits:
        raise LadleError("data: no data given to taste on (--data)")
    spec = model_spec(model, num_classes or next(iter(splits.values())).num_classes)
    bn_set = None
    if recalibrate:
        bn_set = load_data(bn_data or f"{parse_spec(data[0])[0]}:train", image_size=image_size, seed=seed)
    return spec, splits, bn_set


def make_scorer(
    model: Annotated[str, "efficientnet-lite0, timm:NAME, an HF directory or package.module:function"],
    data: Annotated[list[str], "the data to taste on: SOURCE[:split] (repeatable; default split per recipe)"],
    num_classes: Annotated[int, "classes of the model's head (default: the data's)"] = None,
    image_size: Annotated[int, "input resolution"] = 64,
    bn: Annotated[Literal[BN_POLICIES], "BatchNorm statistics of soups: averaged, recomputed on --bn-data, or the first ingredient's"] = "average",
    bn_data: Annotated[str, "data for --bn recalibrate (default: the data's train split)"] = None,
    device: Annotated[str, "cpu, cuda, cuda:1 … (default: cuda if available)"] = None,
    eval_batch_size: Annotated[int, "evaluation batch size (default 64 on a CPU, 256 on a GPU)"] = None,
    seed: Annotated[int, "seed of the data splits (and of the recipe, if it takes one)"] = 0,
    *, split: str = "heldout", progress: bool = False,
):
    """A Taster from specs: builds the model and the data once, checks that they fit each other."""
    from ladle.evaluation.evaluator import Evaluator, check_num_classes
    from ladle.evaluation.scorer import Taster

    spec, splits, bn_set = load_model_and_data(model, data, split, num_classes=num_classes, image_size=image_size,
                                               bn_data=bn_data if bn == "recalibrate" else None, seed=seed,
                                               recalibrate=bn == "recalibrate")
    net = spec.build()
    check_num_classes(net, next(iter(splits.values())))
    model_id = f"{model}|classes={num_classes or next(iter(splits.values())).num_classes}"
    evaluator = Evaluator(net, splits, mean=spec.mean, std=spec.std, device=device or default_device(),
                          batch_size=eval_batch_size, bn=bn, bn_data=bn_set, progress=progress,
                          store=logit_cache(), model_id=model_id)
    taster = Taster(evaluator, split=next(iter(splits)))
    # what the tasting was given, for the command that remakes the soup (the device is where it ran, not what it is)
    taster.options = {"model": model, "data": list(data), "num_classes": num_classes, "image_size": image_size,
                      "bn": bn, "bn_data": bn_data, "eval_batch_size": eval_batch_size, "seed": seed}
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


def _tasting_options():
    from ladle.soup.schema import params_of

    return params_of(make_scorer, skip=("split", "progress"))[0]


TASTING_OPTIONS = _tasting_options()  # the declared options, read once: CLI flags and YAML fields come from these
