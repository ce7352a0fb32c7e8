"""`ladle analyze --report DIR`: the analysis as pictures, JSON and a markdown summary beside the paper's figures.

Every file is written to a temporary beside it and renamed into place; matplotlib and networkx are imported here
only, so the statistics need neither.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ladle.analysis.pairs import PairsTable
from ladle.analysis.stats import PAPER, PairData, pair_data, paper_spearman
from ladle.errors import LadleError
from ladle.io.writer import write_text_atomic
from ladle.results.plots import _pyplot, _save
from ladle.results.text import strict_json

GAIN = "tab:green"
COLLAPSE = "tab:red"
OTHER = "0.55"


def write_analysis_report(result: dict, table: PairsTable, folder: Path) -> list[Path]:
    """Write the plots, analysis.json and summary.md into `folder` (created if missing); return the paths."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise LadleError("exists and is a file; --report needs a folder", file=folder)
    folder.mkdir(parents=True, exist_ok=True)
    d = pair_data(table)
    threshold = result["collapse_threshold"]
    written: list[Path] = []

    def out(name: str) -> Path:
        written.append(folder / name)
        return folder / name

    plot_gain_heatmap(d, table, out("gain_heatmap.png"))
    if d.measures:
        plot_similarity_vs_gain(d, result, threshold, out("similarity_vs_gain.png"))
    plot_transitivity(result["transitivity"], out("transitivity.png"))
    if result.get("clean_vs_corrupted"):
        plot_clean_vs_corrupted(d, result["clean_vs_corrupted"], out("clean_vs_corrupted.png"))
    if result.get("by_shared_epochs"):
        plot_shared_epochs(result["by_shared_epochs"], threshold, out("shared_epochs.png"))
    plot_soup_graph(d, table, result["components"], out("soup_graph.png"))
    write_text_atomic(out("analysis.json"), strict_json(result) + "\n")
    write_text_atomic(out("summary.md"), summary_markdown(result, table, [p.name for p in written]))
    return written


# -- plots ------------------------------------------------------------------------------------------------------


def _classes(d: PairData, threshold: float) -> list[str]:
    """A colour per pair: green if it gains, red if it collapsed, grey otherwise."""
    return [GAIN if g > 0 else COLLAPSE if s < threshold else OTHER for g, s in zip(np.nan_to_num(d.gain), d.soup)]


def _group_ticks(d: PairData, table: PairsTable) -> tuple[list[float], list[str]]:
    """Ticks for an axis of models: one per branch epoch when known, else every name (if few enough to read)."""
    epochs = [table.models.get(n, {}).get("branch_epoch") for n in d.names]
    if any(e is not None for e in epochs):
        ticks, labels = [], []
        for k, e in enumerate(epochs):
            if k == 0 or e != epochs[k - 1]:
                ticks.append(k)
                labels.append("—" if e is None else str(e))
        stride = max(1, math.ceil(len(ticks) / 30))
        return ticks[::stride], labels[::stride]
    if len(d.names) <= 40:
        return list(range(len(d.names))), [n[-16:] for n in d.names]
    return [], []


def plot_gain_heatmap(d: PairData, table: PairsTable, path: Path) -> None:
    """Accuracy gain of every pair, models ordered by branch epoch then variant: where the soups are tasty."""
    plt = _pyplot()
    from matplotlib.colors import TwoSlopeNorm

    m = d.matrix(d.gain)
    finite = m[np.isfinite(m)]
    # at least ±1 point each side of 0, so a tiny gain is not painted as the darkest blue
    lo = min(float(finite.min()) if finite.size else -1.0, -1.0)
    hi = max(float(finite.max()) if finite.size else 1.0, 1.0)
    size = min(11.0, 5.0 + 0.06 * len(d.names))
    fig, ax = plt.subplots(figsize=(size + 1.2, size), layout="constrained")
    cmap = plt.get_cmap("RdBu").with_extremes(bad="0.9")
    image = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, norm=TwoSlopeNorm(vcenter=0.0, vmin=lo, vmax=hi),
                      interpolation="nearest")
    ticks, labels = _group_ticks(d, table)
    by_epoch = any(table.models.get(n, {}).get("branch_epoch") is not None for n in d.names)
    ax.set_xticks(ticks, labels, rotation=90, fontsize=6)
    ax.set_yticks(ticks, labels, fontsize=6)
    ax.set_xlabel("model B (by branch epoch, then variant)" if by_epoch else "model B")
    ax.set_ylabel("model A (by branch epoch, then variant)" if by_epoch else "model A")
    bar = fig.colorbar(image, ax=ax, shrink=0.8, label="accuracy gain (points)")
    # TwoSlopeNorm's colorbar ticks only 0 on the short side by itself; ticks outside [lo, hi] would be NaN.
    ticks = {round(float(v), 1) for v in (*np.linspace(lo, 0, 5), *np.linspace(0, hi, 4))}
    bar.set_ticks(sorted(t for t in ticks if lo <= t <= hi))
    ax.set_title(f"Soup gain acc(soup) − max acc(A, B), {len(d.gain)} pairs of {len(d.names)} models\n"
                 "blue: the soup beats both, red: it does not, grey: not souped", fontsize=9)
    _save(fig, path, tight=False)


def plot_similarity_vs_gain(d: PairData, result: dict, threshold: float, path: Path) -> None:
    """One scatter per similarity measure against the gain, its Spearman in the title."""
    plt = _pyplot()
    names = list(d.measures)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    colours = np.array(_classes(d, threshold), dtype=object)
    for ax, name in zip(axes.flat, names):
        x = d.measures[name]
        ok = np.isfinite(x) & np.isfinite(d.gain)
        ax.scatter(x[ok], d.gain[ok], c=list(colours[ok]), s=_marker(ok.sum()), alpha=0.6, linewidths=0)
        ax.axhline(0, color="k", lw=0.6)
        r = result["spearman"].get(name, {})
        ref = paper_spearman(name)
        ax.set_title(f"{name}: Spearman {_fmt(r.get('all'))} (gaining {_fmt(r.get('gaining'))})"
                     + (f"\npaper {ref:+.2f}" if ref is not None else ""), fontsize=8)
        ax.set_xlabel(name, fontsize=8)
        ax.set_ylabel("accuracy gain (points)", fontsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"similarity against gain (green: gains, red: collapsed below {threshold:g}%, grey: neither)", fontsize=9)
    _save(fig, path)


def plot_transitivity(t: dict, path: Path) -> None:
    """P(BC gains | k of AB, AC gain) for k = 0, 1, 2, with the number of (triple, pivot) instances on each bar."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ks = ["0", "1", "2"]
    heights = [t[k]["p"] if t[k]["p"] is not None and math.isfinite(t[k]["p"]) else 0.0 for k in ks]
    bars = ax.bar(range(3), heights, color=["0.6", "tab:orange", GAIN], label="ours")
    ax.bar_label(bars, [f"n = {t[k]['n']:,}" for k in ks], fontsize=7)
    ax.plot([2.3], [PAPER["transitivity"]["2"]], "k<", label="paper")  # beside the bars, clear of their labels
    low, high = PAPER["transitivity"]["otherwise"]
    ax.vlines([0.3, 1.3], low, high, color="k", lw=2, label="paper (range)")
    ax.set_xticks(range(3), ["neither gains", "one gains", "both gain"])
    ax.set_xlabel("AB and AC")
    ax.set_ylabel("P(BC gains)")
    ax.set_ylim(0, 1.08)
    ax.set_title(f"Transitivity; Spearman of min(gain AB, AC) with gain BC {_fmt(t['spearman_min'])} "
                 f"(paper ≈{PAPER['spearman_min']})", fontsize=8)
    ax.legend(fontsize=7, loc="upper left")
    _save(fig, path)


def plot_clean_vs_corrupted(d: PairData, cvc: dict, path: Path) -> None:
    """Clean against corrupted accuracy gain, for the pairs with both."""
    plt = _pyplot()
    ok = np.isfinite(d.gain) & np.isfinite(d.corrupted_gain)
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.scatter(d.gain[ok], d.corrupted_gain[ok], s=_marker(ok.sum()), alpha=0.6, linewidths=0,
               c=[GAIN if g > 0 else OTHER for g in d.gain[ok]])
    ax.axhline(0, color="k", lw=0.6)
    ax.axvline(0, color="k", lw=0.6)
    ax.set_xlabel("clean accuracy gain (points)")
    ax.set_ylabel("corrupted accuracy gain (points)")
    ax.set_title(f"{cvc['pairs']} pairs: Spearman {_fmt(cvc['spearman'])}, Pearson {_fmt(cvc['pearson'])}\n"
                 f"(paper: Spearman {PAPER['clean_vs_corrupted']})", fontsize=8)
    _save(fig, path)


def plot_shared_epochs(rows: list[dict], threshold: float, path: Path) -> None:
    """Fractions gaining and collapsing, and the mean gain, by the epochs two models share."""
    plt = _pyplot()
    xs = [r["shared_epochs"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(xs, [100 * _num(r["fraction_gain"]) for r in rows], "o-", color=GAIN, label="gain > 0")
    ax.plot(xs, [100 * _num(r["fraction_collapse"]) for r in rows], "s-", color=COLLAPSE,
            label=f"collapsed (< {threshold:g}%)")
    ax.set_xlabel("shared epochs (min of the two branch epochs)")
    ax.set_ylabel("pairs (%)")
    ax.set_ylim(-3, 103)
    right = ax.twinx()
    right.plot(xs, [_num(r["mean_gain"]) for r in rows], "d--", color="tab:blue", label="mean gain")
    right.set_ylabel("mean accuracy gain (points)", color="tab:blue")
    handles = ax.get_legend_handles_labels()
    extra = right.get_legend_handles_labels()
    ax.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=7, loc="center right")
    ax.set_title("Gain and collapse by shared epochs", fontsize=9)
    _save(fig, path)


def plot_soup_graph(d: PairData, table: PairsTable, components: int, path: Path) -> None:
    """Models on a circle (in heatmap order), an edge for every gaining pair, coloured by branch epoch."""
    plt = _pyplot()
    import networkx as nx

    graph = nx.Graph()
    graph.add_nodes_from(d.names)
    gaining = np.isfinite(d.gain) & (np.nan_to_num(d.gain) > 0)
    graph.add_edges_from((d.names[i], d.names[j]) for i, j in zip(d.i[gaining], d.j[gaining]))
    pos = nx.circular_layout(graph)
    epochs = [table.models.get(n, {}).get("branch_epoch") for n in d.names]
    fig, ax = plt.subplots(figsize=(6, 6))
    nx.draw_networkx_edges(graph, pos, ax=ax, width=0.6, alpha=0.5, edge_color=GAIN)
    if any(e is not None for e in epochs):
        colours = [np.nan if e is None else e for e in epochs]
        nodes = nx.draw_networkx_nodes(graph, pos, ax=ax, node_size=30, node_color=colours, cmap="viridis")
        fig.colorbar(nodes, ax=ax, shrink=0.6, label="branch epoch")
    else:
        nx.draw_networkx_nodes(graph, pos, ax=ax, node_size=30, node_color="tab:blue")
    if len(d.names) <= 30:
        nx.draw_networkx_labels(graph, pos, ax=ax, font_size=6)
    ax.set_title(f"Soup graph: {int(gaining.sum())} gaining pairs as edges, {components} components", fontsize=9)
    ax.axis("off")
    _save(fig, path)


def _marker(points: int) -> float:
    """Dots big enough to see a handful of pairs, small enough not to hide thousands."""
    return float(min(30.0, max(4.0, 3000.0 / max(1, int(points)))))


def _num(value) -> float:
    return math.nan if value is None else float(value)


def _fmt(value, fmt: str = "+.2f") -> str:
    return "—" if value is None or not math.isfinite(value) else format(value, fmt)


def _pct(value) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{100 * value:.1f} %"


# -- summary ----------------------------------------------------------------------------------------------------

PLOT_NOTES = {
    "gain_heatmap.png": "accuracy gain of every pair, models ordered by branch epoch then variant (blue gains, red "
                        "loses, grey: not souped)",
    "similarity_vs_gain.png": "each similarity measure against the gain, with its Spearman over all pairs and over "
                              "gaining pairs (green: gains, red: collapsed)",
    "transitivity.png": "P(BC gains | k of AB, AC gain) over every (triple, pivot) instance, with counts; black: "
                        "the paper's values",
    "clean_vs_corrupted.png": "clean against corrupted accuracy gain per pair",
    "shared_epochs.png": "fraction gaining and collapsing, and the mean gain, by the epochs two models share",
    "soup_graph.png": "models on a circle, an edge for every gaining pair; the title counts connected components",
    "analysis.json": "every figure of this summary (the output of `ladle analyze --json`)",
}


def summary_markdown(result: dict, table: PairsTable, files: list[str]) -> str:
    """Our figures beside the paper's, and what each file of the report shows."""
    models = len({n for p in table.pairs for n in (p["a"], p["b"])})
    rows = [("pairs souped", f"{result['pairs']:,} (of {models} models)", f"{PAPER['pairs']:,} (of {PAPER['models']} models)"),
            ("fraction with gain > 0", _pct(result["fraction_gain"]), "few"),
            (f"fraction collapsed (soup accuracy < {result['collapse_threshold']:g} %)", _pct(result["fraction_collapse"]),
             "many")]
    for name, r in result["spearman"].items():
        ref = paper_spearman(name)
        rows.append((f"Spearman of {name} with gain, all pairs", _fmt(r["all"]), _fmt(ref)))
        rows.append((f"Spearman of {name} with gain, gaining pairs", _fmt(r["gaining"]),
                     "weak, opposite sign" if ref is not None else "—"))
    t = result["transitivity"]
    low, high = PAPER["transitivity"]["otherwise"]
    for k, what, ref in (("2", "both AB and AC gain", f"≈ {PAPER['transitivity']['2']}"),
                         ("1", "one of AB, AC gains", f"≈ {low}–{high}"), ("0", "neither gains", f"≈ {low}–{high}")):
        rows.append((f"P(BC gains \\| {what}) (n = {t[k]['n']:,})", _fmt(t[k]["p"], ".3f"), ref))
    rows.append(("Spearman of min(gain AB, gain AC) with gain BC", _fmt(t["spearman_min"]), f"≈ {PAPER['spearman_min']}"))
    cvc = result.get("clean_vs_corrupted")
    rows.append(("clean vs corrupted gain, Spearman", _fmt(cvc["spearman"]) if cvc else "not measured",
                 str(PAPER["clean_vs_corrupted"])))
    rows.append(("clean vs corrupted gain, Pearson", _fmt(cvc["pearson"]) if cvc else "not measured", "—"))
    rows.append(("connected components of the soup graph", str(result["components"]), "—"))
    classes = f"{table.num_classes} classes" if table.num_classes else "class count unknown"
    lines = [
        "# When is souping tasty? — analysis",
        "",
        f"Source: `{table.source or 'pairs table'}` ({classes}). Gain = acc(soup) − max(acc A, acc B) in points; a pair "
        f"gains when its gain is > 0; collapse = soup accuracy below {result['collapse_threshold']:g} % (by default "
        "5 × chance, 500 / classes %, the paper's 5 % at 100 classes).",
        "",
        "| figure | ours | paper |",
        "|---|---:|---:|",
        *[f"| {a} | {b} | {c} |" for a, b, c in rows],
        "",
        f"Paper: Ghyselincks, Mackenzie, Shelhamer, \"When is model souping tasty?\" — {PAPER['setting']}. "
        "Its CKA figure is matched to our CKA measures; the paper also finds more shared epochs → fewer "
        "collapses and smaller gains.",
    ]
    if result.get("by_shared_epochs"):
        lines += ["", "## By shared epochs", "", "| shared epochs | pairs | gain > 0 | collapsed | mean gain |",
                  "|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['shared_epochs']} | {r['pairs']} | {_pct(r['fraction_gain'])} | {_pct(r['fraction_collapse'])} "
                  f"| {_fmt(r['mean_gain'])} |" for r in result["by_shared_epochs"]]
    loss = result.get("loss_gain")
    if loss:
        lt = loss["transitivity"]
        lines += ["", "## Loss gain", "",
                  f"Loss gain = min(loss A, loss B) − loss(soup): {loss['pairs']:,} pairs, {_pct(loss['fraction_gain'])} gain.",
                  "", "| figure | ours |", "|---|---:|"]
        lines += [f"| Spearman of {m} with loss gain, all / gaining | {_fmt(r['all'])} / {_fmt(r['gaining'])} |"
                  for m, r in loss["spearman"].items()]
        lines += [f"| P(BC gains \\| k = {k}) (n = {lt[k]['n']:,}) | {_fmt(lt[k]['p'], '.3f')} |" for k in ("2", "1", "0")]
        lines.append(f"| Spearman of min(gain AB, gain AC) with gain BC | {_fmt(lt['spearman_min'])} |")
        if loss.get("clean_vs_corrupted"):
            c = loss["clean_vs_corrupted"]
            lines.append(f"| clean vs corrupted loss gain, Spearman / Pearson | {_fmt(c['spearman'])} / {_fmt(c['pearson'])} |")
    lines += ["", "## Files", ""]
    lines += [f"- `{name}`: {PLOT_NOTES[name]}" for name in files if name in PLOT_NOTES]
    return "\n".join(lines) + "\n"
