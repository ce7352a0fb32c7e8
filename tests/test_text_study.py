"""The text soups study end to end on tiny models: a text sweep, soups, ensembles and the shift, per seed in the store."""

from __future__ import annotations

import math

import pytest

from ladle.errors import LadleError
from ladle.studies.text_soups import STUDY, load_text_study, study_text_soups
from text_fixtures import write_bert, write_reviews_csv


def test_a_text_study_records_soups_beside_the_best_ingredient_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LADLE_CACHE_DIR", str(tmp_path / "cache"))
    model = write_bert(tmp_path / "bert")
    data = write_reviews_csv(tmp_path / "reviews.csv", 160)
    config = {"file": "inline", "study": {"test_examples": 20, "shift_examples": 8, "learned_epochs": 1},
              "sweep": {"model": str(model), "data": str(data), "runs": 3, "epochs": 1, "batch_size": 8,
                        "lp_steps": 2, "max_length": [16], "train_examples": 48, "heldout_examples": 16}}
    summary = study_text_soups([0], tmp_path / "study", config, executor="local:1")
    rows = summary["rows"]
    assert set(rows) == {"best single", "uniform soup", "greedy soup", "learned soup", "ensemble of all",
                         "ensemble of greedy set"}
    for name, by_column in rows.items():
        assert set(by_column) == {"heldout", "test", "corrupted"}
        for column in by_column.values():  # gain = the row's accuracy − the best ingredient's on that column
            assert 0 <= column["mean_accuracy"] <= 1 and not math.isnan(column["mean"])
    assert rows["greedy soup"]["heldout"]["mean"] >= 0  # greedy never keeps a soup worse on what it tastes
    from ladle.results.store import ResultStore

    with ResultStore(tmp_path / "study" / "results.sqlite") as store:
        assert any(r["row"] == "done" for r in store.study_rows(STUDY))
    capsys.readouterr()
    again = study_text_soups([0], tmp_path / "study", config, executor="local:1")
    assert "1 of 1 seeds already in" in capsys.readouterr().out and again["rows"] == summary["rows"]


def test_the_shipped_text_study_config_reads_and_a_bad_one_is_one_line(tmp_path):
    cfg = load_text_study("rotten-tomatoes.yaml")
    assert cfg["sweep"]["data"] == "rotten-tomatoes" and cfg["sweep"]["runs"] >= 6
    (tmp_path / "bad.yaml").write_text("kind: text-soups\nstudy:\n  test_examples: 0\n")
    with pytest.raises(LadleError, match=r"bad.yaml: study.test_examples: expected int ≥ 1, got 0"):
        load_text_study(tmp_path / "bad.yaml")
    (tmp_path / "other.yaml").write_text("kind: text-soups\nstudy:\n  tests: 3\n")
    with pytest.raises(LadleError, match=r"study.tests: unknown field"):
        load_text_study(tmp_path / "other.yaml")
