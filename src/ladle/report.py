"""Tables and plots: what people would rather see than read."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402


def format_trace(trace: dict) -> str:
    """The decision trace of an evaluation-driven recipe as a table ('' for recipes without one)."""
    lines = []
    if "greedy" in trace:
        g = trace["greedy"]
        lines.append(f"greedy soup ({g['metric']} on {g['split']}, accept if {'not worse' if g['accept'] == 'ge' else 'better'})")
        lines.append(f"{'pass':>4}  {'candidate':<40}{'own':>8}{'soup':>8}  accepted  size")
        for s in g["steps"]:
            name = s["candidate"] if len(s["candidate"]) <= 39 else "…" + s["candidate"][-38:]
            lines.append(f"{s['pass']:>4}  {name:<40}{100 * s['ingredient_score']:>8.2f}{100 * s['soup_score']:>8.2f}  "
                         f"{'yes' if s['accepted'] else 'no':<8}  {s['soup_size']:>4}")
    if "learned" in trace:
        learned = trace["learned"]
        lines.append(f"learned soup (per {learned['per']}): temperature {learned['temperature']:.3f}, "
                     f"loss per epoch {', '.join(f'{x:.4f}' for x in learned['loss_per_epoch'])}")
    if "season" in trace:
        chosen = trace["season"]["chosen"]
        lines.append(f"seasoning: {trace['season']['candidates']} candidates ({trace['season']['search']}) on "
                     f"{trace['season']['shots']} shots; chosen accuracy {100 * chosen['accuracy']:.2f}%")
    return "\n".join(lines)


def plot_greedy(trace: dict, path: Path) -> None:
    """Soup score after each candidate, accepted ones marked: how the greedy soup grew."""
    steps = trace["greedy"]["steps"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = range(len(steps))
    ax.plot(xs, [100 * s["soup_score"] for s in steps], "-", color="0.6", zorder=1)
    ax.scatter(xs, [100 * s["soup_score"] for s in steps], c=["tab:green" if s["accepted"] else "tab:red" for s in steps],
               zorder=2, label="candidate soup (green: kept)")
    ax.scatter(xs, [100 * s["ingredient_score"] for s in steps], marker="x", color="tab:blue", label="candidate alone")
    ax.set_xticks(list(xs), [f"#{s['index']}" for s in steps])
    ax.set_xlabel("candidates in rank order")
    ax.set_ylabel(f"held-out {trace['greedy']['metric']} (%)")
    ax.set_title("Greedy soup")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_interpolation(alphas: list[float], curves: dict[str, list[float]], path: Path, title: str) -> None:
    """Accuracy along the straight line between two ingredients (α = 0: the first, α = 1: the second)."""
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
    splits = list(rows[0][1])
    fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(rows), 3.8))
    width = 0.8 / len(splits)
    for j, split in enumerate(splits):
        values = [100 * r[1][split] for r in rows]
        bars = ax.bar([i + j * width for i in range(len(rows))], values, width, label=split)
        ax.bar_label(bars, fmt="%.1f", fontsize=6)
    ax.set_xticks([i + width * (len(splits) - 1) / 2 for i in range(len(rows))], [r[0] for r in rows], rotation=20, fontsize=8)
    low = min(100 * v for r in rows for v in r[1].values())
    ax.set_ylim(max(0, low - 5), 100)
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=8)
    _save(fig, path)


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
