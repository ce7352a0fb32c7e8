"""Label-free mixing (self-season) and the kNN read-out: hand computations, a simplex point that lowers its own
objective, labels never read, memory through frozen references."""

from __future__ import annotations

import math

import pytest
import torch

from ladle import cook
from ladle.evaluation.knn import knn_scores
from ladle.evaluation.tasting import make_scorer
from ladle.soup.recipes.self_season import neighbour_entropy
from tests.test_encoder_soups import full_model, ssl_ingredient

MODEL = "ladle.models:small_resnet"


def test_neighbour_entropy_by_hand():
    e = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert neighbour_entropy(e, k=1, temperature=1.0).item() == pytest.approx(0.0, abs=1e-7)  # one neighbour: certain
    p = torch.tensor([math.e, 1.0]) / (math.e + 1)  # e0, e1: cosines 1 (each other) and 0 (e2), at T = 1
    h01 = -(p * p.log()).sum().item()
    expected = (2 * h01 + math.log(2)) / 3  # e2: cosines 0 and 0, a fair coin
    assert neighbour_entropy(e, k=2, temperature=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_knn_read_out_on_a_hand_made_case():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.1, 0.95]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    queries = torch.tensor([[1.0, 0.05], [0.05, 1.0]])
    scores = knn_scores(bank, labels, queries, 2, k=2, temperature=0.1)
    assert scores.argmax(1).tolist() == [0, 1]
    # the first query's two nearest are bank rows 0 and 1 (class 0): its class-1 score is 0
    assert scores[0, 1] == 0 and scores[0, 0] > 0
    # every neighbour counted once, weighted by exp(cos / T)
    cos = torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(bank, dim=1).T
    top = cos.topk(2, dim=1)
    assert torch.allclose(scores.sum(1), (top.values / 0.1).exp().sum(1))
    # k larger than the bank: every bank embedding votes
    assert knn_scores(bank, labels, queries, 2, k=50).shape == (2, 2)


def objective_at(weights, scorer):
    """The self-season objective of a soup over the whole split, in fixed batches of 64."""
    state = scorer.soup_state(weights)
    with torch.no_grad():
        x = scorer.evaluator.inputs(scorer.split)
        return float(sum(neighbour_entropy(scorer.embed(state, x[i : i + 64].to(scorer.device)), 16, 0.07) * len(x[i : i + 64])
                         for i in range(0, len(x), 64)) / len(x))


def test_self_season_returns_a_simplex_point_that_lowers_its_own_objective(tmp_path):
    stock = full_model(tmp_path / "stock.safetensors", 0, width=16)
    ingredients = [ssl_ingredient(tmp_path / f"ssl-{i}.safetensors", i + 1, width=16) for i in range(2)]
    paths = [stock, *ingredients]
    scorer = make_scorer(MODEL, ["digits:test"], image_size=8, split="test")
    soup = cook("self-season", paths, scorer=scorer, out=tmp_path / "seasoned.safetensors", encoder_only=True,
                epochs=4, batch_size=64)
    w = soup.manifest["weights"]
    assert len(w) == 3 and all(v >= 0 for v in w) and sum(w) == pytest.approx(1.0)
    trace = soup.manifest["trace"]["self_season"]
    assert trace["kept_epoch"] == 1 + min(range(4), key=trace["loss_per_epoch"].__getitem__)
    assert trace["labels"] == "never read"
    check = make_scorer(MODEL, ["digits:test"], image_size=8, split="test")
    from ladle.io.checkpoints import open_ingredient

    ings = [open_ingredient(p) for p in paths]
    check.bind(ings, list(ings[1].keys()), encoder_only=True)
    assert objective_at(w, check) < objective_at([1 / 3] * 3, check)


def test_self_season_never_reads_a_label(tmp_path, monkeypatch):
    stock = full_model(tmp_path / "stock.safetensors", 0, width=16)
    ing = ssl_ingredient(tmp_path / "ssl.safetensors", 1, width=16)
    scorer = make_scorer(MODEL, ["digits:test"], image_size=8, split="test")
    data = scorer.evaluator.splits[scorer.split]
    data.y = torch.full_like(data.y, -7)  # labels that no loss could use
    soup = cook("self-season", [stock, ing], scorer=scorer, out=tmp_path / "s.safetensors", encoder_only=True, epochs=1)
    assert sum(soup.manifest["weights"]) == pytest.approx(1.0)


def test_taste_reads_encoders_out_by_knn_against_the_train_split(tmp_path):
    from ladle.data import load_data
    from ladle.evaluation.knn import knn_accuracy
    from ladle.models.specs import model_spec, small_resnet
    from ladle.studies.taste import taste_specs

    stock = full_model(tmp_path / "stock.safetensors", 0, width=16)
    ing = ssl_ingredient(tmp_path / "ssl.safetensors", 1, width=16)  # no head: only a kNN read-out can taste it
    report = taste_specs([stock, ing], model=MODEL, data=["digits:test"], image_size=8, readout="knn", device="cpu")
    kinds = [r.kind for r in report.rows]
    assert kinds == ["ingredient", "ingredient", "soup", "ensemble"]
    spec = model_spec(MODEL)
    bank, test = load_data("digits:train", image_size=8), load_data("digits:test", image_size=8)
    from safetensors.torch import load_file

    model = small_resnet(10)
    model.load_state_dict(load_file(ing), strict=False)
    expected = knn_accuracy(model, bank, test, spec.mean, spec.std)
    assert report.rows[1].accuracy("digits:test") == pytest.approx(expected, abs=1e-6)  # float32 vs float64 mean


def test_taste_refuses_an_unknown_readout():
    from ladle.errors import LadleError
    from ladle.studies.taste import taste_specs

    with pytest.raises(LadleError, match="--readout must be head or knn"):
        taste_specs(["x.safetensors"], model=MODEL, data=["digits:test"], image_size=8, readout="probe")


def test_a_recipe_that_scores_with_the_head_refuses_headless_encoders(tmp_path):
    from ladle.errors import LadleError

    stock = full_model(tmp_path / "stock.safetensors", 0, width=16)
    ing = ssl_ingredient(tmp_path / "ssl.safetensors", 1, width=16)
    scorer = make_scorer(MODEL, ["digits:heldout"], image_size=8)
    with pytest.raises(LadleError, match="carry no head .* use self-season"):
        cook("greedy", [ing, stock], scorer=scorer, out=tmp_path / "g.safetensors", encoder_only=True)
    assert not (tmp_path / "g.safetensors").exists()
