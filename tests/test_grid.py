"""The pairwise grid: soups of every pair stored row by row, figures that match hand-made soups, resumable."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import save_file

from ladle.data import load_data
from ladle.evaluation.evaluator import Evaluator, batchnorm_keys, metrics_from_logits
from ladle.evaluation.similarity import symmetric_kl
from ladle.models.specs import tiny_cnn
from ladle.results.store import ResultStore
from ladle.analysis.predict import pairs_from_store
from ladle.studies.grid import GridSettings, build_context, mix_pair, parse_alphas, run_grid, split_scores
from ladle.training.loop import cosine, sgd, train
from ladle.training.objectives import CrossEntropy

from conftest import ladle_script, run_process

SIZE = 8
MODEL = "ladle.models:tiny_cnn"
SETTINGS = GridSettings(model=MODEL, data="digits:test", image_size=SIZE, corruptions=("imagenet-c:gaussian_noise",),
                        severities="3", threads=1)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A stock trained briefly from scratch and four continuations of it with other seeds and learning rates."""
    folder = tmp_path_factory.mktemp("grid-models")
    data = load_data("digits:train", image_size=SIZE)
    kwargs = dict(bn="train", batch_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
    torch.manual_seed(0)
    stock = tiny_cnn(10)
    train(stock, CrossEntropy(), data, optimiser=functools.partial(sgd, lr=0.1, weight_decay=5e-4),
          schedule=functools.partial(cosine, lr=0.1), epochs=2, seed=0, **kwargs)
    save_file({k: v.contiguous() for k, v in stock.state_dict().items()}, str(folder / "stock.safetensors"))
    paths = []
    for i in range(4):
        model = tiny_cnn(10)
        model.load_state_dict(stock.state_dict())
        train(model, CrossEntropy(), data, optimiser=functools.partial(sgd, lr=0.05 * (i + 1), weight_decay=5e-4),
              schedule=functools.partial(cosine, lr=0.05 * (i + 1)), epochs=1, seed=i + 1, **kwargs)
        paths.append(folder / f"m{i}.safetensors")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(paths[-1]))
    return folder, paths


def states(paths):
    from safetensors.torch import load_file

    return [load_file(str(p)) for p in paths]


def rows_without_time(rows):
    return [{k: v for k, v in r.items() if k != "created"} for r in rows]


def test_alphas_parse_as_ranges_lists_or_one_value():
    assert parse_alphas(None) == [0.5] and parse_alphas(None, 0.3) == [0.3]
    assert parse_alphas("0:1:0.25") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert parse_alphas("0.5,0.25,0.5") == [0.25, 0.5]
    for bad, words in (("0:1:0", "STEP > 0"), ("1.5", "[0, 1]"), ("a,b", "START:STOP:STEP")):
        with pytest.raises(Exception, match=words.replace("[", r"\[").replace("]", r"\]")):
            parse_alphas(bad)


def test_batched_soups_score_like_one_soup_at_a_time(models):
    _, paths = models
    a, b, c, _ = states(paths)
    soups = [mix_pair(a, b, 0.5), mix_pair(a, c, 0.25), mix_pair(b, c, 0.75)]
    one = split_scores(build_context(SETTINGS.__class__(**{**SETTINGS.__dict__, "soups_per_pass": 1})), soups)
    batched = split_scores(build_context(SETTINGS.__class__(**{**SETTINGS.__dict__, "soups_per_pass": 3})), soups)
    for x, y in zip(one, batched):
        assert x.keys() == y.keys() and len(x) == 2  # clean and one corrupted split
        for split in x:
            assert x[split][0] == pytest.approx(y[split][0], abs=0.1)  # at most one image flips on a near-tie
            assert x[split][1] == pytest.approx(y[split][1], abs=1e-4)


def test_a_grid_stores_every_pair_its_gains_and_measures(models, tmp_path):
    folder, paths = models
    db = tmp_path / "grid.sqlite"
    result = run_grid(paths, SETTINGS, alphas=[0.0, 0.5], db=db, executor="local:1", base=folder / "stock.safetensors",
                      collapse=30.0, info={str(paths[0]): {"branch_epoch": 3, "variant": "v1"}})
    assert (result.models, result.pairs, result.soups, result.computed) == (4, 6, 12, 12)
    with ResultStore(db) as store:
        own = {r["model"]: r for r in store.grid_models(result.grid)}
        soups = store.grid_soups(result.grid)
        measures = {(r["a"], r["b"]): r["measures"] for r in store.grid_measures(result.grid)}
    assert len(own) == 4 and len(soups) == 12 and len(measures) == 6
    assert own[min(own, key=lambda m: own[m]["path"])]["branch_epoch"] == 3  # m0's label
    # each model's own figures are the evaluator's, on clean data and on the corrupted suite
    data = load_data("digits:test", image_size=SIZE)
    ev = Evaluator(tiny_cnn(10), {"test": data})
    by_path = {r["path"]: r for r in own.values()}
    for p, state in zip(paths, states(paths)):
        m = metrics_from_logits(ev.logits(str(p), state, "test"), data.y)
        assert by_path[str(p)]["accuracy"] == pytest.approx(m.accuracy * 100, abs=1e-9)
        assert by_path[str(p)]["loss"] == pytest.approx(m.nll, rel=1e-5)
        assert 0 <= by_path[str(p)]["corrupted_accuracy"] <= 100
    for r in soups:
        a, b = own[r["a"]], own[r["b"]]
        assert r["a"] < r["b"]
        assert r["gain"] == pytest.approx(r["accuracy"] - max(a["accuracy"], b["accuracy"]), abs=1e-9)
        assert r["loss_gain"] == pytest.approx(min(a["loss"], b["loss"]) - r["loss"], abs=1e-9)
        assert r["corrupted_gain"] == pytest.approx(
            r["corrupted_accuracy"] - max(a["corrupted_accuracy"], b["corrupted_accuracy"]), abs=1e-9)
        assert r["collapse"] == int(r["accuracy"] < 30.0)
        if r["alpha"] == 0.0:  # the soup (1 − 0)·a + 0·b is a itself
            assert r["accuracy"] == pytest.approx(a["accuracy"], abs=1e-9) and r["loss"] == pytest.approx(a["loss"], rel=1e-5)
    # weight measures leave BatchNorm running statistics out; prediction measures are the models' own
    s = dict(zip([str(p) for p in paths], states(paths)))
    bn = batchnorm_keys(tiny_cnn(10))
    stock = states([folder / "stock.safetensors"])[0]
    for (x, y), m in measures.items():
        sa, sb = s[own[x]["path"]], s[own[y]["path"]]
        keys = [k for k in sa if k not in bn and sa[k].is_floating_point()]
        va = torch.cat([sa[k].double().flatten() for k in keys])
        vb = torch.cat([sb[k].double().flatten() for k in keys])
        vs = torch.cat([stock[k].double().flatten() for k in keys])
        assert m["l2"] == pytest.approx((va - vb).norm().item(), rel=1e-9)
        assert m["cosine"] == pytest.approx(torch.nn.functional.cosine_similarity(va, vb, dim=0).item(), rel=1e-9)
        assert m["task_cosine"] == pytest.approx(
            torch.nn.functional.cosine_similarity(va - vs, vb - vs, dim=0).item(), rel=1e-9)
        la = ev.logits(own[x]["path"], sa, "test")
        lb = ev.logits(own[y]["path"], sb, "test")
        assert m["kl"] == pytest.approx(symmetric_kl(la, lb), rel=1e-5)
        assert set(m) >= {"kl", "logit_mse", "disagreement", "cka_logits", "cka_features"}
    # the analysis reads the grid back as a pairs table
    with ResultStore(db) as store:
        table = pairs_from_store(store, alpha=0.5)
    assert len(table.pairs) == 6 and len(table.models) == 4 and table.num_classes == 10
    assert table.models[str(paths[0])]["branch_epoch"] == 3


def test_a_rerun_computes_nothing_and_new_models_only_add_their_pairs(models, tmp_path):
    _, paths = models
    db = tmp_path / "grid.sqlite"
    first = run_grid(paths[:3], SETTINGS, alphas=[0.5], db=db, executor="local:1")
    with ResultStore(db) as store:
        before = {(r["a"], r["b"]): r["created"] for r in store.grid_soups(first.grid)}
    again = run_grid(paths[:3], SETTINGS, alphas=[0.5], db=db, executor="local:1")
    assert (again.grid, again.computed, again.soups) == (first.grid, 0, 3)
    more = run_grid(paths, SETTINGS, alphas=[0.5], db=db, executor="local:1")
    assert (more.computed, more.soups) == (3, 6)
    with ResultStore(db) as store:
        after = {(r["a"], r["b"]): r["created"] for r in store.grid_soups(first.grid)}
    assert all(after[k] == v for k, v in before.items())  # a finished soup is never recomputed


def test_a_killed_grid_resumes_without_recomputing(models, tmp_path):
    _, paths = models
    db = tmp_path / "grid.sqlite"
    args = [ladle_script(), "grid", *paths, "--model", MODEL, "--data", "digits:test", "--image-size", SIZE,
            "--db", db, "--alphas", "0:1:0.05", "--soups-per-task", 2, "--soups-per-pass", 1, "--executor", "local:1"]
    proc = subprocess.Popen([str(a) for a in args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 120
        count = 0
        while time.time() < deadline and count < 10:
            time.sleep(0.2)
            if db.exists():
                try:
                    with ResultStore(db) as store:
                        count = store.count("grid_soups")
                except Exception:  # noqa: BLE001  the store may be mid-creation
                    pass
        assert count >= 10, "the grid did not get going"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with ResultStore(db) as store:
        before = {(r["a"], r["b"], r["alpha"]): r["created"] for r in store.rows("grid_soups")}
    assert 10 <= len(before) < 6 * 21
    done = run_process(args, timeout=300)
    assert done.code == 0, done.err
    assert f"{6 * 21 - len(before)} computed now" in done.out
    with ResultStore(db) as store:
        after = {(r["a"], r["b"], r["alpha"]): r["created"] for r in store.rows("grid_soups")}
    assert len(after) == 6 * 21 and all(after[k] == v for k, v in before.items())


def test_local_and_ray_executors_give_identical_rows(models, tmp_path):
    pytest.importorskip("ray")
    _, paths = models
    rows = {}
    for name in ("local:2", "ray"):
        db = tmp_path / f"{name.replace(':', '-')}.sqlite"
        result = run_grid(paths[:3], SETTINGS, alphas=[0.25, 0.5], db=db, executor=name, soups_per_task=2)
        with ResultStore(db) as store:
            rows[name] = (rows_without_time(store.grid_soups(result.grid)),
                          rows_without_time(store.grid_measures(result.grid)))
    assert rows["local:2"] == rows["ray"] and len(rows["ray"][0]) == 6


def test_grid_errors_are_one_line(models, tmp_path, cli):
    _, paths = models
    done = cli("grid", paths[0], "--model", MODEL, "--data", "digits:test", "--db", tmp_path / "g.sqlite")
    assert done.code == 2 and done.err_lines == ["ladle: error: grid: needs at least two checkpoints"]
    done = cli("grid", paths[0], paths[0], "--model", MODEL, "--data", "digits:test", "--db", tmp_path / "g.sqlite")
    assert done.code == 2 and done.err_lines == [f"ladle: error: {paths[0]}: grid: given twice"]
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(paths[0].read_bytes())
    done = cli("grid", paths[0], copy, "--model", MODEL, "--data", "digits:test", "--image-size", SIZE,
               "--db", tmp_path / "g.sqlite")
    assert done.code == 2 and len(done.err_lines) == 1 and f"the same weights as {paths[0]}" in done.err
    done = cli("grid", *paths[:2], "--model", MODEL, "--data", "digits:test", "--db", tmp_path / "g.sqlite",
               "--alphas", "0:2:1")
    assert done.code == 2 and "alphas: every α must lie in [0, 1], got 2.0" in done.err
    wrong = tmp_path / "wide.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_cnn(4).state_dict().items()}, str(wrong))
    done = cli("grid", paths[0], wrong, "--model", MODEL, "--data", "digits:test", "--image-size", SIZE,
               "--db", tmp_path / "g2.sqlite")
    assert done.code == 2 and done.err_lines[-1].startswith(f"ladle: error: {wrong}: tensor '8.weight': does not fit")
    assert [line for line in done.err_lines if "error" in line] == done.err_lines[-1:]  # after one progress line
