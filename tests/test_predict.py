"""`ladle check A B --predict`: the measures of a pair, and the gain probability fit on a stored grid."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from ladle.analysis.predict import pair_measures, predict_gain
from ladle.models.specs import tiny_cnn
from ladle.results.store import ResultStore


@pytest.fixture
def two(tmp_path):
    torch.manual_seed(0)
    a = tiny_cnn(10).state_dict()
    b = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in a.items()}
    b["1.running_var"] = a["1.running_var"] + 100.0  # BatchNorm statistics are no part of the weight measures
    paths = []
    for name, state in (("a", a), ("b", b)):
        paths.append(tmp_path / f"{name}.safetensors")
        save_file({k: v.contiguous() for k, v in state.items()}, str(paths[-1]))
    return paths, a, b


def grid_store(path, gaining_kl=(0.01, 0.02, 0.03, 0.05), losing_kl=(0.5, 0.8, 1.0, 1.5)) -> None:
    """A hand-made grid: low-KL pairs gain, high-KL pairs lose."""
    with ResultStore(path) as store:
        store.put_grid("g", {"num_classes": 10})
        n = len(gaining_kl) + len(losing_kl)
        for i in range(2 * n):
            store.put_grid_model("g", f"m{i:02d}", name=f"m{i:02d}", path=None, accuracy=80.0, loss=0.5,
                                 corrupted_accuracy=None, corrupted_loss=None)
        rows, measures = [], []
        for i, kl in enumerate([*gaining_kl, *losing_kl]):
            gain = 1.0 if kl in gaining_kl else -5.0
            rows.append(dict(grid="g", a=f"m{2 * i:02d}", b=f"m{2 * i + 1:02d}", alpha=0.5, accuracy=80.0 + gain, loss=0.5,
                             gain=gain, loss_gain=0.0, collapse=0))
            measures.append(dict(grid="g", a=f"m{2 * i:02d}", b=f"m{2 * i + 1:02d}", measures={"kl": kl, "l2": 1.0 + kl}))
        store.put_grid_soups(rows)
        store.put_grid_measures(measures)


def test_weight_measures_leave_batchnorm_statistics_out(two):
    (pa, pb), a, b = two
    m = pair_measures(pa, pb)
    keys = [k for k in a if a[k].is_floating_point() and "running" not in k]
    va = torch.cat([a[k].double().flatten() for k in keys])
    vb = torch.cat([b[k].double().flatten() for k in keys])
    assert m["l2"] == pytest.approx((va - vb).norm().item(), rel=1e-9)
    assert m["cosine"] == pytest.approx(torch.nn.functional.cosine_similarity(va, vb, dim=0).item(), rel=1e-9)
    assert set(m) == {"l2", "cosine"}
    with_base = pair_measures(pa, pb, base=pa)
    assert with_base["task_cosine"] != with_base["task_cosine"]  # a's task vector against itself is zero: NaN


def test_the_fit_turns_low_kl_into_a_high_gain_probability(tmp_path):
    grid_store(tmp_path / "g.sqlite")
    with ResultStore(tmp_path / "g.sqlite") as store:
        close = predict_gain({"kl": 0.02, "l2": 1.02}, store)
        far = predict_gain({"kl": 1.2, "l2": 2.2}, store)
        only_kl = predict_gain({"kl": 0.02, "cka_logits": 0.9}, store)
    assert close["probability"] > 0.7 > 0.3 > far["probability"]
    assert (close["pairs"], close["gaining"], close["measures_used"]) == (8, 4, ["kl", "l2"])
    assert only_kl["measures_used"] == ["kl"] and 0 <= close["brier_cv"] < close["brier_base_rate"]


def test_check_predict_through_the_cli(two, tmp_path, cli):
    (pa, pb), _, _ = two
    grid_store(tmp_path / "g.sqlite")
    done = cli("check", pa, pb, "--predict", "--model", "ladle.models:tiny_cnn", "--data", "digits", "--image-size", 8,
               "--examples", 50, "--db", tmp_path / "g.sqlite", "--json")
    assert done.code == 0, done.err
    out = json.loads(done.out)
    assert set(out["measures"]) == {"l2", "cosine", "kl", "logit_mse", "disagreement", "cka_logits", "cka_features"}
    assert out["measures"]["kl"] >= 0 and 0 <= out["measures"]["disagreement"] <= 1
    assert out["prediction"]["measures_used"] == ["l2", "kl"] and 0 <= out["prediction"]["probability"] <= 1
    text = cli("check", pa, pb, "--predict")
    assert text.code == 0 and "will it soup?" in text.out and "-0.93" in text.out  # the paper's L2 correlation


def test_check_predict_errors_are_one_line(two, tmp_path, cli):
    (pa, pb), _, _ = two
    for args, words in (([pa, "--predict"], "check --predict: give two checkpoints, got 1"),
                        ([pa, pb, "--model", "ladle.models:tiny_cnn"], "check: --model belongs to --predict"),
                        ([pa, pb, "--predict", "--model", "ladle.models:tiny_cnn"],
                         "the prediction measures need both --model and --data"),
                        ([pa, pb, "--predict", "--db", tmp_path / "none.sqlite"], "no such results store")):
        done = cli("check", *args)
        assert done.code == 2 and len(done.err_lines) == 1 and words in done.err, done.err
