"""The results store: real SQLite files, real processes (concurrent writers, a writer killed with SIGKILL)."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch

from ladle.errors import LadleError
from ladle.results.store import SCHEMA_VERSION, TABLES, ResultStore, columns, soup_key

from conftest import temporaries


def fill(store: ResultStore) -> dict:
    """One or two rows in every table; returns the logits written, by evaluation key."""
    big = torch.randn(7, 10, generator=torch.Generator().manual_seed(0))
    store.put_evaluation("sha-a", "fp-test", "average", model_name="a", kind="ingredient", data_name="test",
                         accuracy=0.75, nll=0.625, ece=0.03125, n=7, logits=big, extra={"note": "x", "k": [1, 2]})
    store.put_evaluation("sha-a", "fp-test", "recalibrate", model_name="a", kind="ingredient", data_name="test",
                         accuracy=0.5, nll=1.0, ece=0.25, n=7)
    store.put_ingredient("sha-a", path="/runs/a.safetensors", sweep="sweep-1", run=3, stock_sha256="sha-stock",
                         model="resnet18", objective="ce", hyperparameters={"lr": 0.001, "epochs": 2},
                         heldout_accuracy=0.8125, final_train_loss=0.1, data={"name": "cifar10", "n": 500})
    store.put_ingredient("sha-b", path="/runs/b.safetensors", sweep="sweep-1", run=1, stock_sha256="sha-stock",
                         model="resnet18", objective="ce", hyperparameters={"lr": 0.01, "epochs": 2},
                         heldout_accuracy=0.75, final_train_loss=0.2, data={"name": "cifar10", "n": 500})
    store.put_ingredient("sha-c", path="/runs/c.safetensors", sweep="sweep-2", run=0, stock_sha256="sha-stock",
                         model="resnet18", objective="ce", hyperparameters={}, heldout_accuracy=0.5,
                         final_train_loss=0.3, data={})
    store.put_soup("sha-soup", path=None, recipe="uniform", parameters={}, ingredients=["sha-a", "sha-b"],
                   weights=[0.5, 0.5], manifest={"recipe": {"name": "uniform"}, "inputs": ["a", "b"]})
    store.put_corrupted_set(clean_fingerprint="fp-test", suite="cifar10-c", corruption="fog", severity=3, seed=0,
                            images=500, path="/cache/fog-3", checksum="fp-fog-3")
    store.put_study_row("soups", 0, "uniform soup", "test", kind="soup", accuracy=0.9, best_single=0.85, gain=0.05,
                        extra={"greedy_size": 3})
    store.put_study_row("soups", 0, "done", "-", kind="marker", accuracy=math.nan, best_single=math.nan,
                        gain=math.nan)
    store.put_grid("g1", {"model": "tiny", "bn": "average"})
    store.put_grid_model("g1", "sha-a", name="a", path="/runs/a.safetensors", accuracy=90.0, loss=0.3,
                         corrupted_accuracy=math.nan, corrupted_loss=math.nan, branch_epoch=10, variant="v1")
    store.put_grid_soups([dict(grid="g1", a="sha-a", b="sha-b", alpha=alpha, accuracy=80.0 + alpha, loss=0.5,
                               corrupted_accuracy=math.nan, corrupted_loss=math.nan, gain=-10.0 + alpha,
                               loss_gain=-0.2, corrupted_gain=math.nan, corrupted_loss_gain=math.nan, collapse=0)
                          for alpha in (0.25, 0.5)])
    store.put_grid_measures([dict(grid="g1", a="sha-a", b="sha-b", measures={"kl": 0.125, "l2": 3.0})])
    return {("sha-a", "fp-test", "average"): big}


def test_round_trip_every_table(tmp_path):
    path = tmp_path / "results.sqlite"
    with ResultStore(path) as store:
        logits = fill(store)
    with ResultStore(path) as store:  # a fresh connection reads what the first one committed
        ev = store.evaluation("sha-a", "fp-test")
        created = ev.pop("created")
        assert ev == {"model": "sha-a", "data": "fp-test", "bn": "average", "model_name": "a", "kind": "ingredient",
                      "data_name": "test", "accuracy": 0.75, "nll": 0.625, "ece": 0.03125, "n": 7,
                      "logits_shape": [7, 10], "extra": {"note": "x", "k": [1, 2]}}
        when = datetime.fromisoformat(created)
        assert when.utcoffset().total_seconds() == 0 and abs((datetime.now(timezone.utc) - when).total_seconds()) < 60
        assert torch.equal(store.logits("sha-a", "fp-test", "average"), logits[("sha-a", "fp-test", "average")])
        assert store.evaluation("sha-a", "fp-test", "recalibrate")["extra"] is None
        assert store.logits("sha-a", "fp-test", "recalibrate") is None
        assert store.evaluation("sha-a", "other") is None and store.logits("sha-a", "other") is None

        ing = store.ingredient("sha-a")
        assert ing["hyperparameters"] == {"lr": 0.001, "epochs": 2} and ing["data"] == {"name": "cifar10", "n": 500}
        assert (ing["run"], ing["heldout_accuracy"], ing["final_train_loss"]) == (3, 0.8125, 0.1)
        assert [r["sha256"] for r in store.ingredients()] == ["sha-b", "sha-a", "sha-c"]  # by sweep, then run
        assert [r["sha256"] for r in store.ingredients("sweep-1")] == ["sha-b", "sha-a"]
        assert store.ingredients("nope") == [] and store.ingredient("nope") is None

        soup = store.soup("sha-soup")
        assert soup["path"] is None and soup["ingredients"] == ["sha-a", "sha-b"] and soup["weights"] == [0.5, 0.5]
        assert soup["manifest"] == {"recipe": {"name": "uniform"}, "inputs": ["a", "b"]}

        (cs,) = store.corrupted_sets("fp-test")
        assert {k: cs[k] for k in ("suite", "corruption", "severity", "seed", "images", "path", "checksum")} == {
            "suite": "cifar10-c", "corruption": "fog", "severity": 3, "seed": 0, "images": 500,
            "path": "/cache/fog-3", "checksum": "fp-fog-3"}

        rows = store.study_rows("soups")
        assert [r["row"] for r in rows] == ["uniform soup", "done"]
        assert rows[0]["extra"] == {"greedy_size": 3} and rows[0]["gain"] == 0.05
        assert math.isnan(rows[1]["accuracy"]) and math.isnan(rows[1]["gain"])  # NaN comes back as NaN
        assert store.study_rows("other") == []

        assert store.tables() == list(TABLES)
        assert {t: len(store.rows(t)) for t in store.tables()} == {
            "evaluations": 2, "ingredients": 3, "soups": 1, "corrupted_sets": 1, "study_rows": 2, "grids": 1,
            "grid_models": 1, "grid_soups": 2, "grid_measures": 1}
        assert store.grids()[0]["settings"] == {"model": "tiny", "bn": "average"}
        (model,) = store.grid_models("g1")
        assert (model["name"], model["accuracy"], model["branch_epoch"], model["variant"]) == ("a", 90.0, 10, "v1")
        assert math.isnan(model["corrupted_accuracy"])
        assert [(r["alpha"], r["accuracy"], r["gain"]) for r in store.grid_soups("g1")] == [(0.25, 80.25, -9.75),
                                                                                           (0.5, 80.5, -9.5)]
        assert store.grid_measures("g1")[0]["measures"] == {"kl": 0.125, "l2": 3.0} and store.grid_soups("g2") == []
        assert all("logits" not in r for r in store.rows("evaluations"))
        assert all(isinstance(r["created"], str) for t in store.tables() for r in store.rows(t))
        summary = store.format_summary()
        assert summary.splitlines()[0].startswith(str(path)) and f"schema version {SCHEMA_VERSION}" in summary
        counts = {line.split()[0]: int(line.split()[1]) for line in summary.splitlines()[1:]}
        assert counts == {"evaluations": 2, "ingredients": 3, "soups": 1, "corrupted_sets": 1, "study_rows": 2,
                          "grids": 1, "grid_models": 1, "grid_soups": 2, "grid_measures": 1}
        with pytest.raises(LadleError, match="unknown table 'nope'"):
            store.rows("nope")


def test_store_is_wal_with_busy_timeout_and_schema_version(tmp_path):
    path = tmp_path / "sub" / "results.sqlite"  # the folder is created too
    ResultStore(path).close()
    assert sorted(p.name for p in path.parent.iterdir() if not p.name.startswith("results.sqlite")) == []
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0] == str(SCHEMA_VERSION)
    conn.close()
    with ResultStore(path) as store:
        assert store.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 60000


def test_upsert_replaces_the_row_in_place(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        for seed in (0, 1):
            for row in ("a", "b", "c"):
                store.put_study_row("s", seed, row, "test", kind="soup", accuracy=0.1, best_single=0.1, gain=0.0)
        store.put_study_row("s", 0, "b", "test", kind="soup", accuracy=0.9, best_single=0.2, gain=0.7,
                            extra={"again": True})
        rows = store.study_rows("s")
        assert [(r["seed"], r["row"]) for r in rows] == [(0, "a"), (0, "b"), (0, "c"), (1, "a"), (1, "b"), (1, "c")]
        assert (rows[1]["accuracy"], rows[1]["gain"], rows[1]["extra"]) == (0.9, 0.7, {"again": True})
        assert rows[4]["accuracy"] == 0.1

        store.put_evaluation("m", "d", "average", model_name="x", kind="soup", data_name="t", accuracy=0.1, nll=1,
                             ece=0, n=2, logits=torch.ones(2, 3))
        store.put_evaluation("m", "d", "average", model_name="y", kind="soup", data_name="t", accuracy=0.2, nll=2,
                             ece=0, n=4, logits=torch.zeros(4, 5))
        assert len(store.rows("evaluations")) == 1 and store.evaluation("m", "d")["model_name"] == "y"
        assert torch.equal(store.logits("m", "d"), torch.zeros(4, 5))
        store.put_ingredient("h", path="p1", sweep="s", run=0, stock_sha256="st", model="m", objective="ce",
                             hyperparameters={"lr": 1}, heldout_accuracy=0.5, final_train_loss=1, data={})
        store.put_ingredient("h", path="p2", sweep="s", run=0, stock_sha256="st", model="m", objective="ce",
                             hyperparameters={"lr": 2}, heldout_accuracy=0.6, final_train_loss=1, data={})
        assert [(r["path"], r["hyperparameters"]) for r in store.ingredients()] == [("p2", {"lr": 2})]


def test_logits_come_back_bit_for_bit_with_their_shape(tmp_path):
    special = torch.tensor([0.0, -0.0, math.inf, -math.inf, 1e-45, -3.4028235e38, 1 / 3, math.nan])
    odd_nan = torch.tensor([0x7FC12345, 0xFFBADBAD], dtype=torch.int64).to(torch.int32).view(torch.float32)
    cases = {
        "3d": torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(1)),
        "special": special,
        "nan-payloads": odd_nan,
        "empty": torch.empty(0, 10),
        "scalar": torch.tensor(2.5),
        "strided": torch.arange(24, dtype=torch.float32).reshape(4, 6).t(),  # not contiguous
    }
    path = tmp_path / "r.sqlite"
    with ResultStore(path) as store:
        for name, t in cases.items():
            store.put_evaluation(name, "d", "first", model_name=name, kind="soup", data_name="t", accuracy=0, nll=0,
                                 ece=0, n=len(t) if t.dim() else 1, logits=t)
        store.put_evaluation("f64", "d", "first", model_name="f64", kind="soup", data_name="t", accuracy=0, nll=0,
                             ece=0, n=1, logits=torch.tensor([0.1], dtype=torch.float64))
        with pytest.raises(LadleError, match="floating-point tensor"):
            store.put_evaluation("int", "d", "first", model_name="i", kind="soup", data_name="t", accuracy=0, nll=0,
                                 ece=0, n=1, logits=torch.tensor([1, 2]))
    with ResultStore(path) as store:
        for name, t in cases.items():
            back = store.logits(name, "d", "first")
            assert back.dtype == torch.float32 and back.shape == t.shape and back.is_contiguous()
            assert torch.equal(back.reshape(-1).view(torch.int32), t.contiguous().reshape(-1).view(torch.int32)), name
            assert store.evaluation(name, "d", "first")["logits_shape"] == list(t.shape)
        assert store.logits("f64", "d", "first").item() == torch.tensor(0.1, dtype=torch.float32).item()
        assert store.evaluation("int", "d", "first") is None  # the refused row was not written


def test_values_are_checked_before_anything_is_written(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        with pytest.raises(LadleError, match=r"r\.sqlite: study_rows\.kind: a value is required"):
            store.put_study_row("s", 0, "r", "t", kind=None, accuracy=1, best_single=1, gain=0)
        with pytest.raises(LadleError, match=r"study_rows\.seed: cannot store 1\.5 as int"):
            store.put_study_row("s", 1.5, "r", "t", kind="k", accuracy=1, best_single=1, gain=0)
        with pytest.raises(LadleError, match=r"study_rows\.extra: cannot store .* as json"):
            store.put_study_row("s", 0, "r", "t", kind="k", accuracy=1, best_single=1, gain=0, extra={"t": object()})
        assert store.rows("study_rows") == []


def test_soup_key_is_the_sha256_of_canonical_json():
    key = soup_key("greedy", {"b": 1, "a": [0.5, 2]}, ["h1", "h2"])
    canonical = '{"ingredients":["h1","h2"],"parameters":{"a":[0.5,2],"b":1},"recipe":"greedy"}'
    assert key == hashlib.sha256(canonical.encode()).hexdigest()
    assert soup_key("greedy", {"a": [0.5, 2], "b": 1}, ["h1", "h2"]) == key  # dict order does not matter
    assert soup_key("greedy", {"b": 1, "a": [0.5, 2]}, ["h2", "h1"]) != key
    assert soup_key("uniform", {"b": 1, "a": [0.5, 2]}, ["h1", "h2"]) != key


# -- several processes ---------------------------------------------------------------------------------

def _write_study_rows(path: str, worker: int, count: int) -> None:
    """Runs in a spawned process: opens (maybe creates) the store and writes `count` rows, reading as it goes."""
    with ResultStore(path) as store:
        for i in range(count):
            store.put_study_row("concurrent", worker, f"row {i}", "test", kind="soup", accuracy=i / count,
                                best_single=worker, gain=i, extra={"worker": worker, "i": i})
            assert len([r for r in store.study_rows("concurrent") if r["seed"] == worker]) == i + 1


def test_two_processes_write_at_once_and_every_row_arrives(tmp_path):
    path = tmp_path / "shared.sqlite"  # both processes race to create it, too
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_write_study_rows, args=(str(path), w, 50)) for w in (0, 1)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=60)
    assert [p.exitcode for p in workers] == [0, 0]
    with ResultStore(path) as store:
        rows = store.study_rows("concurrent")
    assert len(rows) == 100
    assert {(r["seed"], r["row"]) for r in rows} == {(w, f"row {i}") for w in (0, 1) for i in range(50)}
    assert all(r["extra"] == {"worker": r["seed"], "i": r["gain"]} and r["accuracy"] == r["gain"] / 50 for r in rows)
    assert temporaries(tmp_path) == []


KILLED_WRITER = """
import sys, torch
from ladle.results.store import ResultStore
store = ResultStore(sys.argv[1])
i = int(sys.argv[2])
while True:
    logits = torch.randn(256, 100, generator=torch.Generator().manual_seed(i))
    store.put_evaluation(f"m{i}", "fp", "average", model_name=f"model {i}", kind="ingredient", data_name="test",
                         accuracy=i / 1000, nll=float(i), ece=0.5, n=256, logits=logits, extra={"i": i})
    print(i, flush=True)
    i += 1
"""


def _check_complete(store: ResultStore) -> list[int]:
    """Every evaluation row is whole (fields and logits match what the writer computed); returns the i's."""
    found = []
    for r in store.rows("evaluations"):
        i = r["extra"]["i"]
        assert r["model"] == f"m{i}" and r["model_name"] == f"model {i}" and r["accuracy"] == i / 1000
        assert r["nll"] == float(i) and r["n"] == 256 and r["logits_shape"] == [256, 100]
        expected = torch.randn(256, 100, generator=torch.Generator().manual_seed(i))
        assert torch.equal(store.logits(f"m{i}", "fp"), expected)
        found.append(i)
    return sorted(found)


def test_a_writer_killed_with_sigkill_leaves_a_whole_store(tmp_path):
    path = tmp_path / "results.sqlite"
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path), "0"], stdout=subprocess.PIPE, text=True)
    try:
        last = -1
        for line in writer.stdout:
            last = int(line)
            if last >= 40:
                break
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == -signal.SIGKILL and last >= 40
    assert Path(f"{path}-wal").exists()  # the killed writer never checkpointed: opening must recover from the WAL

    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    with ResultStore(path) as store:
        found = _check_complete(store)
        assert found == list(range(len(found))) and len(found) >= last + 1  # every acknowledged row, no gaps
        store.put_study_row("after", 0, "r", "s", kind="k", accuracy=1, best_single=1, gain=0)
    # A second writer carries on from where the first stopped.
    more = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path), str(len(found))], stdout=subprocess.PIPE,
                            text=True)
    try:
        for line in more.stdout:
            if int(line) >= len(found) + 2:
                break
    finally:
        more.kill()
        more.wait(timeout=30)
    with ResultStore(path) as store:
        again = _check_complete(store)
        assert again[: len(found) + 3] == list(range(len(found) + 3))
        assert len(store.study_rows("after")) == 1
    assert temporaries(tmp_path) == []


# -- export --------------------------------------------------------------------------------------------

def _from_csv(path: Path, table: str) -> list[dict]:
    """Parse an exported CSV back into row dicts using the column kinds."""
    kinds = dict(columns(table))
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == list(kinds)
        out = []
        for rec in reader:
            row = {}
            for name, text in rec.items():
                kind = kinds[name]
                if text == "":
                    row[name] = math.nan if kind == "real" else None
                elif kind == "int":
                    row[name] = int(text)
                elif kind == "real":
                    row[name] = float(text)
                elif kind == "json":
                    row[name] = json.loads(text)
                else:
                    row[name] = text
            out.append(row)
    return out


def _from_parquet(path: Path, table: str) -> list[dict]:
    import pyarrow.parquet as pq

    kinds = dict(columns(table))
    got = pq.read_table(path)
    assert got.column_names == list(kinds)
    rows = got.to_pylist()
    for r in rows:
        for name, kind in kinds.items():
            if kind == "json" and r[name] is not None:
                r[name] = json.loads(r[name])
    return rows


def _same(a: list[dict], b: list[dict]) -> bool:
    """Equal, with NaN equal to NaN."""
    def norm(v):
        return "NaN" if isinstance(v, float) and math.isnan(v) else v
    return [{k: norm(v) for k, v in r.items()} for r in a] == [{k: norm(v) for k, v in r.items()} for r in b]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_reads_back_equal_to_rows(tmp_path, fmt):
    with ResultStore(tmp_path / "r.sqlite") as store:
        fill(store)
        store.put_study_row("tricky", 0, 'quote " and, comma\nnewline', "ünï", kind="k", accuracy=1 / 3,
                            best_single=1e-300, gain=-0.0, extra={"s": "a,b"})
        read = _from_csv if fmt == "csv" else _from_parquet
        one = store.export(tmp_path / f"ev.{fmt}", fmt)
        assert one == tmp_path / f"ev.{fmt}" and _same(read(one, "evaluations"), store.rows("evaluations"))
        assert "logits" not in read(one, "evaluations")[0] and "logits_shape" in read(one, "evaluations")[0]  # no blob
        folder = store.export(tmp_path / "all", fmt, "all")
        assert sorted(p.name for p in folder.iterdir()) == sorted(f"{t}.{fmt}" for t in TABLES)
        for t in TABLES:
            assert _same(read(folder / f"{t}.{fmt}", t), store.rows(t)), t
        assert len(store.rows("study_rows")) == 3
        # Exporting again replaces the files with the current rows, and leaves other files in the folder alone.
        (folder / "notes.txt").write_text("mine")
        store.put_soup("sha-2", path="/s2", recipe="greedy", parameters={"k": 2}, ingredients=["a"], weights=[1.0],
                       manifest={})
        store.export(folder, fmt, "all")
        assert len(read(folder / f"soups.{fmt}", "soups")) == 2 and (folder / "notes.txt").read_text() == "mine"
    assert temporaries(tmp_path) == []


def test_failed_export_writes_nothing(tmp_path):
    with ResultStore(tmp_path / "r.sqlite") as store:
        fill(store)
        before = sorted(p.name for p in tmp_path.iterdir())
        with pytest.raises(LadleError, match="unknown table 'nope'") as e:
            store.export(tmp_path / "x.csv", "csv", "nope")
        assert "\n" not in str(e.value) and "r.sqlite" in str(e.value)
        with pytest.raises(LadleError, match="unknown export format 'xlsx'"):
            store.export(tmp_path / "x.xlsx", "xlsx")
        with pytest.raises(LadleError, match="output folder does not exist"):
            store.export(tmp_path / "missing" / "x.csv", "csv")
        with pytest.raises(LadleError, match="is a folder"):
            store.export(tmp_path, "csv")
        existing = tmp_path / "existing.csv"
        existing.write_text("old")
        with pytest.raises(LadleError, match="exists and is a file"):
            store.export(existing, "parquet", "all")
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before + ["existing.csv"])
        assert existing.read_text() == "old"
    assert temporaries(tmp_path) == []


# -- bad files -----------------------------------------------------------------------------------------

def _one_line_naming(error: LadleError, path: Path) -> str:
    text = str(error)
    assert "\n" not in text and str(path) in text
    return text


def test_files_that_are_not_stores_are_refused_in_one_line(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a database\n")
    with pytest.raises(LadleError) as e:
        ResultStore(text)
    assert "not an SQLite file" in _one_line_naming(e.value, text)
    assert text.read_text() == "hello, this is not a database\n"  # untouched

    empty = tmp_path / "empty.sqlite"
    empty.touch()
    with pytest.raises(LadleError, match="not an SQLite file"):
        ResultStore(empty)

    missing = tmp_path / "missing.sqlite"
    with pytest.raises(LadleError) as e:
        ResultStore(missing, create=False)
    assert "no such results store" in _one_line_naming(e.value, missing) and not missing.exists()

    with pytest.raises(LadleError, match="is a directory"):
        ResultStore(tmp_path)

    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(LadleError) as e:
        ResultStore(other)
    assert "not a ladle results store" in _one_line_naming(e.value, other)


def test_a_version_1_store_gains_the_grid_tables_and_keeps_its_rows(tmp_path):
    path = tmp_path / "old.sqlite"
    with ResultStore(path) as store:
        fill(store)
    conn = sqlite3.connect(path)
    for table in ("grids", "grid_models", "grid_soups", "grid_measures"):
        conn.execute(f"DROP TABLE {table}")
    conn.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    with ResultStore(path) as store:
        assert store.schema_version() == SCHEMA_VERSION == 2
        assert store.count("ingredients") == 3 and store.count("grid_soups") == 0
        store.put_grid("g", {})
        assert store.count("grids") == 1


def test_a_store_from_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "future.sqlite"
    with ResultStore(path) as store:
        fill(store)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    with pytest.raises(LadleError) as e:
        ResultStore(path)
    assert f"newer ladle (schema version {SCHEMA_VERSION + 1}" in _one_line_naming(e.value, path)


def test_cli_results_list_and_export(tmp_path, cli):
    db = tmp_path / "results.sqlite"
    with ResultStore(db) as store:
        fill(store)
    done = cli("results", "list", db)
    assert done.code == 0 and "evaluations" in done.out and "study_rows" in done.out
    done = cli("results", "export", db, "--format", "csv", "-o", tmp_path / "ev.csv")
    assert done.code == 0 and len(_from_csv(tmp_path / "ev.csv", "evaluations")) == 2
    text = tmp_path / "notes.txt"
    text.write_text("not a store")
    for bad in (text, tmp_path / "missing.sqlite"):
        done = cli("results", "export", bad, "--format", "csv", "-o", tmp_path / "x.csv")
        assert done.code == 2 and len(done.err_lines) == 1 and str(bad) in done.err
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "missing.sqlite").exists()
