"""Robustness numbers over a corruption grid: mean accuracy, mCE, relative mCE, relative robustness, soup gain.

A grid maps (corruption, severity) to an accuracy. Following Hendrycks & Dietterich (2019), with E the
error (1 − accuracy):
  CE_c          = Σ_s E(c, s) / Σ_s E_baseline(c, s)                        mCE = mean over c of CE_c
  relative CE_c = Σ_s (E(c, s) − E_clean) / Σ_s (E_baseline(c, s) − E_baseline_clean)
  relative robustness = clean accuracy − mean corrupted accuracy (the accuracy the shift costs)
Both are printed ×100, as in the paper. The baseline is a model of the study (by default the ingredient
with the best clean accuracy: mCE < 100 means more robust than it) or, for ImageNet data, the AlexNet
errors published with ImageNet-C.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass

from ladle.errors import LadleError
from ladle.evaluation.gain import best_single, soup_gain

Grid = dict[tuple[str, int], float]

# AlexNet top-1 error per ImageNet-C corruption and severity 1..5 (Hendrycks & Dietterich 2019; the same
# figures normalise mCE in their code and in google/robustness_metrics); clean error 43.45 %.
ALEXNET_ERRORS = {
    "gaussian_noise": (0.69528, 0.82542, 0.93554, 0.98138, 0.99452),
    "shot_noise": (0.71224, 0.85108, 0.93574, 0.98182, 0.99146),
    "impulse_noise": (0.78374, 0.89808, 0.9487, 0.9872, 0.99548),
    "defocus_blur": (0.65624, 0.73202, 0.85036, 0.91364, 0.94714),
    "glass_blur": (0.64308, 0.75054, 0.88806, 0.91622, 0.93344),
    "motion_blur": (0.5843, 0.70048, 0.82108, 0.8975, 0.92638),
    "zoom_blur": (0.70008, 0.76992, 0.80784, 0.84198, 0.87198),
    "snow": (0.71726, 0.88392, 0.86468, 0.9187, 0.94952),
    "frost": (0.6139, 0.79734, 0.8879, 0.89942, 0.9343),
    "fog": (0.67474, 0.7605, 0.84378, 0.8726, 0.945),
    "brightness": (0.4514, 0.48502, 0.54048, 0.62166, 0.7244),
    "contrast": (0.64548, 0.7615, 0.88874, 0.9776, 0.9927),
    "elastic_transform": (0.52596, 0.70116, 0.55686, 0.64076, 0.80554),
    "pixelate": (0.52218, 0.5462, 0.73728, 0.87092, 0.91262),
    "jpeg_compression": (0.51002, 0.54718, 0.57294, 0.65458, 0.74778),
}
ALEXNET_CLEAN_ERROR = 0.4345


def mean_accuracy(grid: Grid) -> float:
    return sum(grid.values()) / len(grid) if grid else math.nan


def per_corruption(grid: Grid) -> dict[str, float]:
    """Mean accuracy over the severities of each corruption."""
    names = dict.fromkeys(c for c, _ in grid)
    return {c: mean_accuracy({k: v for k, v in grid.items() if k[0] == c}) for c in names}


def corruption_errors(grid: Grid, baseline: Grid) -> dict[str, float]:
    """CE_c = Σ_s E / Σ_s E_baseline over the severities both grids hold (nan where the baseline never errs)."""
    out = {}
    for c in per_corruption(grid):
        cells = [k for k in grid if k[0] == c]
        missing = [k for k in cells if k not in baseline]
        if missing:
            raise LadleError(f"mce: the baseline has no accuracy for {missing[0][0]} at severity {missing[0][1]}")
        base = sum(1 - baseline[k] for k in cells)
        out[c] = sum(1 - grid[k] for k in cells) / base if base > 0 else math.nan
    return out


def mce(grid: Grid, baseline: Grid) -> float:
    """Mean corruption error ×100, relative to the baseline."""
    ce = corruption_errors(grid, baseline)
    return 100 * sum(ce.values()) / len(ce) if ce else math.nan


def relative_mce(grid: Grid, clean: float, baseline: Grid, baseline_clean: float) -> float:
    """Mean of Σ_s (E − E_clean) / Σ_s (E_base − E_base_clean), ×100: how much the shift, not the task, costs."""
    ratios = []
    for c in per_corruption(grid):
        cells = [k for k in grid if k[0] == c]
        base = sum((1 - baseline[k]) - (1 - baseline_clean) for k in cells)
        own = sum((1 - grid[k]) - (1 - clean) for k in cells)
        ratios.append(own / base if base > 0 else math.nan)
    return 100 * sum(ratios) / len(ratios) if ratios else math.nan


def alexnet_baseline(cells) -> tuple[float, Grid]:
    """AlexNet's clean accuracy and its accuracy grid on the given ImageNet-C cells."""
    grid = {}
    for c, s in cells:
        if c not in ALEXNET_ERRORS:
            raise LadleError(f"mce-baseline: AlexNet errors are published for the 15 ImageNet-C corruptions only, not '{c}'")
        grid[(c, s)] = 1 - ALEXNET_ERRORS[c][s - 1]
    return 1 - ALEXNET_CLEAN_ERROR, grid


@dataclass
class ModelShift:
    """One model's clean accuracy and its accuracy on every corrupted cell."""

    name: str
    kind: str  # ingredient | soup | ensemble
    clean: float
    grid: Grid

    @property
    def corrupted(self) -> float:
        return mean_accuracy(self.grid)


@dataclass
class ShiftReport:
    """Soups beside their ingredients on one clean split and its corrupted copies."""

    data: str
    suite: str
    models: list[ModelShift]
    baseline: str = "best"  # best | alexnet | a model's name

    def ingredients(self) -> list[ModelShift]:
        return [m for m in self.models if m.kind == "ingredient"]

    def cells(self) -> list[tuple[str, int]]:
        return list(self.models[0].grid) if self.models else []

    def best_single(self) -> tuple[float, float]:
        """Best clean and best mean-corrupted accuracy among the ingredients (each its own maximum)."""
        ings = self.ingredients()
        return best_single(m.clean for m in ings), best_single(m.corrupted for m in ings)

    def baseline_model(self) -> tuple[str, float, Grid]:
        if self.baseline == "alexnet":
            return ("AlexNet (ImageNet-C paper)", *alexnet_baseline(self.cells()))
        if self.baseline == "best":
            pool = self.ingredients() or self.models
            if not pool:
                raise LadleError("mce-baseline: no models to compare with")
            m = max(pool, key=lambda m: m.clean)
            return m.name, m.clean, m.grid
        for m in self.models:
            if self.baseline in (m.name, m.name.rsplit("/", 1)[-1]):
                return m.name, m.clean, m.grid
        raise LadleError(f"mce-baseline: '{self.baseline}' is none of the models tasted (or best, alexnet)")

    def summary(self) -> list[dict]:
        """One row per model: clean, corrupted, soup gains, mCE, relative mCE, relative robustness."""
        ings = self.ingredients()
        _, base_clean, base_grid = self.baseline_model()
        rows = []
        for m in self.models:
            gains = m.kind != "ingredient"
            rows.append({"model": m.name, "kind": m.kind, "clean": m.clean, "corrupted": m.corrupted,
                         "gain_clean": soup_gain(m.clean, (i.clean for i in ings)) if gains else None,
                         "gain_corrupted": soup_gain(m.corrupted, (i.corrupted for i in ings)) if gains else None,
                         "mce": mce(m.grid, base_grid),
                         "relative_mce": relative_mce(m.grid, m.clean, base_grid, base_clean),
                         "relative_robustness": m.clean - m.corrupted})
        return rows

    def format(self) -> str:
        base_name = self.baseline_model()[0]
        head = (f"{'model':<34}{'kind':<11}{'clean':>8}{'gain':>7}{'corrupt':>9}{'gain':>7}"
                f"{'mCE':>8}{'rel mCE':>9}{'clean−c':>9}")
        lines = [f"{self.data} under {self.suite}: {len(self.cells())} corrupted sets "
                 f"(severities {', '.join(str(s) for s in sorted({s for _, s in self.cells()}))})", head, "-" * len(head)]
        for r in self.summary():
            label = r["model"] if len(r["model"]) <= 33 else "…" + r["model"][-32:]
            gain = (lambda v: f"{100 * v:+7.2f}" if v is not None and v == v else " " * 7)  # none without ingredients
            ratio = (lambda v, w: f"{v:>{w}.1f}" if v == v else f"{'—':>{w}}")  # 0/0: the baseline lost nothing
            lines.append(f"{label:<34}{r['kind'][:10]:<11}{100 * r['clean']:>8.2f}{gain(r['gain_clean'])}"
                         f"{100 * r['corrupted']:>9.2f}{gain(r['gain_corrupted'])}{ratio(r['mce'], 8)}"
                         f"{ratio(r['relative_mce'], 9)}{100 * r['relative_robustness']:>9.2f}")
        best_clean, best_corrupted = self.best_single()
        if best_clean == best_clean:  # there are ingredients to compare with
            lines.append(f"{'best single ingredient':<45}{100 * best_clean:>8.2f}{'':>7}{100 * best_corrupted:>9.2f}")
        lines.append(f"accuracies in %; gain = soup gain against the best ingredient on that column; "
                     f"mCE and relative mCE ×100 relative to {base_name}")
        return "\n".join(lines)

    def per_corruption_table(self) -> str:
        """Accuracy per corruption (mean over severities), models as columns."""
        names = list(per_corruption(self.models[0].grid)) if self.models else []
        short = [m.name.rsplit("/", 1)[-1][:12] for m in self.models]
        lines = [f"{'corruption':<20}" + "".join(f"{s:>13}" for s in short)]
        per = [per_corruption(m.grid) for m in self.models]
        for c in names:
            lines.append(f"{c:<20}" + "".join(f"{100 * p[c]:>13.2f}" for p in per))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"data": self.data, "suite": self.suite, "mce_baseline": self.baseline_model()[0],
                "summary": self.summary(),
                "cells": [{"model": m.name, "kind": m.kind, "corruption": c, "severity": s, "accuracy": a}
                          for m in self.models for (c, s), a in m.grid.items()]}

    def to_csv(self) -> tuple[str, str]:
        """(summary CSV, one row per model; cells CSV, one row per model × corruption × severity)."""
        summary, cells = io.StringIO(), io.StringIO()
        rows = self.summary()
        w = csv.DictWriter(summary, fieldnames=list(rows[0]) if rows else ["model"], lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        w = csv.writer(cells, lineterminator="\n")
        w.writerow(["model", "kind", "corruption", "severity", "accuracy"])
        for m in self.models:
            w.writerows([m.name, m.kind, c, s, a] for (c, s), a in m.grid.items())
        return summary.getvalue(), cells.getvalue()
