"""The statistics of a pairwise soup grid, after "When is model souping tasty?" (Ghyselincks, Mackenzie, Shelhamer).

For every souped pair: its gain (acc(soup) − max acc(A, B); the loss gain min loss(A, B) − loss(soup)) and whether
it collapsed (soup accuracy below 5 × chance). Over the grid: how many pairs gain and collapse, how well each
similarity measure ranks the gain (Spearman, over all pairs and over gaining pairs), whether souping is
transitive (over every triple {A, B, C} with all three pairs souped, each member in turn as the pivot A:
P(BC gains | k of AB, AC gain)), whether clean and corrupted gains agree, and how gain and collapse depend on
the epochs two models share. A pair gains when its gain is > 0 (a tie with the better model is not a gain).
Everything is numpy over an N×N gain matrix (NaN where a pair was not souped), so 104 models — 182k triples
× 3 pivots — take well under a second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ladle.analysis.pairs import PairsTable, measure_names
from ladle.errors import LadleError
from ladle.evaluation.gain import accuracy_gain, collapse_threshold, loss_gain
from ladle.evaluation.similarity import pearson, spearman

# The paper's figures (ResNet-50 from scratch on CIFAR-100), to print beside ours.
PAPER = {
    "setting": "ResNet-50 trained from scratch on CIFAR-100; 104 models (26 branch points, epochs 50-300, "
               "× 4 optimiser variants); 5,356 soups at α = 0.5, every float tensor averaged",
    "models": 104,
    "pairs": 5356,
    "collapse_threshold": 5.0,
    "spearman": {"kl": -0.88, "l2": -0.93, "cosine": 0.90, "cka": 0.93},  # with the accuracy gain, all pairs
    "transitivity": {"2": 0.91, "otherwise": (0.05, 0.09)},  # P(BC gains | k of AB, AC gain); k = 0, 1: 0.05-0.09
    "spearman_min": 0.6,  # Spearman of min(gain AB, gain AC) with gain BC
    "clean_vs_corrupted": 0.99,  # Spearman of clean with corrupted gain
}

_PAPER_ALIASES = {"kl": "kl", "sym_kl": "kl", "symmetric_kl": "kl", "l2": "l2", "weight_l2": "l2", "l2_distance": "l2",
                  "cosine": "cosine", "weight_cosine": "cosine", "cka": "cka", "cka_features": "cka", "cka_logits": "cka"}


def paper_spearman(measure: str) -> float | None:
    """The paper's Spearman of `measure` with the gain, or None if the paper has none for it."""
    key = _PAPER_ALIASES.get(measure.lower())
    return PAPER["spearman"][key] if key else None


@dataclass
class PairData:
    """A table as arrays: one entry per pair, NaN where a figure was not measured."""

    names: list[str]  # the models that appear in a pair, in display order (model_order)
    i: np.ndarray  # index of a in names
    j: np.ndarray  # index of b in names
    soup: np.ndarray  # soup accuracy (percent)
    gain: np.ndarray  # accuracy gain (points)
    corrupted_gain: np.ndarray
    loss_gain: np.ndarray
    corrupted_loss_gain: np.ndarray
    shared_epochs: np.ndarray  # min(branch epoch a, branch epoch b)
    measures: dict[str, np.ndarray]

    def matrix(self, values: np.ndarray) -> np.ndarray:
        """Per-pair values as a symmetric N×N matrix, NaN off the pairs (and on the diagonal)."""
        n = len(self.names)
        m = np.full((n, n), np.nan)
        m[self.i, self.j] = values
        m[self.j, self.i] = values
        return m


def model_order(table: PairsTable) -> list[str]:
    """The models of the pairs by branch epoch, then variant, then name (models without an epoch last)."""
    names = dict.fromkeys(n for p in table.pairs for n in (p["a"], p["b"]))

    def key(name):
        m = table.models.get(name, {})
        epoch = m.get("branch_epoch")
        return (epoch is None, epoch if epoch is not None else 0, m.get("variant") or "", name)

    return sorted(names, key=key)


def pair_data(table: PairsTable) -> PairData:
    names = model_order(table)
    index = {n: k for k, n in enumerate(names)}
    models = table.models
    for name in names:
        if name not in models:
            raise LadleError(f"model '{name}' is in a pair but has no figures of its own", file=table.source or None)

    def column(fn) -> np.ndarray:
        return np.array([_nan(fn(p, models[p["a"]], models[p["b"]])) for p in table.pairs], dtype=np.float64)

    def shared(p, a, b):
        ea, eb = a.get("branch_epoch"), b.get("branch_epoch")
        return None if ea is None or eb is None else min(ea, eb)

    return PairData(
        names=names,
        i=np.array([index[p["a"]] for p in table.pairs], dtype=np.int64),
        j=np.array([index[p["b"]] for p in table.pairs], dtype=np.int64),
        soup=column(lambda p, a, b: p["soup_accuracy"]),
        gain=column(lambda p, a, b: accuracy_gain(p["soup_accuracy"], a["accuracy"], b["accuracy"])),
        corrupted_gain=column(lambda p, a, b: accuracy_gain(p.get("soup_corrupted_accuracy"), a.get("corrupted_accuracy"),
                                                            b.get("corrupted_accuracy"))),
        loss_gain=column(lambda p, a, b: loss_gain(p.get("soup_loss"), a.get("loss"), b.get("loss"))),
        corrupted_loss_gain=column(lambda p, a, b: loss_gain(p.get("soup_corrupted_loss"), a.get("corrupted_loss"),
                                                             b.get("corrupted_loss"))),
        shared_epochs=column(shared),
        measures={m: np.array([_nan((p.get("measures") or {}).get(m)) for p in table.pairs], dtype=np.float64)
                  for m in measure_names(table)},
    )


def _nan(value) -> float:
    return math.nan if value is None else float(value)


def _fraction(mask: np.ndarray) -> float:
    return float(mask.mean()) if mask.size else math.nan


# -- the statistics -----------------------------------------------------------------------------------------


def analyze(table: PairsTable, *, collapse: float | None = None) -> dict:
    """Every statistic of the issue as a JSON-ready dict (NaN where undefined; print with strict_json → null)."""
    threshold = collapse_threshold(table.num_classes) if collapse is None else float(collapse)
    d = pair_data(table)
    has_gain = np.isfinite(d.gain)
    result = {
        "pairs": len(table.pairs),
        "fraction_gain": _fraction(d.gain[has_gain] > 0),
        "fraction_collapse": _fraction(d.soup < threshold),
        "collapse_threshold": threshold,
        "histogram": histogram(d.gain),
        "spearman": spearman_with_gain(d.measures, d.gain),
        "transitivity": transitivity(d.matrix(d.gain)),
        "clean_vs_corrupted": clean_vs_corrupted(d.gain, d.corrupted_gain),
        "by_shared_epochs": by_shared_epochs(d, threshold),
        "components": components(d.names, d.i, d.j, d.gain),
        "loss_gain": None,
    }
    has_loss = np.isfinite(d.loss_gain)
    if has_loss.any():
        result["loss_gain"] = {
            "pairs": int(has_loss.sum()),
            "fraction_gain": _fraction(d.loss_gain[has_loss] > 0),
            "spearman": spearman_with_gain(d.measures, d.loss_gain),
            "transitivity": transitivity(d.matrix(d.loss_gain)),
            "clean_vs_corrupted": clean_vs_corrupted(d.loss_gain, d.corrupted_loss_gain),
        }
    return result


def histogram(values: np.ndarray, bins: int = 20) -> dict:
    """Counts of the finite values in about `bins` bins of a round width (1, 2 or 5 × 10^k) with 0 as an edge.

    Bins are (left, right]: a gain of exactly 0 (not a gain) falls left of 0, every gaining pair right of it."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return {"edges": [], "counts": []}
    lo, hi = min(float(v.min()), 0.0), max(float(v.max()), 0.0)
    width = _round_width((hi - lo) / bins) if hi > lo else 1.0
    first, last = math.ceil(lo / width) - 1, max(math.ceil(hi / width), 1)
    edges = np.array([round(k * width, 12) for k in range(first, last + 1)])
    idx = np.clip(np.searchsorted(edges, v, side="left") - 1, 0, len(edges) - 2)
    counts = np.bincount(idx, minlength=len(edges) - 1)
    return {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def _round_width(raw: float) -> float:
    power = 10.0 ** math.floor(math.log10(raw))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= raw * (1 - 1e-12))


def spearman_with_gain(measures: dict[str, np.ndarray], gain: np.ndarray) -> dict:
    """{measure: {"all": Spearman with the gain, "gaining": the same over pairs with gain > 0}}."""
    gaining = np.isfinite(gain) & (np.nan_to_num(gain, nan=0.0) > 0)
    return {m: {"all": spearman(x, gain), "gaining": spearman(x[gaining], gain[gaining])} for m, x in measures.items()}


def transitivity(gain: np.ndarray, chunk_cells: int = 4_000_000) -> dict:
    """Is souping transitive? Over every triple {A, B, C} whose three pairs are in `gain` (N×N, NaN = missing),
    each member in turn as the pivot A: P(BC gains | k of AB, AC gain) with its count n, for k = 0, 1, 2, and the
    Spearman of min(gain AB, gain AC) with gain BC over all (triple, pivot) instances.

    Pivots are taken in chunks against all pairs (B, C) at once, so memory stays near `chunk_cells` cells."""
    g = np.array(gain, dtype=np.float64)
    n = g.shape[0]
    present = np.isfinite(g)
    np.fill_diagonal(present, False)
    gains = present & (np.where(present, g, 0.0) > 0)
    b, c = np.triu_indices(n, 1)
    keep = present[b, c]
    b, c = b[keep], c[keep]
    bc_gains, bc_value = gains[b, c], g[b, c]
    counts, hits = np.zeros(3, np.int64), np.zeros(3, np.int64)
    mins, others = [], []
    step = max(1, chunk_cells // max(1, b.size))
    for start in range(0, n, step):
        a = np.arange(start, min(n, start + step))[:, None]
        ok = present[a, b] & present[a, c]  # False when A is B or C: the diagonal is not present
        k = gains[a, b].astype(np.int8) + gains[a, c]
        for kk in range(3):
            sel = ok & (k == kk)
            counts[kk] += int(sel.sum())
            hits[kk] += int((sel & bc_gains).sum())
        mins.append(np.minimum(g[a, b], g[a, c])[ok])
        others.append(np.broadcast_to(bc_value, ok.shape)[ok])
    out: dict = {str(kk): {"p": float(hits[kk] / counts[kk]) if counts[kk] else math.nan, "n": int(counts[kk])}
                 for kk in range(3)}
    out["spearman_min"] = spearman(np.concatenate(mins), np.concatenate(others)) if mins else math.nan
    return out


def clean_vs_corrupted(clean: np.ndarray, corrupted: np.ndarray) -> dict | None:
    """Spearman and Pearson of clean with corrupted gain over the pairs that have both; None if none has."""
    both = np.isfinite(clean) & np.isfinite(corrupted)
    if not both.any():
        return None
    return {"spearman": spearman(clean[both], corrupted[both]), "pearson": pearson(clean[both], corrupted[both]),
            "pairs": int(both.sum())}


def by_shared_epochs(d: PairData, threshold: float) -> list[dict] | None:
    """Gain and collapse by the epochs two models share (the smaller branch epoch); None without branch epochs."""
    known = np.isfinite(d.shared_epochs)
    if not known.any():
        return None
    rows = []
    for e in np.unique(d.shared_epochs[known]):
        sel = known & (d.shared_epochs == e)
        gain = d.gain[sel & np.isfinite(d.gain)]
        rows.append({"shared_epochs": int(e), "pairs": int(sel.sum()), "fraction_gain": _fraction(gain > 0),
                     "fraction_collapse": _fraction(d.soup[sel] < threshold),
                     "mean_gain": float(gain.mean()) if gain.size else math.nan})
    return rows


def components(names: list[str], i: np.ndarray, j: np.ndarray, gain: np.ndarray) -> int:
    """Connected components of the soup graph: every model a node, every gaining pair an edge."""
    import networkx as nx

    graph = nx.Graph()
    graph.add_nodes_from(range(len(names)))
    gaining = np.isfinite(gain) & (np.nan_to_num(gain, nan=0.0) > 0)
    graph.add_edges_from(zip(i[gaining].tolist(), j[gaining].tolist()))
    return nx.number_connected_components(graph)


# -- text -----------------------------------------------------------------------------------------------------


def _f(value, fmt: str = "+.2f") -> str:
    return "—" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, fmt)


def _pct(value) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def format_analysis(result: dict) -> str:
    """The analysis as a terminal table, with the paper's figures beside ours where the paper has them."""
    lines = [f"{'':<44}{'ours':>10}  paper (ResNet-50, CIFAR-100, 104 models)",
             f"{'pairs':<44}{result['pairs']:>10}  {PAPER['pairs']:,}",
             f"{'fraction with gain > 0':<44}{_pct(result['fraction_gain']):>10}  few",
             f"{'fraction collapsed (< ' + format(result['collapse_threshold'], 'g') + '% accuracy)':<44}"
             f"{_pct(result['fraction_collapse']):>10}  many",
             f"{'components of the soup graph':<44}{result['components']:>10}", ""]
    hist = result["histogram"]
    if hist["counts"]:
        lines.append("accuracy gain (points), bins (left, right]")
        top = max(hist["counts"]) or 1
        for lo, hi, n in zip(hist["edges"], hist["edges"][1:], hist["counts"]):
            lines.append(f"  ({lo:>8g}, {hi:>8g}]  {n:>6}  {'#' * math.ceil(40 * n / top) if n else ''}")
        lines.append("")
    lines += _format_gain_block(result, "accuracy gain")
    shared = result.get("by_shared_epochs")
    if shared:
        lines += ["", "by shared epochs, the smaller branch epoch (paper: more shared epochs → fewer collapses, smaller gains)",
                  f"  {'shared':>6}  {'pairs':>6}  {'gain > 0':>8}  {'collapsed':>9}  {'mean gain':>9}"]
        for row in shared:
            lines.append(f"  {row['shared_epochs']:>6}  {row['pairs']:>6}  {_pct(row['fraction_gain']):>8}  "
                         f"{_pct(row['fraction_collapse']):>9}  {_f(row['mean_gain']):>9}")
    loss = result.get("loss_gain")
    if loss:
        lines += ["", f"loss gain = min loss(A, B) − loss(soup): {loss['pairs']} pairs, "
                      f"{_pct(loss['fraction_gain'])} with gain > 0"]
        lines += _format_gain_block(loss, "loss gain", paper=False)
    return "\n".join(lines)


def _format_gain_block(block: dict, what: str, paper: bool = True) -> list[str]:
    lines = []
    if block["spearman"]:
        lines.append(f"Spearman of each measure with the {what}:")
        lines.append(f"  {'measure':<28}{'all':>8}{'gaining':>10}{'paper (all)':>14}")
        for m, r in block["spearman"].items():
            ref = paper_spearman(m) if paper else None
            lines.append(f"  {m:<28}{_f(r['all']):>8}{_f(r['gaining']):>10}{_f(ref):>14}")
    t = block["transitivity"]
    refs = {"2": f"≈{PAPER['transitivity']['2']}", "1": "≈0.05-0.09", "0": "≈0.05-0.09"} if paper else {}
    lines.append(f"transitivity, P(BC gains | k of AB, AC gain) over (triple, pivot) instances ({what}):")
    for k in ("2", "1", "0"):
        lines.append(f"  k = {k}  {_f(t[k]['p'], '.3f'):>7}  (n = {t[k]['n']:,})  {('paper ' + refs[k]) if paper else ''}".rstrip())
    lines.append(f"  Spearman of min(gain AB, gain AC) with gain BC: {_f(t['spearman_min'])}"
                 + (f"  (paper ≈{PAPER['spearman_min']})" if paper else ""))
    cvc = block.get("clean_vs_corrupted")
    if cvc:
        lines.append(f"clean vs corrupted {what} over {cvc['pairs']} pairs: Spearman {_f(cvc['spearman'])}, "
                     f"Pearson {_f(cvc['pearson'])}" + (f"  (paper: Spearman {PAPER['clean_vs_corrupted']})" if paper else ""))
    else:
        lines.append(f"clean vs corrupted {what}: no corrupted figures")
    return lines
