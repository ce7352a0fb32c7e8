"""Robustness metrics against hand computations, and `ladle taste --corruptions` end to end."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from ladle.data import load_data
from ladle.errors import LadleError
from ladle.evaluation.evaluator import metrics_from_logits
from ladle.models import load_weights, tiny_cnn
from ladle.evaluation.robustness import (ALEXNET_CLEAN_ERROR, ALEXNET_ERRORS, ModelShift, ShiftReport, alexnet_baseline,
                              corruption_errors, mce, mean_accuracy, per_corruption, relative_mce)

# two corruptions × two severities, accuracies chosen so every error is a simple fraction
MODEL = {("fog", 1): 0.9, ("fog", 3): 0.7, ("snow", 1): 0.8, ("snow", 3): 0.4}
BASE = {("fog", 1): 0.8, ("fog", 3): 0.6, ("snow", 1): 0.6, ("snow", 3): 0.2}


def test_mce_matches_a_hand_computation():
    # CE_fog = (0.1 + 0.3) / (0.2 + 0.4) = 2/3; CE_snow = (0.2 + 0.6) / (0.4 + 0.8) = 2/3
    assert corruption_errors(MODEL, BASE) == pytest.approx({"fog": 2 / 3, "snow": 2 / 3})
    assert mce(MODEL, BASE) == pytest.approx(100 * 2 / 3)
    assert mce(BASE, BASE) == pytest.approx(100.0)
    assert mean_accuracy(MODEL) == pytest.approx(0.7)
    assert per_corruption(MODEL) == pytest.approx({"fog": 0.8, "snow": 0.6})


def test_relative_mce_matches_a_hand_computation():
    # model clean 0.95 (error .05), baseline clean 0.9 (error .1)
    # fog: ((.1-.05)+(.3-.05)) / ((.2-.1)+(.4-.1)) = .3/.4; snow: ((.2-.05)+(.6-.05)) / ((.4-.1)+(.8-.1)) = .7/1.0
    assert relative_mce(MODEL, 0.95, BASE, 0.9) == pytest.approx(100 * (0.75 + 0.7) / 2)


def test_alexnet_baseline_is_the_published_table():
    assert ALEXNET_ERRORS["gaussian_noise"][0] == 0.69528 and ALEXNET_CLEAN_ERROR == 0.4345
    # the published per-corruption means (Hendrycks & Dietterich's normalisers) follow from the table
    assert sum(ALEXNET_ERRORS["gaussian_noise"]) / 5 == pytest.approx(0.886428)
    assert sum(ALEXNET_ERRORS["jpeg_compression"]) / 5 == pytest.approx(0.606500)
    cells = [(c, s) for c in ALEXNET_ERRORS for s in range(1, 6)]
    clean, grid = alexnet_baseline(cells)
    assert clean == pytest.approx(0.5655)
    assert mce(grid, grid) == pytest.approx(100.0)
    with pytest.raises(LadleError, match="not 'speckle_noise'"):
        alexnet_baseline([("speckle_noise", 1)])


def _report(baseline="best") -> ShiftReport:
    return ShiftReport("test", "imagenet-c", [
        ModelShift("a", "ingredient", 0.9, BASE),
        ModelShift("b", "ingredient", 0.85, {k: v + 0.05 for k, v in BASE.items()}),
        ModelShift("soup", "soup", 0.95, MODEL),
    ], baseline)


def test_shift_report_soup_gain_uses_each_columns_best_ingredient():
    rows = {r["model"]: r for r in _report().summary()}
    # best clean ingredient: a (0.9); best corrupted ingredient: b (mean 0.55 + 0.05 = 0.6)
    assert rows["soup"]["gain_clean"] == pytest.approx(0.05)
    assert rows["soup"]["gain_corrupted"] == pytest.approx(0.7 - 0.6)
    assert rows["a"]["gain_clean"] is None
    assert rows["a"]["mce"] == pytest.approx(100.0)  # baseline "best" is a, the best clean ingredient
    assert rows["soup"]["mce"] == pytest.approx(100 * 2 / 3)
    assert rows["soup"]["relative_robustness"] == pytest.approx(0.95 - 0.7)
    assert {r["model"]: r["mce"] for r in _report("b").summary()}["b"] == pytest.approx(100.0)
    with pytest.raises(LadleError, match="'c' is none of the models"):
        _report("c").summary()


def test_shift_report_tables_csv_and_json():
    report = _report()
    summary, cells = report.to_csv()
    rows = list(csv.DictReader(io.StringIO(summary)))
    assert [r["model"] for r in rows] == ["a", "b", "soup"]
    assert float(rows[2]["corrupted"]) == pytest.approx(0.7)
    cell_rows = list(csv.DictReader(io.StringIO(cells)))
    assert len(cell_rows) == 3 * 4
    assert {(r["corruption"], int(r["severity"])) for r in cell_rows} == set(MODEL)
    text = report.format()
    assert "mCE" in text and "66.7" in text and "+5.00" in text and "+10.00" in text
    assert report.to_dict()["mce_baseline"] == "a"
    assert "fog" in report.per_corruption_table()


def test_baseline_that_never_errs_gives_nan_not_a_crash():
    perfect = {k: 1.0 for k in MODEL}
    assert math.isnan(mce(MODEL, perfect))


@pytest.fixture
def trained_pair(tmp_path):
    """Two tiny CNNs briefly trained on 32 px digits, saved as ingredients."""
    train = load_data("digits:train", image_size=32)
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = tiny_cnn(10)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        for _ in range(30):
            idx = torch.randint(0, len(train), (64,))
            loss = torch.nn.functional.cross_entropy(model((train.x[idx] - 0.5) / 0.5), train.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        path = tmp_path / f"ing{seed}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        paths.append(path)
    return paths


def test_taste_with_corruptions_end_to_end(tmp_path, cli, trained_pair):
    cache, report = tmp_path / "cache", tmp_path / "report"
    args = ["taste", *trained_pair, "--model", "ladle.models:tiny_cnn", "--data", "digits:test", "--image-size", "32",
            "--corruptions", "imagenet-c:gaussian_noise,fog", "--corruptions", "laion-c:mosaic",
            "--severities", "1,5", "--corruption-cache", cache, "--report", report]
    r = cli(*args)
    assert r.code == 0, r.err
    assert "digits:test under imagenet-c: 4 corrupted sets (severities 1, 5)" in r.out
    assert "digits:test under laion-c: 2 corrupted sets" in r.out
    assert len(list(cache.rglob("*.npz"))) == 6
    names = {p.name for p in report.iterdir()}
    for suite in ("imagenet-c", "laion-c"):
        for suffix in ("-summary.csv", "-cells.csv", ".json", "-heatmaps.png", "-severity.png"):
            assert f"{suite}-digits_test{suffix}" in names
    shift = json.loads((report / "imagenet-c-digits_test.json").read_text())
    assert [r["model"] for r in shift["summary"]][-2:] == ["uniform soup", "ensemble of 2"]

    # every cell is the ingredient's real accuracy on that corrupted set, read back from the cache as data
    model = tiny_cnn(10)
    load_weights(model, load_file(str(trained_pair[0])), "ing0")
    model.eval()
    for cell in shift["cells"]:
        if cell["model"] != str(trained_pair[0]) or cell["severity"] != 5:
            continue
        [path] = [p for p in cache.rglob("*severity5-seed0.npz") if p.parent.name == cell["corruption"]]
        data = load_data(f"{path}:all", image_size=32)
        with torch.no_grad():
            logits = model((data.x - 0.5) / 0.5)
        assert cell["accuracy"] == pytest.approx(metrics_from_logits(logits, data.y).accuracy)

    # second run: every set from the cache, same numbers
    r2 = cli(*args[:-2])
    assert r2.code == 0 and r2.out == r.out


def test_taste_alexnet_baseline_needs_imagenet_c_names(tmp_path, cli, trained_pair):
    r = cli("taste", *trained_pair, "--model", "ladle.models:tiny_cnn", "--data", "digits:test", "--image-size", "32",
            "--corruptions", "laion-c:mosaic", "--severities", "1", "--corruption-cache", tmp_path / "c",
            "--mce-baseline", "alexnet", "--report", tmp_path / "r")
    assert r.code == 2 and len(r.err_lines) == 1
    assert "mce-baseline: AlexNet errors are published for the 15 ImageNet-C corruptions only, not 'mosaic'" in r.err
    assert not (tmp_path / "r").exists()
