""""Will it soup?": the cheap similarity measures of two checkpoints, and the gain probability they predict.

Weights are always compared (L2 distance and cosine, BatchNorm running statistics left out; the cosine of task
vectors with a base). With a model and data, the predictions are compared too, on a few hundred images (symmetric
KL, disagreement, logit MSE, linear CKA). With a store of earlier grid results, a logistic regression of
"gain > 0" on the same measures (standardised) turns them into a probability; it is calibrated by construction on
the pairs it was fit on, and its cross-validated Brier score says how far to trust it. Without a store: the
measures beside the paper's reference correlations.

The measuring (weight Gram matrices, model outputs) and the reading of a stored grid live here, not in the grid
study that also uses them: analysis sits below studies, and importing the study from here made a circle.
"""

from __future__ import annotations

import math
import re

from ladle.errors import LadleError

BN_STATISTICS = re.compile(r"(^|\.)(running_mean|running_var|num_batches_tracked)$")


def pair_measures(a, b, *, base=None, tasting=None, examples: int = 300, **fields) -> dict[str, float]:
    """The similarity measures of two checkpoints (weights always; predictions when a tasting spec — or its fields
    model=…, data=… — gives a model and one data split, default split heldout)."""
    from ladle.spec import TastingSpec
    from ladle.evaluation.similarity import pairwise_from_gram, prediction_measures
    from ladle.soup.adapters import open_on_base

    paths = [str(a), str(b)]
    exclude = {k for k in open_on_base(paths[0], base).keys() if BN_STATISTICS.search(k)}
    evaluator, split = None, None
    if tasting is None and (fields.get("model") or fields.get("data")):
        data = fields.get("data")
        tasting = TastingSpec.from_fields(fields | ({"data": [data]} if isinstance(data, str) else {}))
    if tasting is not None:
        tasting = tasting.with_default_model([base, *paths] if base is not None else paths)
        if not tasting.model or len(tasting.data) != 1:
            raise LadleError("check --predict: the prediction measures need both --model and --data (one split)")
        evaluator, split = _evaluator(tasting)
        exclude = evaluator.bn_keys
    gram, task = weight_grams(paths, exclude, base=base)
    l2, cosine = pairwise_from_gram(gram)
    out = {"l2": float(l2[0, 1]), "cosine": float(cosine[0, 1])}
    if task is not None:
        out["task_cosine"] = float(pairwise_from_gram(task)[1][0, 1])
    if evaluator is not None:
        (la, lb), (fa, fb) = model_outputs(evaluator, split, paths, examples, base=base)
        out.update(prediction_measures(la, lb, fa, fb))
    return out


def _evaluator(tasting):
    from ladle.evaluation.tasting import resolve

    resolved = resolve(tasting, "heldout", cache_data=True)
    return resolved.evaluator(), next(iter(resolved.splits))


def weight_grams(paths: list[str], exclude: set[str], *, base=None, chunk: int = 1 << 20):
    """Gram matrices (float64) of the models' float weights, BatchNorm running statistics excluded, and of their
    task vectors when a base is given; streamed tensor by tensor, `chunk` elements at a time (memory: N × chunk)."""
    import torch

    from ladle.io.checkpoints import open_ingredient
    from ladle.soup.adapters import open_on_base

    ings = [open_on_base(p, base) for p in paths]  # LoRA adapters: the models they make of the base
    stock = open_ingredient(base) if base is not None else None
    n = len(ings)
    gram = torch.zeros(n, n, dtype=torch.float64)
    task = torch.zeros(n, n, dtype=torch.float64) if stock is not None else None
    for k in ings[0].keys():
        if k in exclude or k.endswith("num_batches_tracked") or not ings[0].get(k).is_floating_point():
            continue
        if stock is not None and k not in stock.keys():
            raise LadleError("the base has no such tensor", file=stock.name, key=k)
        flat = [ing.get(k).reshape(-1) for ing in ings]
        ref = stock.get(k).reshape(-1) if stock is not None else None
        for s in range(0, flat[0].numel(), chunk):
            x = torch.stack([f[s : s + chunk].double() for f in flat])
            gram += x @ x.T
            if ref is not None:
                x -= ref[s : s + chunk].double()
                task += x @ x.T
    return gram, task


def model_outputs(ev, split: str, paths, examples: int, base=None):
    """Each model's logits and penultimate features (the input of its classifier) on the first `examples` examples
    of a split (images, or texts read in their length-sorted batches and put back in order): what the prediction
    similarities compare."""
    import torch

    from ladle.evaluation.evaluator import in_example_order
    from ladle.models.encoder import classifier_of
    from ladle.soup.adapters import open_on_base

    data = ev.splits[split]
    if getattr(data, "task", "classify") == "lm":
        raise LadleError(f"check --predict: compares classifiers' predictions; {split} is a language model's corpus")
    part = data if len(data) <= examples else data.subset(range(examples), f"first {examples}")
    head = classifier_of(ev.model)
    captured = []
    hook = head.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0].detach().float().cpu()))
    logits, features = [], []
    try:
        for path in paths:
            ing = open_on_base(path, base)
            ev.prepare({k: ing.get(k) for k in ing.keys()}, source=path)
            captured.clear()
            with torch.inference_mode():
                out = [ev.forward(x, part) for x in ev.batches(part)]
            logits.append(in_example_order(part, torch.cat(out)))
            features.append(in_example_order(part, torch.cat([f.flatten(1) for f in captured])))
    finally:
        hook.remove()
    return logits, features


def choose_grid(store, grid: str | None = None) -> dict:
    """The grid asked for (a key or its prefix), or the store's only one."""
    grids = store.grids()
    if not grids:
        raise LadleError("no grid in this results store (run `ladle grid … --db FILE` first)", file=store.path)
    if grid is None:
        if len(grids) > 1:
            raise LadleError(f"{len(grids)} grids in this store: choose one with --grid "
                             f"({', '.join(g['grid'][:12] for g in grids)})", file=store.path)
        return grids[0]
    found = [g for g in grids if g["grid"].startswith(grid)]
    if len(found) != 1:
        raise LadleError(f"grid '{grid}' {'is ambiguous' if found else 'is not in this store'}", file=store.path)
    return found[0]


def pairs_from_store(store, *, grid: str | None = None, alpha: float = 0.5):
    """A grid's soups at one α, with their measures and the models' own figures, as a PairsTable."""
    from ladle.analysis.pairs import PairsTable

    chosen = choose_grid(store, grid)
    key = chosen["grid"]
    models = {r["model"]: r for r in store.grid_models(key)}
    measures = {(r["a"], r["b"]): r["measures"] for r in store.grid_measures(key)}
    soups = [r for r in store.grid_soups(key) if math.isclose(r["alpha"], alpha, abs_tol=1e-9)]
    if not soups:
        have = sorted({r["alpha"] for r in store.grid_soups(key)})
        raise LadleError(f"grid {key[:12]} has no soups at α = {alpha}"
                         + (f" (it has α = {', '.join(f'{a:g}' for a in have)})" if have else ""), file=store.path)
    name = {sha: r["name"] for sha, r in models.items()}

    def value(x):
        return None if x is None or (isinstance(x, float) and math.isnan(x)) else x

    pairs = [{"a": name[r["a"]], "b": name[r["b"]], "soup_accuracy": r["accuracy"], "soup_loss": value(r["loss"]),
              "soup_corrupted_accuracy": value(r["corrupted_accuracy"]),
              "soup_corrupted_loss": value(r["corrupted_loss"]),
              "measures": {k: value(v) for k, v in measures.get((r["a"], r["b"]), {}).items()}} for r in soups]
    table_models = {r["name"]: {"accuracy": r["accuracy"], "loss": value(r["loss"]),
                                "corrupted_accuracy": value(r["corrupted_accuracy"]),
                                "corrupted_loss": value(r["corrupted_loss"]), "branch_epoch": r["branch_epoch"],
                                "variant": r["variant"]} for r in models.values()}
    return PairsTable(pairs, table_models, chosen["settings"].get("num_classes"), f"{store.path} (grid {key[:12]})")


def predict_gain(measures: dict[str, float], store, *, grid: str | None = None, alpha: float = 0.5) -> dict:
    """P(soup gain > 0) from a logistic fit on a stored grid's pairs, on the measures both have."""
    import numpy as np

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
