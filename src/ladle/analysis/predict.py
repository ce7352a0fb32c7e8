""""Will it soup?": the cheap similarity measures of two checkpoints, and the gain probability they predict.

Weights are always compared (L2 distance and cosine, BatchNorm running statistics left out; the cosine of task
vectors with a base). With a model and data, the predictions are compared too, on a few hundred images (symmetric
KL, disagreement, logit MSE, linear CKA). With a store of earlier grid results, a logistic regression of
"gain > 0" on the same measures (standardised) turns them into a probability; it is calibrated by construction on
the pairs it was fit on, and its cross-validated Brier score says how far to trust it. Without a store: the
measures beside the paper's reference correlations.
"""

from __future__ import annotations

import math
import re

from ladle.errors import LadleError

BN_STATISTICS = re.compile(r"(^|\.)(running_mean|running_var|num_batches_tracked)$")


def pair_measures(a, b, *, base=None, model: str | None = None, data: str | None = None, examples: int = 300,
                  image_size: int = 64, num_classes: int | None = None, device: str | None = None,
                  seed: int = 0) -> dict[str, float]:
    """The similarity measures of two checkpoints (weights always; predictions when model and data are given)."""
    from ladle.evaluation.similarity import pairwise_from_gram, prediction_measures
    from ladle.io.checkpoints import open_ingredient
    from ladle.studies.grid import model_outputs, weight_grams

    paths = [str(a), str(b)]
    exclude = {k for k in open_ingredient(paths[0]).keys() if BN_STATISTICS.search(k)}
    evaluator, split = None, None
    if model is not None or data is not None:
        if model is None or data is None:
            raise LadleError("check --predict: the prediction measures need both --model and --data")
        evaluator, split = _evaluator(model, data, image_size, num_classes, device, seed)
        exclude = evaluator.bn_keys
    gram, task = weight_grams(paths, exclude, base=base)
    l2, cosine = pairwise_from_gram(gram)
    out = {"l2": float(l2[0, 1]), "cosine": float(cosine[0, 1])}
    if task is not None:
        out["task_cosine"] = float(pairwise_from_gram(task)[1][0, 1])
    if evaluator is not None:
        (la, lb), (fa, fb) = model_outputs(evaluator, split, paths, examples)
        out.update(prediction_measures(la, lb, fa, fb))
    return out


def _evaluator(model, data, image_size, num_classes, device, seed):
    from ladle.evaluation.evaluator import Evaluator, check_num_classes
    from ladle.evaluation.tasting import default_device, load_model_and_data

    spec, splits, _ = load_model_and_data(model, [data], "heldout", num_classes=num_classes, image_size=image_size,
                                          seed=seed)
    (split, images), = splits.items()
    net = spec.build()
    check_num_classes(net, images, (images.x[:1] - 0.5) / 0.5)
    return Evaluator(net, splits, mean=spec.mean, std=spec.std, device=device or default_device()), split


def predict_gain(measures: dict[str, float], store, *, grid: str | None = None, alpha: float = 0.5) -> dict:
    """P(soup gain > 0) from a logistic fit on a stored grid's pairs, on the measures both have."""
    import numpy as np

    from ladle.studies.grid import pairs_from_store

    table = pairs_from_store(store, grid=grid, alpha=alpha)
    names = [m for m in measures if _finite(measures[m]) and all(_finite(p["measures"].get(m)) for p in table.pairs)]
    if not names:
        raise LadleError(f"the grid's pairs share no measure with this pair (it has "
                         f"{', '.join(sorted(table.pairs[0]['measures'])) or 'none'}; pass --model and --data "
                         f"for the prediction measures)", file=store.path)
    x = np.array([[p["measures"][m] for m in names] for p in table.pairs], dtype=float)
    acc = {name: m["accuracy"] for name, m in table.models.items()}
    y = np.array([p["soup_accuracy"] - max(acc[p["a"]], acc[p["b"]]) > 0 for p in table.pairs], dtype=int)
    out = {"grid": table.source, "measures_used": names, "pairs": len(y), "gaining": int(y.sum())}
    if y.min() == y.max():  # one class only: the base rate is all there is to say
        out.update(probability=float(y.mean()), note=("every" if y[0] else "no") + " pair of the grid gains: no fit, "
                   "the base rate")
        return out
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    fit = make_pipeline(StandardScaler(), LogisticRegression())
    folds = min(5, int(y.sum()), int(len(y) - y.sum()))
    if folds >= 2:
        cv = StratifiedKFold(folds, shuffle=True, random_state=0)
        held_out = cross_val_predict(fit, x, y, cv=cv, method="predict_proba")[:, 1]
        out["brier_cv"] = float(np.mean((held_out - y) ** 2))
        out["brier_base_rate"] = float(np.mean((y.mean() - y) ** 2))
    fit.fit(x, y)
    out["probability"] = float(fit.predict_proba(np.array([[measures[m] for m in names]]))[0, 1])
    return out


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def format_prediction(measures: dict, prediction: dict | None) -> str:
    from ladle.analysis.stats import PAPER, paper_spearman

    lines = ["will it soup?", "  measure        value     paper: Spearman with gain"]
    for name, value in measures.items():
        ref = paper_spearman(name)
        lines.append(f"  {name:<13} {value:>9.4g}    {'' if ref is None else f'{ref:+.2f}'}")
    if prediction is None:
        lines.append("  no grid results (--db) to fit a probability on: the paper's correlations say which way each "
                     "measure points")
        lines.append(f"  (paper: {PAPER['setting']})")
        return "\n".join(lines)
    lines.append(f"  P(gain > 0) = {prediction['probability']:.2f}, from {prediction['pairs']} pairs of "
                 f"{prediction['grid']} ({prediction['gaining']} gaining) on {', '.join(prediction['measures_used'])}")
    if "brier_cv" in prediction:
        lines.append(f"  cross-validated Brier score {prediction['brier_cv']:.3f} "
                     f"(predicting the base rate: {prediction['brier_base_rate']:.3f})")
    if "note" in prediction:
        lines.append(f"  note: {prediction['note']}")
    return "\n".join(lines)
