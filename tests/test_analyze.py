"""`ladle analyze`: gain arithmetic, transitivity counts by hand, the statistics of a small hand table, the pairs-table
format (CSV and Parquet) and its one-line errors, the report and the command."""

from __future__ import annotations

import itertools
import json
import math
import sys

import numpy as np
import pytest
from scipy import stats

from ladle.analysis.pairs import PairsTable, read_pairs_table
from ladle.analysis.stats import PAPER, analyze, format_analysis, histogram, transitivity
from ladle.errors import LadleError
from ladle.evaluation.gain import accuracy_gain, collapse_threshold, loss_gain, soup_gain
from ladle.results.text import strict_json

# ---------------------------------------------------------------- gain arithmetic


def test_gain_arithmetic():
    assert accuracy_gain(80.0, 70.0, 75.0) == 5.0
    assert accuracy_gain(60.0, 70.0, 75.0) == -15.0
    assert accuracy_gain(75.0, 70.0, 75.0) == 0.0
    assert accuracy_gain(None, 70.0, 75.0) is None and accuracy_gain(80.0, math.nan, 75.0) is None
    assert loss_gain(0.9, 1.0, 1.2) == pytest.approx(0.1)  # min(1.0, 1.2) − 0.9
    assert loss_gain(1.5, 1.0, 1.2) == pytest.approx(-0.5)
    assert loss_gain(0.9, None, 1.2) is None and loss_gain(None, 1.0, 1.2) is None
    assert collapse_threshold(100) == 5.0  # the paper's 5 % on CIFAR-100
    assert collapse_threshold(10) == 50.0
    assert collapse_threshold(1000) == 0.5
    assert collapse_threshold(None) == 5.0
    assert collapse_threshold(2) == 75.0 and collapse_threshold(4) == 62.5  # capped halfway from chance to 100 %
    with pytest.raises(ValueError):
        collapse_threshold(0)
    assert soup_gain(80.0, [70.0, 75.0]) == 5.0  # unchanged


# ---------------------------------------------------------------- transitivity

# Four models; gain of each pair (0 is a tie with the better model: not a gain):
#   AB +1, AC +2, BC +3 (gain)     AD −1, BD −2, CD 0 (no gain)
HAND = {("A", "B"): 1.0, ("A", "C"): 2.0, ("B", "C"): 3.0, ("A", "D"): -1.0, ("B", "D"): -2.0, ("C", "D"): 0.0}
NAMES = "ABCD"


def gain_matrix(gains: dict) -> np.ndarray:
    m = np.full((4, 4), np.nan)
    for (a, b), g in gains.items():
        m[NAMES.index(a), NAMES.index(b)] = m[NAMES.index(b), NAMES.index(a)] = g
    return m


def test_transitivity_counts_by_hand():
    # Every triple with each member as the pivot P; k = how many of P's two pairs gain; hit = the third pair gains.
    #   {A,B,C}: pivot A: AB+ AC+ k=2, BC+ hit;  B: k=2, AC+ hit;  C: k=2, AB+ hit
    #   {A,B,D}: pivot A: AB+ AD− k=1, BD− miss; B: BA+ BD− k=1, AD− miss; D: DA− DB− k=0, AB+ hit
    #   {A,C,D}: pivot A: k=1, CD(0) miss;       C: CA+ CD(0) k=1, AD− miss; D: k=0, AC+ hit
    #   {B,C,D}: pivot B: k=1, CD(0) miss;       C: k=1, BD− miss;           D: k=0, BC+ hit
    # k=2: 3 instances, 3 hits; k=1: 6 instances, 0 hits; k=0: 3 instances, 3 hits.
    t = transitivity(gain_matrix(HAND))
    assert {k: t[k] for k in "012"} == {"2": {"p": 1.0, "n": 3}, "1": {"p": 0.0, "n": 6}, "0": {"p": 1.0, "n": 3}}
    # (min(gain PA', gain PB'), gain of the third pair) for the 12 instances, in the order above:
    instances = [(1, 3), (1, 2), (2, 1), (-1, -2), (-2, -1), (-2, 1), (-1, 0), (0, -1), (-1, 2), (-2, 0), (0, -2), (-2, 3)]
    assert t["spearman_min"] == pytest.approx(stats.spearmanr(*zip(*instances))[0], rel=1e-12)
    # chunking the pivots changes nothing
    assert transitivity(gain_matrix(HAND), chunk_cells=1) == t


def test_transitivity_leaves_out_incomplete_triples():
    # Without CD only {A,B,C} and {A,B,D} have all three pairs: k=2 3 (3 hits), k=1 2 (0 hits), k=0 1 (1 hit).
    gains = {k: v for k, v in HAND.items() if k != ("C", "D")}
    t = transitivity(gain_matrix(gains))
    assert {k: t[k] for k in "012"} == {"2": {"p": 1.0, "n": 3}, "1": {"p": 0.0, "n": 2}, "0": {"p": 1.0, "n": 1}}
    # no complete triple at all: counts 0, p and the Spearman undefined
    t = transitivity(gain_matrix({("A", "B"): 1.0, ("C", "D"): 2.0}))
    assert [t[k]["n"] for k in "012"] == [0, 0, 0] and math.isnan(t["2"]["p"]) and math.isnan(t["spearman_min"])


def test_transitivity_matches_a_brute_force_loop():
    rng = np.random.default_rng(0)
    n = 12
    g = np.full((n, n), np.nan)
    for i, j in itertools.combinations(range(n), 2):
        if rng.random() < 0.85:  # some pairs not souped
            g[i, j] = g[j, i] = rng.choice([-1.0, 0.0, 1.0]) * rng.random() * 3
    counts, hits, xs, ys = [0, 0, 0], [0, 0, 0], [], []
    for triple in itertools.combinations(range(n), 3):
        if any(np.isnan(g[i, j]) for i, j in itertools.combinations(triple, 2)):
            continue
        for a in triple:
            b, c = [x for x in triple if x != a]
            k = int(g[a, b] > 0) + int(g[a, c] > 0)
            counts[k] += 1
            hits[k] += int(g[b, c] > 0)
            xs.append(min(g[a, b], g[a, c]))
            ys.append(g[b, c])
    t = transitivity(g, chunk_cells=50)
    assert [t[k]["n"] for k in "012"] == counts
    assert [t[k]["p"] for k in "012"] == pytest.approx([h / c for h, c in zip(hits, counts)])
    assert t["spearman_min"] == pytest.approx(stats.spearmanr(xs, ys)[0])


def test_transitivity_is_fast_for_the_papers_grid():
    import time

    rng = np.random.default_rng(1)
    g = rng.normal(size=(104, 104))
    g = (g + g.T) / 2
    np.fill_diagonal(g, np.nan)
    start = time.perf_counter()
    t = transitivity(g)
    assert sum(t[k]["n"] for k in "012") == 3 * math.comb(104, 3)
    assert time.perf_counter() - start < 5


# ---------------------------------------------------------------- analyze on a hand table


def hand_table(**kwargs) -> PairsTable:
    """The four models above, each at 60 % (30 % corrupted); soup accuracy = 60 + gain, except BD collapsed to 3 %."""
    models = {n: {"accuracy": 60.0, "loss": None, "corrupted_accuracy": 30.0, "corrupted_loss": None,
                  "branch_epoch": e, "variant": v} for n, e, v in (("A", 10, "x"), ("B", 10, "y"), ("C", 20, "x"), ("D", 20, "y"))}
    kl = {("A", "B"): 0.1, ("A", "C"): 0.2, ("B", "C"): 0.05, ("A", "D"): 0.5, ("B", "D"): 0.9, ("C", "D"): 0.4}
    pairs = []
    for (a, b), g in HAND.items():
        soup = 3.0 if (a, b) == ("B", "D") else 60.0 + g
        pairs.append({"a": a, "b": b, "soup_accuracy": soup, "soup_loss": None,
                      "soup_corrupted_accuracy": None if soup < 5 else 30.0 + 2 * g, "soup_corrupted_loss": None,
                      "measures": {"kl": kl[a, b], "l2": None if (a, b) == ("C", "D") else 10 * kl[a, b]}})
    return PairsTable(pairs=pairs, models=models, num_classes=100, source="hand", **kwargs)


KEYS = {"pairs", "fraction_gain", "fraction_collapse", "collapse_threshold", "histogram", "spearman", "transitivity",
        "clean_vs_corrupted", "by_shared_epochs", "components", "loss_gain"}


def test_analyze_hand_table():
    result = analyze(hand_table())
    assert set(result) == KEYS
    gains = [1.0, 2.0, 3.0, -1.0, -57.0, 0.0]  # AB AC BC AD BD CD
    assert result["pairs"] == 6
    assert result["fraction_gain"] == 0.5  # AB, AC, BC
    assert result["fraction_collapse"] == pytest.approx(1 / 6)  # BD at 3 % < 5 %
    assert result["collapse_threshold"] == 5.0
    # range −57..3 → width 60/20 = 3, rounded up to 5; bins (left, right] from −60 to 5
    assert result["histogram"]["edges"] == [-60.0 + 5 * k for k in range(14)]
    assert result["histogram"]["counts"] == [1] + [0] * 10 + [2, 3]  # −57 | −1, 0 | 1, 2, 3
    kl = [0.1, 0.2, 0.05, 0.5, 0.9, 0.4]
    assert result["spearman"]["kl"]["all"] == pytest.approx(stats.spearmanr(kl, gains)[0])
    assert result["spearman"]["kl"]["gaining"] == pytest.approx(stats.spearmanr(kl[:3], gains[:3])[0])  # = −1
    assert result["spearman"]["l2"]["all"] == pytest.approx(stats.spearmanr(kl[:5], gains[:5])[0])  # CD has no l2
    # the collapse changes gain BD from −2 to −57: the counts stay, the Spearman of min(...) is recomputed
    assert {k: result["transitivity"][k] for k in "012"} == {"2": {"p": 1.0, "n": 3}, "1": {"p": 0.0, "n": 6},
                                                             "0": {"p": 1.0, "n": 3}}
    # corrupted gain = 2 × gain, BD not measured: 5 pairs in perfect agreement
    assert result["clean_vs_corrupted"] == {"spearman": pytest.approx(1.0), "pearson": pytest.approx(1.0), "pairs": 5}
    # shared epochs: min(branch epochs); A, B at 10, C, D at 20 → only CD shares 20
    assert result["by_shared_epochs"] == [
        {"shared_epochs": 10, "pairs": 5, "fraction_gain": 0.6, "fraction_collapse": 0.2, "mean_gain": pytest.approx(-52 / 5)},
        {"shared_epochs": 20, "pairs": 1, "fraction_gain": 0.0, "fraction_collapse": 0.0, "mean_gain": 0.0}]
    assert result["components"] == 2  # {A, B, C} joined by gaining pairs, D alone
    assert result["loss_gain"] is None
    parsed = json.loads(strict_json(result))
    assert parsed["transitivity"]["spearman_min"] == pytest.approx(result["transitivity"]["spearman_min"])


def test_analyze_collapse_threshold_and_missing_data():
    table = hand_table()
    assert analyze(table, collapse=60.0)["fraction_collapse"] == pytest.approx(2 / 6)  # AD 59, BD 3 (CD 60 is not below)
    table.num_classes = 10  # 5 × chance = 50 %
    assert analyze(table)["collapse_threshold"] == 50.0 and analyze(table)["fraction_collapse"] == pytest.approx(1 / 6)
    table.num_classes = None
    assert analyze(table)["collapse_threshold"] == 5.0
    for m in table.models.values():
        m["branch_epoch"] = None
        m["corrupted_accuracy"] = None
    result = analyze(table)
    assert result["by_shared_epochs"] is None and result["clean_vs_corrupted"] is None
    assert strict_json(result)  # NaN-free, loads as strict JSON
    del table.models["D"]
    with pytest.raises(LadleError, match="hand: model 'D' is in a pair but has no figures"):
        analyze(table)


def test_analyze_loss_gain():
    table = hand_table()
    for m in table.models.values():
        m["loss"] = 1.0
    # loss gain = 1 − soup loss: AB +0.5, AC +0.2, BC −0.1 (others not measured)
    for p, loss in zip(table.pairs, [0.5, 0.8, 1.1, None, None, None]):
        p["soup_loss"] = loss
    lg = analyze(table)["loss_gain"]
    assert set(lg) == {"pairs", "fraction_gain", "spearman", "transitivity", "clean_vs_corrupted"}
    assert lg["pairs"] == 3 and lg["fraction_gain"] == pytest.approx(2 / 3)
    # one complete triple {A,B,C}: pivot A: k=2, BC− miss; pivot B: BA+ BC− k=1, AC+ hit; pivot C: CA+ CB− k=1, AB+ hit
    assert {k: lg["transitivity"][k] for k in "012"} == {"2": {"p": 0.0, "n": 1}, "1": {"p": 1.0, "n": 2},
                                                         "0": {"p": pytest.approx(math.nan, nan_ok=True), "n": 0}}
    assert lg["clean_vs_corrupted"] is None
    assert math.isnan(lg["spearman"]["kl"]["gaining"])  # 2 gaining pairs: too few


def test_histogram_edges():
    assert histogram(np.array([])) == {"edges": [], "counts": []}
    assert histogram(np.array([0.0, 0.0])) == {"edges": [-1.0, 0.0, 1.0], "counts": [2, 0]}  # 0 is not a gain
    h = histogram(np.array([0.25, 0.5, np.nan]))
    assert sum(h["counts"]) == 2 and h["edges"][0] <= 0.0 < h["edges"][-1]


def test_format_analysis_shows_the_papers_figures():
    text = format_analysis(analyze(hand_table()))
    assert "pairs" in text and "50.0%" in text and "16.7%" in text
    assert f"{PAPER['spearman']['kl']:+.2f}" in text  # the paper's −0.88 beside kl
    assert "k = 2    1.000  (n = 3)" in text
    assert "Spearman +1.00, Pearson +1.00" in text


# ---------------------------------------------------------------- the pairs-table format

MODELS_CSV = """model,accuracy,loss,corrupted_accuracy,corrupted_loss,branch_epoch,variant
A,60,1.0,30,2.0,10,x
B,60,1.0,30,2.0,10,y
C,60,1.0,30,,20,x
D,60,,30,2.0,20,
"""
PAIRS_CSV = """a,b,soup_accuracy,soup_loss,soup_corrupted_accuracy,soup_corrupted_loss,kl,l2
A,B,61,0.5,32,1.5,0.1,1
A,C,62,0.8,34,,0.2,2
B,C,63,1.1,36,1.9,0.05,0.5
A,D,59,,28,2.2,0.5,5
B,D,3,,,,0.9,9
C,D,60,1.0,30,2.0,0.4,
"""


@pytest.fixture
def tables(tmp_path):
    models, pairs = tmp_path / "models.csv", tmp_path / "pairs.csv"
    models.write_text(MODELS_CSV)
    pairs.write_text(PAIRS_CSV)
    return pairs, models


def test_read_csv(tables):
    pairs, models = tables
    t = read_pairs_table(pairs, models)
    assert t.source == str(pairs) and t.num_classes is None
    assert t.models["C"] == {"accuracy": 60.0, "loss": 1.0, "corrupted_accuracy": 30.0, "corrupted_loss": None,
                             "branch_epoch": 20, "variant": "x"}
    assert t.models["D"]["loss"] is None and t.models["D"]["variant"] is None
    assert t.pairs[0] == {"a": "A", "b": "B", "soup_accuracy": 61.0, "soup_loss": 0.5, "soup_corrupted_accuracy": 32.0,
                          "soup_corrupted_loss": 1.5, "measures": {"kl": 0.1, "l2": 1.0}}
    assert t.pairs[4]["soup_corrupted_accuracy"] is None and t.pairs[5]["measures"] == {"kl": 0.4, "l2": None}
    result = analyze(t)
    assert result["fraction_gain"] == 0.5 and result["components"] == 2


def test_parquet_round_trip(tables, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pairs, models = tables
    t = read_pairs_table(pairs, models)
    rows = [{k: v for k, v in p.items() if k != "measures"} | p["measures"] for p in t.pairs]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pairs.parquet")
    pq.write_table(pa.Table.from_pylist([{"model": n} | m for n, m in t.models.items()]), tmp_path / "models.parquet")
    back = read_pairs_table(tmp_path / "pairs.parquet", tmp_path / "models.parquet")
    assert back.pairs == t.pairs and back.models == t.models
    # mixed: a Parquet pairs table with CSV models, told apart by content, not by name
    (tmp_path / "pairs.data").write_bytes((tmp_path / "pairs.parquet").read_bytes())
    assert read_pairs_table(tmp_path / "pairs.data", models).pairs == t.pairs


def one_line_error(pairs, models, *needles) -> str:
    with pytest.raises(LadleError) as info:
        read_pairs_table(pairs, models)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert str(needle) in message, (needle, message)
    return message


@pytest.mark.parametrize("edit, needles", [
    (lambda s: s.replace("soup_accuracy", "soup_acc"), ["missing required column 'soup_accuracy'"]),
    (lambda s: s.replace("B,D,3", "B,E,3"), ["line 6", "column 'b'", "model 'E' is not in the models table"]),
    (lambda s: s.replace("0.05", "abc"), ["line 4", "column 'kl'", "expected a number, got 'abc'"]),
    (lambda s: s + "C,A,50,,,,0.1,1\n", ["line 8", "columns 'a', 'b'", "appears twice (also at line 3)"]),
    (lambda s: s.replace("C,D,60", "D,D,60"), ["line 7", "paired with itself"]),
    (lambda s: s.replace("A,B,61", "A,B,0.61e3"), ["line 2", "column 'soup_accuracy'", "outside 0-100"]),
    (lambda s: s.replace("A,B,61", "A,B,"), ["line 2", "column 'soup_accuracy'", "empty"]),
    (lambda s: s.replace("A,B,61,0.5", "A,B,61,0.5,7"), ["line 2", "9 fields, but the header has 8"]),
])
def test_pairs_errors(tables, edit, needles):
    pairs, models = tables
    pairs.write_text(edit(PAIRS_CSV))
    one_line_error(pairs, models, pairs, *needles)


@pytest.mark.parametrize("edit, needles", [
    (lambda s: s.replace("accuracy,loss", "acc,loss"), ["missing required column 'accuracy'"]),
    (lambda s: s.replace("C,60,1.0,30,,20", "C,sixty,1.0,30,,20"), ["line 4", "column 'accuracy'", "'sixty'"]),
    (lambda s: s.replace("C,60,1.0,30,,20", "C,60,1.0,30,,20.5"), ["line 4", "column 'branch_epoch'", "whole number"]),
    (lambda s: s.replace("D,60", "A,60"), ["line 5", "column 'model'", "appears twice (also at line 2)"]),
    (lambda s: s.replace("A,60,", "A,160,"), ["line 2", "outside 0-100"]),
])
def test_models_errors(tables, edit, needles):
    pairs, models = tables
    models.write_text(edit(MODELS_CSV))
    one_line_error(pairs, models, models, *needles)


def test_parquet_errors_name_the_row(tables, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pairs, models = tables
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([{"a": "A", "b": "B", "soup_accuracy": 61.0, "kl": "0.1"},
                                         {"a": "A", "b": "C", "soup_accuracy": 62.0, "kl": "x"}]), path)
    one_line_error(path, models, path, "row 2", "column 'kl'", "'x'")
    (tmp_path / "junk.parquet").write_text("not parquet")
    one_line_error(tmp_path / "junk.parquet", models, "cannot read as Parquet")


def test_missing_models_and_files(tables, tmp_path):
    pairs, models = tables
    one_line_error(pairs, None, pairs, "needs --models")
    one_line_error(tmp_path / "nope.csv", models, "nope.csv", "no such file")
    (tmp_path / "empty.csv").write_text("")
    one_line_error(tmp_path / "empty.csv", models, "empty file")
    (tmp_path / "header.csv").write_text("a,b,soup_accuracy\n")
    one_line_error(tmp_path / "header.csv", models, "no pairs")


# ---------------------------------------------------------------- report


def test_report(tables, tmp_path):
    from ladle.analysis.report import write_analysis_report

    t = read_pairs_table(*tables)
    result = analyze(t)
    folder = tmp_path / "tasty"
    written = write_analysis_report(result, t, folder)
    names = [p.name for p in written]
    assert names == ["gain_heatmap.png", "similarity_vs_gain.png", "transitivity.png", "clean_vs_corrupted.png",
                     "shared_epochs.png", "soup_graph.png", "analysis.json", "summary.md"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)  # no temporaries left
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written if p.suffix == ".png")
    assert json.loads((folder / "analysis.json").read_text()) == json.loads(strict_json(result))
    summary = (folder / "summary.md").read_text()
    assert "| Spearman of kl with gain, all pairs |" in summary and "-0.88" in summary
    assert "`soup_graph.png`" in summary


# ---------------------------------------------------------------- the command


def registered() -> bool:
    import importlib

    return "analyze" in importlib.import_module("ladle.cli.main").COMMANDS


@pytest.fixture
def analyze_cli(capsys):
    """`ladle analyze ARGS…` in-process: through `ladle` once the command is registered, else its module alone."""
    from conftest import CliResult

    def run(*args) -> CliResult:
        capsys.readouterr()
        args = [str(a) for a in args]
        if registered():
            from ladle.cli.main import main

            code = main(["analyze", *args])
        else:
            from ladle.cli import analyze as module
            from ladle.cli.common import Parser

            parser = Parser(prog="ladle")
            module.add_parser(parser.add_subparsers(dest="command"))
            try:
                code = module.run(parser.parse_args(["analyze", *args]))
            except LadleError as e:
                print(f"ladle: error: {e}", file=sys.stderr)
                code = 2
        out = capsys.readouterr()
        return CliResult(code, out.out, out.err)

    return run


def test_cli_text_json_and_report(analyze_cli, tables, tmp_path):
    pairs, models = tables
    result = analyze_cli(pairs, "--models", models)
    assert result.code == 0, result.err
    assert "fraction with gain > 0" in result.out and "50.0%" in result.out
    result = analyze_cli(pairs, "--models", models, "--json", "--num-classes", "10", "--report", tmp_path / "r")
    assert result.code == 0, result.err

    def refuse(name):
        raise ValueError(name)

    parsed = json.loads(result.out, parse_constant=refuse)
    assert set(parsed) == KEYS and parsed["collapse_threshold"] == 50.0
    assert (tmp_path / "r" / "summary.md").is_file()
    result = analyze_cli(pairs, "--models", models, "--collapse", "60", "--json")
    assert json.loads(result.out)["fraction_collapse"] == pytest.approx(2 / 6)


@pytest.mark.parametrize("edit, needles", [
    (lambda s: s.replace("soup_accuracy", "soup_acc"), ["pairs.csv", "column 'soup_accuracy'"]),
    (lambda s: s.replace("B,D,3", "B,E,3"), ["pairs.csv", "line 6", "column 'b'", "'E'"]),
    (lambda s: s.replace("0.05", "abc"), ["pairs.csv", "line 4", "column 'kl'", "'abc'"]),
])
def test_cli_errors_are_one_line_exit_2(analyze_cli, tables, edit, needles):
    pairs, models = tables
    pairs.write_text(edit(PAIRS_CSV))
    result = analyze_cli(pairs, "--models", models)
    assert result.code == 2 and result.out == ""
    assert len(result.err_lines) == 1 and result.err_lines[0].startswith("ladle: error: ")
    for needle in needles:
        assert needle in result.err_lines[0]


def test_cli_usage_errors(analyze_cli, tables, tmp_path):
    pairs, models = tables
    for args, needle in ([(pairs,), "needs --models"], [(tmp_path / "none.csv",), "no such file"],
                         [(pairs, "--models", models, "--collapse", "150"), "--collapse"],
                         [(pairs, "--models", models, "--grid", "g"), "--grid and --alpha"]):
        result = analyze_cli(*args)
        assert result.code == 2 and len(result.err_lines) == 1 and needle in result.err, (args, result.err)


def test_cli_reads_a_store_through_pairs_from_store(analyze_cli, tmp_path, monkeypatch):
    from ladle.results.store import ResultStore

    db = tmp_path / "grid.sqlite"
    ResultStore(db).close()
    calls = []

    def pairs_from_store(store, *, grid=None, alpha=0.5):
        calls.append((type(store).__name__, grid, alpha))
        return hand_table()

    import ladle.analysis.predict as predict_module

    monkeypatch.setattr(predict_module, "pairs_from_store", pairs_from_store)
    result = analyze_cli(db, "--json", "--alpha", "0.3", "--grid", "g1")
    assert result.code == 0, result.err
    assert calls == [("ResultStore", "g1", 0.3)]
    assert json.loads(result.out)["fraction_gain"] == 0.5
    result = analyze_cli(db, "--models", tmp_path / "m.csv")
    assert result.code == 2 and "--models is for a pairs table" in result.err
