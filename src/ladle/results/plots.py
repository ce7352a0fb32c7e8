"""Plots: what people would rather see than read. matplotlib is imported on first use (files only, no screen)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_greedy(trace: dict, path: Path) -> None:
    """Soup score after each candidate, accepted ones marked: how the greedy soup grew."""
    plt = _pyplot()
    steps = trace["greedy"]["steps"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = range(len(steps))
    scored = [(x, s) for x, s in zip(xs, steps) if s["soup_score"] is not None]
    ax.plot([x for x, _ in scored], [100 * s["soup_score"] for _, s in scored], "-", color="0.6", zorder=1)
    ax.scatter([x for x, _ in scored], [100 * s["soup_score"] for _, s in scored],
               c=["tab:green" if s["accepted"] else "tab:red" for _, s in scored],
               zorder=2, label="candidate soup (green: kept)")
    stopped = [x for x, s in zip(xs, steps) if s["soup_score"] is None]
    if stopped:  # no score: its evaluation stopped once it could not be kept; drawn at the bar it missed
        bar = [100 * trace["greedy"]["final_score"]] * len(stopped)
        ax.scatter(stopped, bar, marker="v", color="tab:red", zorder=2, label="stopped early (below the soup)")
    ax.scatter(xs, [100 * s["ingredient_score"] for s in steps], marker="x", color="tab:blue", label="candidate alone")
    ax.set_xticks(list(xs), [f"#{s['index']}" for s in steps])
    ax.set_xlabel("candidates in rank order")
    ax.set_ylabel(f"held-out {trace['greedy']['metric']} (%)")
    ax.set_title("Greedy soup")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_interpolation(alphas: list[float], curves: dict[str, list[float]], path: Path, title: str) -> None:
    """Accuracy along the straight line between two ingredients (α = 0: the first, α = 1: the second)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, values in curves.items():
        ax.plot(alphas, [100 * v for v in values], "o-", label=name)
    ax.set_xlabel("α")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_accuracy_table(rows: list[tuple[str, dict[str, float]]], path: Path) -> None:
    """Grouped bars: each model on each split."""
    plt = _pyplot()
    splits = list(rows[0][1])
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(rows), 3.8))
    width = 0.8 / len(splits)
    for j, split in enumerate(splits):
        values = [100 * r[1][split] for r in rows]
        bars = ax.bar([i + j * width for i in range(len(rows))], values, width, label=split)
        ax.bar_label(bars, fmt="%.1f", fontsize=6)
    ax.set_xticks([i + width * (len(splits) - 1) / 2 for i in range(len(rows))], [r[0] for r in rows], rotation=20, fontsize=8)
    low = min((100 * v for r in rows for v in r[1].values() if v == v), default=0)  # nan: not measured
    ax.set_ylim(max(0, low - 5), 100)
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_corruption_heatmaps(models, path: Path, title: str) -> None:
    """One corruption × severity accuracy heatmap per model, on one colour scale."""
    plt = _pyplot()
    import math

    import numpy as np

    names = list(dict.fromkeys(c for c, _ in models[0].grid))
    severities = sorted({s for _, s in models[0].grid})
    cols = min(5, len(models))
    rows = math.ceil(len(models) / cols)
    size = (1.5 + cols * (1.2 + 0.45 * len(severities)), 0.5 + rows * (1.1 + 0.28 * len(names)))
    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False, sharey=True, layout="constrained")
    values = [100 * a for m in models for a in m.grid.values()]
    vmin, vmax = min(values), max(values)
    for ax, m in zip(axes.flat, models):
        grid = np.array([[100 * m.grid.get((c, s), float("nan")) for s in severities] for c in names])
        image = ax.imshow(grid, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_xticks(range(len(severities)), [str(s) for s in severities], fontsize=7)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xlabel("severity", fontsize=7)
        label = m.name.rsplit("/", 1)[-1]
        ax.set_title(f"{label[:28]}\n{m.kind}, mean {100 * m.corrupted:.1f}%", fontsize=8)
        if len(severities) * len(names) <= 60:
            for (i, j), v in np.ndenumerate(grid):
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=6, color="w" if v < (vmin + vmax) / 2 else "k")
    for ax in list(axes.flat)[len(models):]:
        ax.axis("off")
    fig.colorbar(image, ax=axes, shrink=0.8, label="accuracy (%)")
    fig.suptitle(title, fontsize=9)
    _save(fig, path, tight=False)


def plot_severity_curves(report, path: Path, highlight: dict[str, str] | None = None) -> None:
    """Mean accuracy over corruptions at each severity (0 = clean): soups and ensemble against the best single.

    `highlight` maps labels to model names to draw in colour; the other ingredients are thin grey lines.
    """
    plt = _pyplot()
    severities = sorted({s for _, s in report.cells()})

    def curve(m):
        return [100 * m.clean] + [100 * sum(a for (c, s), a in m.grid.items() if s == sev) /
                                  sum(1 for (c, s) in m.grid if s == sev) for sev in severities]

    by_name = {m.name: m for m in report.models}
    if highlight is None:
        best = max(report.ingredients(), key=lambda m: m.clean, default=None)
        highlight = ({"best single": best.name} if best else {}) | {m.name: m.name for m in report.models if m.kind != "ingredient"}
    fig, ax = plt.subplots(figsize=(6, 3.8))
    xs = [0] + severities
    shown = set(highlight.values())
    for m in report.ingredients():
        if m.name not in shown:
            ax.plot(xs, curve(m), "-", color="0.8", lw=0.8, zorder=1)
    for label, name in highlight.items():
        if name in by_name:
            ax.plot(xs, curve(by_name[name]), "o-", label=label.rsplit("/", 1)[-1][:40], zorder=2)
    ax.set_xticks(xs, ["clean"] + [str(s) for s in severities])
    ax.set_xlabel("severity")
    ax.set_ylabel("accuracy (%), mean over corruptions")
    ax.set_title(f"{report.suite} on {report.data} (grey: other ingredients)", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, path)


def _save(fig, path: Path, tight: bool = True) -> None:
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
