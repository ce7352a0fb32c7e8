"""End to end through the `ladle` command: train a sweep, cook greedy/learned/season soups, taste them.

A 3-layer CNN on 16×16 digits keeps it fast; every number the commands print is checked against an
independent computation with the public API.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import ladle
from ladle.cli.main import main
from ladle.data import load_data
from ladle.evaluation.evaluator import batchnorm_keys
from ladle.models import tiny_cnn
from ladle.training import accuracy, sample_hyperparams

from conftest import sha256_of, snapshot

MODEL = "ladle.models:tiny_cnn"
SIZE = "16"
SWEEP = ["train", "sweep", "--model", MODEL, "--data", "digits", "--runs", "2", "--epochs", "1", "--lp-steps", "2",
         "--image-size", SIZE]
TASTING = ["--model", MODEL, "--image-size", SIZE]


def run(*args) -> tuple[int, str, str]:
    """`ladle ARGS…` in-process, for module-scoped fixtures (the `cli` fixture is per test)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    code, stdout, stderr = run(*SWEEP, "--out", out)
    assert code == 0, stderr
    return out, stdout


@pytest.fixture(scope="module")
def ingredients(sweep):
    return [sweep[0] / "ingredient-00.safetensors", sweep[0] / "ingredient-01.safetensors"]


@pytest.fixture(scope="module")
def digits16():
    return {s: load_data(f"digits:{s}", image_size=16) for s in ("heldout", "test")}


@pytest.fixture(scope="module")
def greedy(tmp_path_factory, ingredients):
    soup = tmp_path_factory.mktemp("greedy") / "soup.safetensors"
    code, stdout, stderr = run("cook", "greedy", *ingredients, *TASTING, "--data", "digits", "-o", soup)
    return code, stdout, stderr, soup


def model_with(path: Path, num_classes: int = 10) -> torch.nn.Module:
    model = tiny_cnn(num_classes)
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def test_sweep_writes_stock_and_ingredients(sweep, digits16):
    out, stdout = sweep
    assert sorted(p.name for p in out.iterdir()) == [
        "ingredient-00.safetensors", "ingredient-00.safetensors.json", "ingredient-01.safetensors",
        "ingredient-01.safetensors.json", "stock.safetensors", "stock.safetensors.json"]
    stock = ladle.read_manifest(out / "stock.safetensors")
    assert stock["role"] == "stock" and stock["model"] == MODEL
    assert stock["linear_probe"] == {"steps": 2, "lr": 0.01, "seed": 0}
    stock_state = load_file(str(out / "stock.safetensors"))
    bn = batchnorm_keys(tiny_cnn())
    lines = stdout.splitlines()
    assert len(lines) == 2
    for run_no, line in enumerate(lines):
        path = out / f"ingredient-{run_no:02d}.safetensors"
        record = ladle.read_manifest(path)
        assert record["role"] == "ingredient" and record["run"] == run_no and record["model"] == MODEL
        hp = record["hyperparameters"]
        assert hp == asdict(sample_hyperparams(0, run_no, epochs=1, batch_size=32))
        assert hp["epochs"] == 1 and hp["seed"] == run_no
        # the recorded held-out accuracy is the ingredient's, on the held-out split
        acc = accuracy(model_with(path), digits16["heldout"], (0.5,) * 3, (0.5,) * 3)
        assert record["heldout_accuracy"] == acc
        assert record["data"]["heldout"]["fingerprint"] == digits16["heldout"].source["fingerprint"]
        assert record["data"]["train"]["spec"] == "digits:train" and record["data"]["train"]["image_size"] == 16
        assert math.isfinite(record["final_train_loss"])
        assert line == (f"{path}: held-out {100 * acc:.2f}%  lr {hp['lr']:g} wd {hp['weight_decay']:g} "
                        f"ls {hp['label_smoothing']:g} shift {hp['shift']} seed {hp['seed']}")
        state = load_file(str(path))
        assert set(state) == set(stock_state)
        for k in bn:  # BatchNorm statistics stay frozen during fine-tuning
            assert torch.equal(state[k], stock_state[k]), k
        assert not torch.equal(state["0.weight"], stock_state["0.weight"])  # every weight is fine-tuned


def test_sweep_again_does_not_retrain(sweep, cli):
    out, first_stdout = sweep
    before, times = snapshot(out), mtimes(out)
    r = cli(*SWEEP, "--out", out)
    assert r.code == 0 and r.out == first_stdout
    assert snapshot(out) == before and mtimes(out) == times


def test_a_sweep_is_reproducible_from_its_seed(sweep, cli, tmp_path):
    """Same seed, fresh folder: the same stock (even for a model without pretrained weights) and ingredients."""
    runs = SWEEP.index("--runs") + 1
    r = cli(*SWEEP[:runs], 1, *SWEEP[runs + 1 :], "--out", tmp_path / "again")
    assert r.code == 0, r.err
    for name in ("stock.safetensors", "ingredient-00.safetensors"):
        mine, theirs = load_file(str(tmp_path / "again" / name)), load_file(str(sweep[0] / name))
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs), name
    r = cli(*SWEEP[:runs], 0, *SWEEP[runs + 1 :], "--seed", 1, "--out", tmp_path / "seed1")
    assert r.code == 0, r.err
    other = load_file(str(tmp_path / "seed1" / "stock.safetensors"))
    assert not torch.equal(other["0.weight"], load_file(str(sweep[0] / "stock.safetensors"))["0.weight"])


def test_a_damaged_ingredient_is_retrained(sweep, cli, tmp_path):
    out = tmp_path / "sweep"
    shutil.copytree(sweep[0], out)
    damaged = out / "ingredient-01.safetensors"
    original = {k: v.clone() for k, v in load_file(str(damaged)).items()}
    record = ladle.read_manifest(damaged)
    os.truncate(damaged, damaged.stat().st_size // 2)
    keep = {n: (sha256_of(out / n), (out / n).stat().st_mtime_ns) for n in ("stock.safetensors", "ingredient-00.safetensors")}
    r = cli(*SWEEP, "--out", out)
    assert r.code == 0, r.err
    for n, (sha, mtime) in keep.items():
        assert (sha256_of(out / n), (out / n).stat().st_mtime_ns) == (sha, mtime)
    again = load_file(str(damaged))  # whole again, and the same run: same hyper-parameters, same weights
    assert ladle.read_manifest(damaged)["hyperparameters"] == record["hyperparameters"]
    assert set(again) == set(original) and all(torch.equal(again[k], original[k]) for k in original)


def test_cook_greedy(greedy, ingredients):
    code, stdout, stderr, soup = greedy
    assert code == 0, stderr
    manifest = ladle.read_manifest(soup)
    g = manifest["trace"]["greedy"]
    assert (g["split"], g["metric"], g["accept"]) == ("digits:heldout", "accuracy", "ge")
    # the ingredients' held-out scores are the accuracies the sweep recorded on the same split
    assert g["ingredient_scores"] == [ladle.read_manifest(p)["heldout_accuracy"] for p in ingredients]
    steps = g["steps"]
    assert len(steps) == 2 and sorted(s["index"] for s in steps) == [0, 1] and steps[0]["accepted"]
    assert [s["candidate"] for s in steps] == [str(ingredients[s["index"]]) for s in steps]
    accepted = [s["index"] for s in steps if s["accepted"]]
    assert manifest["weights"] == [1 / len(accepted) if i in accepted else 0.0 for i in range(2)]
    assert steps[-1]["soup_size"] == len(accepted)
    lines = stdout.splitlines()
    assert lines[0] == "greedy soup (accuracy on digits:heldout, accept if not worse)"
    assert lines[1].split() == ["pass", "candidate", "own", "soup", "accepted", "size"]
    for line, s in zip(lines[2:4], steps):
        shown = s["candidate"] if len(s["candidate"]) <= 39 else "…" + s["candidate"][-38:]
        assert line.split() == ["1", shown,
                                f"{100 * s['ingredient_score']:.2f}", f"{100 * s['soup_score']:.2f}",
                                "yes" if s["accepted"] else "no", str(s["soup_size"])]
    assert lines[4].startswith(f"wrote {soup}: 16 tensors, recipe greedy, weights ")
    assert lines[5] == f"sha256 {sha256_of(soup)}  {soup.name}"
    # the soup is the weighted average of the ingredients
    state, ings = load_file(str(soup)), [load_file(str(p)) for p in ingredients]
    expected = sum(w * ing["0.weight"] for w, ing in zip(manifest["weights"], ings))
    assert torch.allclose(state["0.weight"], expected, atol=1e-6)


def test_cook_learned(ingredients, cli, tmp_path):
    out = tmp_path / "learned.safetensors"
    r = cli("cook", "learned", *ingredients, *TASTING, "--data", "digits", "--per", "layer", "--epochs", 1, "-o", out)
    assert r.code == 0, r.err
    manifest = ladle.read_manifest(out)
    assert manifest["recipe"] == "learned" and manifest["parameters"] == {"per": "layer", "epochs": 1}
    learned = manifest["trace"]["learned"]
    assert learned["per"] == "layer" and learned["split"] == "digits:heldout" and len(learned["loss_per_epoch"]) == 1
    assert len(manifest["weights"]) == 2 and math.isclose(sum(manifest["weights"]), 1.0)
    assert set(learned["weights"]) >= {"0.weight", "8.weight", "8.bias"}
    assert r.out.splitlines()[0].startswith("learned soup (per layer): temperature ")


def test_cook_season(ingredients, cli, tmp_path):
    out = tmp_path / "season.safetensors"
    r = cli("cook", "season", *ingredients, *TASTING, "--data", "digits:test", "--shots", 20, "-o", out)
    assert r.code == 0, r.err
    manifest = ladle.read_manifest(out)
    season = manifest["trace"]["season"]
    assert manifest["parameters"] == {"shots": 20}
    assert season["shots"] == 20 and season["split"] == "digits:test-20-shots" and season["candidates"] == 11
    assert season["chosen"]["weights"] == manifest["weights"]
    assert r.out.splitlines()[0] == (f"seasoning: 11 candidates (simplex grid, step 1/10) on 20 shots; "
                                     f"chosen accuracy {100 * season['chosen']['accuracy']:.2f}%")


def _uniform(paths) -> dict[str, torch.Tensor]:
    states = [load_file(str(p)) for p in paths]
    return {k: (sum(s[k] for s in states) / len(states)) if v.is_floating_point() else v for k, v in states[0].items()}


def test_taste_json(greedy, ingredients, digits16, cli, tmp_path):
    soup = greedy[3]
    report = tmp_path / "report"
    r = cli("taste", soup, *ingredients, *TASTING, "--data", "digits:test", "--json", "--report", report)
    assert r.code == 0, r.err
    data = json.loads(r.out)
    assert data["splits"] == ["digits:test"]
    rows = {(row["name"], row["bn"]): row for row in data["rows"]}
    assert [(row["name"], row["kind"]) for row in data["rows"]] == [
        (str(ingredients[0]), "ingredient"), (str(ingredients[1]), "ingredient"), ("uniform soup", "soup"),
        (str(soup), "soup"), ("ensemble of 2", "ensemble")]
    test = digits16["test"]
    ing_acc = []
    for p in ingredients:
        m = rows[(str(p), "")]["metrics"]["digits:test"]
        assert m["n"] == 1197 and m["accuracy"] == accuracy(model_with(p), test, (0.5,) * 3, (0.5,) * 3)
        assert rows[(str(p), "")]["soup_gain"] is None
        ing_acc.append(m["accuracy"])
    assert data["best_single"] == {"digits:test": max(ing_acc)}
    for row in data["rows"]:
        if row["kind"] != "ingredient":
            acc = row["metrics"]["digits:test"]["accuracy"]
            assert row["soup_gain"] == {"digits:test": acc - max(ing_acc)}
    uniform = tiny_cnn().eval()
    uniform.load_state_dict(_uniform(ingredients))
    assert rows[("uniform soup", "")]["metrics"]["digits:test"]["accuracy"] == pytest.approx(
        accuracy(uniform, test, (0.5,) * 3, (0.5,) * 3), abs=1.5 / 1197)
    soup_model = model_with(soup)
    assert rows[(str(soup), "")]["metrics"]["digits:test"]["accuracy"] == accuracy(soup_model, test, (0.5,) * 3, (0.5,) * 3)
    # the ensemble averages the ingredients' probabilities
    with torch.no_grad():
        x = (test.x - 0.5) / 0.5
        probs = torch.stack([model_with(p)(x).double().softmax(-1) for p in ingredients]).mean(0)
    ens = (probs.argmax(-1) == test.y).double().mean().item()
    assert rows[("ensemble of 2", "")]["metrics"]["digits:test"]["accuracy"] == pytest.approx(ens, abs=1.5 / 1197)
    assert json.loads((report / "taste.json").read_text()) == data
    assert "best single ingredient" in (report / "taste.md").read_text()


def test_taste_table_and_bn_all(greedy, ingredients, cli):
    soup = greedy[3]
    r = cli("taste", soup, *ingredients, *TASTING, "--data", "digits:test", "--bn", "all", "--json")
    assert r.code == 0, r.err
    rows = json.loads(r.out)["rows"]
    assert len(rows) == 2 + 3 * 2 + 1
    for name in ("uniform soup", str(soup)):
        mine = [row for row in rows if row["name"] == name]
        assert [row["bn"] for row in mine] == ["average", "recalibrate", "first"] and {row["kind"] for row in mine} == {"soup"}
        acc = {row["bn"]: row["metrics"]["digits:test"]["accuracy"] for row in mine}
        # the sweep froze BatchNorm statistics, so every ingredient has the stock's: averaging them changes nothing
        assert acc["average"] == acc["first"]
    table = cli("taste", soup, *ingredients, *TASTING, "--data", "digits:test")
    assert table.code == 0
    lines = table.out.splitlines()
    assert lines[0].split() == ["model", "kind", "digits:test", "acc", "gain"]
    assert len(lines) == 2 + 5 + 1 and lines[-1].startswith("best single ingredient")


# ---------------------------------------------------------------------------------- spec errors


@pytest.fixture(scope="module")
def empty_npz(tmp_path_factory):
    path = tmp_path_factory.mktemp("empty") / "empty.npz"
    np.savez(path, x=np.zeros((0, 8, 8), np.uint8), y=np.zeros(0, np.int64))
    return path


ERRORS = {
    "taste-unknown-model": (["taste", "{I0}", "{I1}", "--model", "timm:nonexistent", "--data", "digits:test"],
                            "model: timm has no model 'nonexistent'"),
    "taste-class-count": (["taste", "{I0}", "{I1}", *TASTING, "--num-classes", "5", "--data", "digits:test"],
                          "model has 5 outputs but the data has 10 classes (--num-classes)"),
    "cook-class-count": (["cook", "greedy", "{I0}", "{I1}", *TASTING, "--num-classes", "5", "--data", "digits", "-o", "{OUT}"],
                         "model has 5 outputs but the data has 10 classes (--num-classes)"),
    "taste-keys": (["taste", "{I0}", "{I1}", "--model", "timm:resnet18", "--num-classes", "10", "--data", "digits:test",
                    "--image-size", "16"], "does not fit the model"),
    "cook-keys": (["cook", "greedy", "{I0}", "{I1}", "--model", "timm:resnet18", "--num-classes", "10", "--data", "digits",
                   "--image-size", "16", "-o", "{OUT}"], "does not fit the model"),
    "taste-empty-data": (["taste", "{I0}", "{I1}", *TASTING, "--data", "{EMPTY}"], "split 'test' holds no examples"),
    "cook-empty-data": (["cook", "greedy", "{I0}", "{I1}", *TASTING, "--data", "{EMPTY}", "-o", "{OUT}"],
                        "split 'heldout' holds no examples"),
    "greedy-no-model": (["cook", "greedy", "{I0}", "{I1}", "--data", "digits", "-o", "{OUT}"], "cook: --model is required"),
    "greedy-no-data": (["cook", "greedy", "{I0}", "{I1}", "--model", MODEL, "-o", "{OUT}"], "cook: --data is required"),
    "sweep-unknown-model": (["train", "sweep", "--model", "timm:nonexistent", "--data", "digits", "--out", "{OUTDIR}"],
                            "model: timm has no model 'nonexistent'"),
    "sweep-class-count": (["train", "sweep", "--model", MODEL, "--num-classes", "5", "--data", "digits", "--image-size", "8",
                           "--out", "{OUTDIR}"], "model has 5 outputs but the data has 10 classes (--num-classes)"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_spec_errors_are_one_line_exit_2(case, ingredients, empty_npz, cli, tmp_path):
    args, message = ERRORS[case]
    out = tmp_path / "soup.safetensors"
    subst = {"{I0}": ingredients[0], "{I1}": ingredients[1], "{OUT}": out, "{EMPTY}": empty_npz, "{OUTDIR}": tmp_path / "sw"}
    r = cli(*[subst.get(a, a) for a in args])
    assert r.code == 2
    assert len(r.err_lines) == 1, r.err
    assert r.err_lines[0].startswith("ladle: error: ") and message in r.err_lines[0]
    assert r.out == ""
    assert not out.exists() and not Path(str(out) + ".json").exists() and not (tmp_path / "sw").exists()
    if case.endswith("keys"):
        assert "ingredient-00.safetensors" in r.err and "tensor '" in r.err
    if "empty" in case:
        assert str(empty_npz) in r.err


def test_a_soup_tasted_alone_has_no_gain_to_show(greedy, cli):
    """Without ingredients there is no best single one: the gain cells stay empty (no 'nan'), no such row."""
    soup = greedy[3]
    r = cli("taste", soup, *TASTING, "--data", "digits:test", "--no-uniform", "--corruptions", "imagenet-c:contrast",
            "--severities", "2")
    assert r.code == 0, r.err
    assert "nan" not in r.out and "best single ingredient" not in r.out
    lines = r.out.splitlines()
    row = next(line for line in lines if line.startswith(str(soup)[-32:]) or line.startswith("…"))
    want = 100 * accuracy(model_with(soup), load_data('digits:test', image_size=16), (0.5,) * 3, (0.5,) * 3)
    assert row.split()[1:] == ["soup", f"{want:.2f}"]


def test_greedy_into_a_directory_has_a_card_whose_command_remakes_it(ingredients, tmp_path):
    import shlex

    import yaml

    out = tmp_path / "greedy-dir"
    code, stdout, stderr = run("cook", "greedy", *ingredients, *TASTING, "--data", "digits", "-o", out)
    assert code == 0, stderr
    card = (out / "README.md").read_text()
    assert yaml.safe_load(card.split("---\n")[1])["tags"] == ["model-soup", "ladle", "greedy"]
    assert "## How the weights were chosen" in card and "greedy soup (accuracy on digits:heldout" in card
    command = shlex.split(card.split("```bash\n")[1].split("\n```")[0])
    assert command[:3] == ["ladle", "cook", "greedy"]
    assert command[command.index("--model") + 1] == MODEL and command[command.index("--data") + 1] == "digits"
    assert command[command.index("--image-size") + 1] == SIZE
    again = tmp_path / "again"
    command[command.index("-o") + 1] = str(again)
    code, _, stderr = run(*command[1:])  # the words after `ladle`
    assert code == 0, stderr
    first, second = load_file(str(out / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert ladle.read_manifest(again)["weights"] == ladle.read_manifest(out)["weights"]
