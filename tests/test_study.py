"""The multi-seed soups study: rows in the store, the summary's arithmetic, seeds, and resuming after kill -9."""

from __future__ import annotations

import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ladle.errors import LadleError
from ladle.results.store import ResultStore
from ladle.studies.soups import SeedResult, format_summary, parse_seeds, record_seed, stored_seed, summarise

VENV_BIN = Path(sys.executable).parent


def seed_result(seed: int, soup_test: float) -> SeedResult:
    ingredients = {"a": {"heldout": 0.90, "test": 0.80, "corrupted": 0.50},
                   "b": {"heldout": 0.85, "test": 0.82, "corrupted": 0.40}}
    rows = [("best single (by held-out): a", "best single", ingredients["a"]),
            ("uniform soup", "soup", {"heldout": 0.91, "test": soup_test, "corrupted": 0.55})]
    return SeedResult(seed, rows, ingredients, greedy_size=2)


def test_rows_gains_and_summary_from_the_store(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        assert stored_seed(store, 0, quick=False) is None
        for seed, soup_test in ((0, 0.83), (1, 0.80), (2, 0.86)):
            record_seed(store, seed_result(seed, soup_test), quick=False)
        assert stored_seed(store, 1, quick=False) is not None
        rows = store.study_rows("soups")
    summary = summarise(rows, [0, 1, 2])
    test = summary["rows"]["uniform soup"]["test"]
    gains = [0.83 - 0.82, 0.80 - 0.82, 0.86 - 0.82]  # against the best ingredient on test (b), not the one picked
    assert test["per_seed"] == pytest.approx({0: gains[0], 1: gains[1], 2: gains[2]})
    assert test["mean"] == pytest.approx(statistics.fmean(gains))
    assert test["sd"] == pytest.approx(statistics.stdev(gains))
    best = summary["rows"]["best single"]
    assert best["heldout"]["mean"] == pytest.approx(0.0) and best["test"]["mean"] == pytest.approx(-0.02)
    assert summary["rows"]["uniform soup"]["corrupted"]["mean"] == pytest.approx(0.05)
    text = format_summary(summary)
    assert f"{100 * statistics.fmean(gains):+.2f} ± {100 * statistics.stdev(gains):.2f}" in text
    assert "Wortsman et al. 2022" in text and "81.03 / 50.86" in text


def test_parse_seeds():
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("3,1,1") == [1, 3]
    assert parse_seeds("7") == [7]
    with pytest.raises(LadleError, match="seeds: expected 0-4 or 0,2,5, got 'a-b'"):
        parse_seeds("a-b")


def test_study_resumes_after_kill_9_without_recomputing(tmp_path):
    """A quick one-seed study killed with SIGKILL mid-sweep; the rerun keeps the finished ingredient, completes,
    and a third run computes nothing."""
    out = tmp_path / "study"
    args = [str(VENV_BIN / "ladle"), "study", "soups", "--seeds", "0", "--quick", "--out", str(out), "--executor", "local:1"]
    first = out / "ingredients-seed0" / "ingredient-00.safetensors"
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert first.exists(), "the first ingredient was never written"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = first.stat().st_mtime_ns
    with ResultStore(out / "results.sqlite") as store:  # a store cut mid-study opens and holds whole rows only
        assert stored_seed(store, 0, quick=True) is None
    done = subprocess.run(args + ["--json"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert first.stat().st_mtime_ns == kept  # not retrained
    again = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "1 of 1 seeds already in" in again.stdout and "running 0" in again.stdout
    with ResultStore(out / "results.sqlite") as store:
        rows = store.study_rows("soups-quick")
        assert {r["row"] for r in rows} >= {"best single", "uniform soup", "greedy soup", "done"}
        assert len(store.ingredients()) == 3
        assert all(not math.isnan(r["accuracy"]) for r in rows if r["row"] == "greedy soup")
