"""Evaluation-driven recipes on ingredients built so that the right answer is known."""

import math

import pytest
import torch
from torch import nn

import ladle
from ladle.data import load_data
from ladle.evaluation.evaluator import Evaluator, batchnorm_keys, ensemble_logits, metrics_from_logits, update_bn
from ladle.evaluation.scorer import Taster
from ladle.models import tiny_cnn

SIZE = 8


def linear(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, num_classes))


@pytest.fixture(scope="module")
def digits():
    return {s: load_data(f"digits:{s}", image_size=SIZE) for s in ("train", "heldout", "test")}


def train_linear(data, seed: int, steps: int = 150) -> dict:
    torch.manual_seed(seed)
    model = linear()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    x = (data.x - 0.5) / 0.5
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), data.y).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def ingredients(digits):
    good = [train_linear(digits["train"], seed) for seed in (0, 1)]
    harmful = {k: -v * 3 for k, v in good[0].items()}  # confidently wrong: drags any soup down
    return good, harmful


def evaluator(digits, **kw) -> Evaluator:
    return Evaluator(linear(), {"heldout": digits["heldout"], "test": digits["test"]}, **kw)


def test_greedy_rejects_the_harmful_ingredient(digits, ingredients):
    (good0, good1), harmful = ingredients
    taster = Taster(evaluator(digits))
    soup = ladle.cook("greedy", [harmful, good0, good1], scorer=taster)
    weights = soup.manifest["weights"]
    assert weights[0] == 0.0 and weights[1] > 0
    steps = soup.manifest["trace"]["greedy"]["steps"]
    assert steps[0]["accepted"] and steps[0]["index"] in (1, 2)  # starts from the best ingredient
    assert steps[-1]["index"] == 0 and not steps[-1]["accepted"]  # the harmful one ranks last, is rejected
    scores = soup.manifest["trace"]["greedy"]["ingredient_scores"]
    assert [s["ingredient_score"] for s in steps] == sorted(scores, reverse=True)
    # the soup's held-out score in the trace is the score of the returned weights
    final = taster.soup_metrics(weights).accuracy
    assert final == soup.manifest["trace"]["greedy"]["final_score"]


def test_greedy_tie_rule(digits, ingredients):
    (good0, _), _ = ingredients
    same = {k: v.clone() for k, v in good0.items()}
    ge = ladle.cook("greedy", [good0, same], scorer=Taster(evaluator(digits)))
    gt = ladle.cook("greedy", [good0, same], scorer=Taster(evaluator(digits)), accept="gt")
    assert ge.manifest["weights"] == [0.5, 0.5]  # paper: not worse → kept
    assert gt.manifest["weights"] == [1.0, 0.0]  # official code: strictly better → rejected
    with pytest.raises(ladle.LadleError, match="accept"):
        ladle.cook("greedy", [good0, same], scorer=Taster(evaluator(digits)), accept="maybe")


def test_greedy_with_replacement_gives_counts_as_weights(digits, ingredients):
    (good0, good1), harmful = ingredients
    soup = ladle.cook("greedy", [good0, good1, harmful], scorer=Taster(evaluator(digits)), with_replacement=True)
    weights = soup.manifest["weights"]
    assert math.isclose(sum(weights), 1.0) and weights[2] == 0.0
    size = soup.manifest["trace"]["greedy"]["steps"][-1]["soup_size"]
    assert all(abs(w * size - round(w * size)) < 1e-9 for w in weights)  # multiples of 1/size


def test_greedy_soup_is_cached_not_recomputed(digits, ingredients):
    (good0, good1), harmful = ingredients
    ev = evaluator(digits)
    ladle.cook("greedy", [good0, good1, harmful], scorer=Taster(ev))
    passes = ev.forward_passes
    ladle.cook("greedy", [good0, good1, harmful], scorer=Taster(ev))  # same names, same candidates: all cached
    assert ev.forward_passes == passes


def test_learned_soup_recovers_the_known_best_mixture(digits, ingredients):
    # A = g + D and B = g − D for a large random D: only the midpoint is the good model g.
    (good0, _), _ = ingredients
    g = torch.Generator().manual_seed(3)
    noise = {k: torch.randn(v.shape, generator=g) * v.abs().mean() * 4 for k, v in good0.items()}
    a = {k: good0[k] + noise[k] for k in good0}
    b = {k: good0[k] - noise[k] for k in good0}
    soup = ladle.cook("learned", [a, b], scorer=Taster(evaluator(digits)), epochs=10, batch_size=50)
    w = soup.manifest["weights"]
    assert abs(w[0] - 0.5) < 0.05 and math.isclose(sum(w), 1.0, rel_tol=1e-9)
    record = soup.manifest["trace"]["learned"]
    assert record["loss_per_epoch"][-1] < record["loss_per_epoch"][0]
    # the learned weights are those of the soup that is returned
    expected = w[0] * a["1.weight"].double() + w[1] * b["1.weight"].double()
    assert torch.allclose(soup.state_dict["1.weight"].double(), expected, atol=1e-5)


def test_learned_per_layer_has_weights_per_tensor(digits, ingredients):
    (good0, good1), harmful = ingredients
    soup = ladle.cook("learned", [good0, good1, harmful], scorer=Taster(evaluator(digits)), per="layer", epochs=2)
    by_key = soup.manifest["trace"]["learned"]["weights"]
    assert set(by_key) == {"1.weight", "1.bias"}
    for w in by_key.values():
        assert len(w) == 3 and math.isclose(sum(w), 1.0, rel_tol=1e-9)


def test_learned_soup_keeps_ingredients_frozen(digits, ingredients):
    (good0, good1), _ = ingredients
    before = [{k: v.clone() for k, v in s.items()} for s in (good0, good1)]
    ladle.cook("learned", [good0, good1], scorer=Taster(evaluator(digits)), epochs=1)
    for s, b in zip((good0, good1), before):
        assert all(torch.equal(s[k], b[k]) and not s[k].requires_grad for k in s)


def test_season_picks_the_best_grid_point_on_the_shots(digits, ingredients):
    (good0, _), harmful = ingredients
    taster = Taster(evaluator(digits), split="test")
    soup = ladle.cook("season", [harmful, good0], scorer=taster, shots=50, grid=4)
    record = soup.manifest["trace"]["season"]
    assert record["candidates"] == 5  # (0,1), (.25,.75), … (1,0)
    assert soup.manifest["weights"][1] >= 0.75
    assert record["chosen"]["accuracy"] == max(r[0] for r in record["top"])
    assert len(taster.evaluator.splits[taster.split]) == 50


def test_ensemble_equals_a_hand_computation(digits, ingredients):
    (good0, good1), _ = ingredients
    ev = evaluator(digits)
    a = ev.logits("a", good0, "test")
    b = ev.logits("b", good1, "test")
    probs = (a.double().softmax(-1) + b.double().softmax(-1)) / 2
    hand = (probs.argmax(-1) == digits["test"].y).double().mean().item()
    assert ev.ensemble(["a", "b"], "test").accuracy == hand
    assert torch.allclose(ensemble_logits([a, b], "logits"), (a.double() + b.double()) / 2)


def test_metrics_exact():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    labels = torch.tensor([0, 0, 0])
    m = metrics_from_logits(logits, labels)
    assert m.accuracy == pytest.approx(2 / 3)
    assert m.nll == pytest.approx(nn.functional.cross_entropy(logits.double(), labels).item())
    conf = logits.double().softmax(-1).max(-1).values
    # 15 equal bins: the three confidences fall in different bins
    expected = sum(abs(c.item() - ok) for c, ok in zip(conf, [1, 0, 1])) / 3
    assert m.ece == pytest.approx(expected)


def test_bn_recalibration_changes_only_bn_buffers(digits):
    torch.manual_seed(0)
    model = tiny_cnn()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ev = Evaluator(model, {"test": digits["test"]}, bn="recalibrate", bn_data=digits["train"])
    ev.prepare(state)
    after = model.state_dict()
    changed = {k for k in state if not torch.equal(state[k], after[k])}
    assert changed and changed <= batchnorm_keys(model)
    assert any(k.endswith("running_mean") for k in changed)


def test_update_bn_accepts_dict_and_tuple_batches():
    torch.manual_seed(0)
    x = torch.randn(64, 3, 8, 8) * 2 + 1
    init = tiny_cnn().state_dict()
    results = []
    for batches in ([x[:32], x[32:]], [(x[:32], 0), (x[32:], 0)], [{"pixel_values": x[:32]}, {"pixel_values": x[32:]}]):
        model = tiny_cnn()
        model.load_state_dict(init)
        update_bn(batches, model)
        results.append(model[1].running_mean.clone())
    assert torch.allclose(results[0], results[1]) and torch.allclose(results[0], results[2])
    # the cumulative average over both batches equals the statistics of all the data at once
    model = tiny_cnn()
    model.load_state_dict(init)
    update_bn([x], model)
    assert torch.allclose(results[0], model[1].running_mean, atol=1e-5)


def test_bn_first_keeps_the_first_ingredients_statistics(digits):
    torch.manual_seed(0)
    a, b = tiny_cnn().state_dict(), tiny_cnn().state_dict()
    a["1.running_mean"] += 1.0
    soup = ladle.cook("uniform", [a, b]).state_dict
    ev = Evaluator(tiny_cnn(), {"test": digits["test"]}, bn="first")
    ev.prepare(soup, first=a)
    assert torch.equal(ev.model.state_dict()["1.running_mean"], a["1.running_mean"])
    assert torch.equal(ev.model.state_dict()["0.weight"], soup["0.weight"])


def test_a_sweep_with_another_seed_does_not_reuse_the_old_runs(tmp_path, digits):
    from ladle.models import model_spec
    from ladle.training import sweep

    spec = model_spec("ladle.models:tiny_cnn", 10)
    first = sweep(spec, digits["train"], digits["heldout"], tmp_path, runs=1, epochs=1, lp_steps=1, seed=0, progress=False)
    again = sweep(spec, digits["train"], digits["heldout"], tmp_path, runs=1, epochs=1, lp_steps=1, seed=0, progress=False)
    assert again[0] == first[0]  # same sweep: kept, not retrained
    other = sweep(spec, digits["train"], digits["heldout"], tmp_path, runs=1, epochs=1, lp_steps=1, seed=1, progress=False)
    assert other[0]["hyperparameters"]["seed"] == 1000 and first[0]["hyperparameters"]["seed"] == 0
    assert other[0]["stock_sha256"] != first[0]["stock_sha256"]


@pytest.mark.parametrize("accept", ["ge", "gt"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_early_rejection_decides_exactly_as_full_evaluation_in_fewer_passes(digits, ingredients, accept, seed):
    """Noisy copies of good models, some near the acceptance bar: every keep/reject, and the soup, must be those of
    full evaluations; candidates that cannot be kept stop early."""
    (good0, good1), harmful = ingredients
    g = torch.Generator().manual_seed(seed)
    pool = [good0, good1, harmful]
    for scale in (0.5, 1.0, 1.5, 2.5):
        base = pool[int(torch.randint(2, (1,), generator=g))]
        pool.append({k: v + torch.randn(v.shape, generator=g) * v.abs().mean() * scale for k, v in base.items()})
    full_ev, fast_ev = evaluator(digits, batch_size=16), evaluator(digits, batch_size=16)
    full = ladle.cook("greedy", pool, scorer=Taster(full_ev), accept=accept, with_replacement=True, full_scores=True)
    fast = ladle.cook("greedy", pool, scorer=Taster(fast_ev), accept=accept, with_replacement=True)
    assert fast.manifest["weights"] == full.manifest["weights"]
    full_steps, fast_steps = full.manifest["trace"]["greedy"]["steps"], fast.manifest["trace"]["greedy"]["steps"]
    assert [(s["index"], s["accepted"]) for s in fast_steps] == [(s["index"], s["accepted"]) for s in full_steps]
    assert fast.manifest["trace"]["greedy"]["final_score"] == full.manifest["trace"]["greedy"]["final_score"]
    assert all(torch.equal(fast.state_dict[k], full.state_dict[k]) for k in full.state_dict)
    n = len(digits["heldout"])
    stopped = [s for s in fast_steps if s["soup_score"] is None]
    assert stopped and all(0 < s["stopped_after_images"] < n and not s["accepted"] for s in stopped)
    for s, f in zip(fast_steps, full_steps):  # a scored step has the full evaluation's score
        assert s["soup_score"] is None or s["soup_score"] == f["soup_score"]
    assert fast_ev.forward_passes < full_ev.forward_passes


def test_a_second_greedy_of_the_same_files_evaluates_nothing(tmp_path, digits, ingredients, monkeypatch):
    """The persistent logit cache (ladle's cache folder) keys logits by file sha256, weights, model and data."""
    from safetensors.torch import save_file

    from ladle.evaluation import tasting
    from ladle.evaluation.evaluator import Evaluator

    monkeypatch.setenv("LADLE_LOGIT_CACHE", "1")
    monkeypatch.setenv("LADLE_CACHE_DIR", str(tmp_path / "cache"))
    (good0, good1), harmful = ingredients
    paths = []
    for name, state in [("a", good0), ("b", good1), ("c", harmful)]:
        paths.append(tmp_path / f"{name}.safetensors")
        save_file({k: v.contiguous() for k, v in state.items()}, str(paths[-1]))

    def scorer():
        return tasting.make_scorer("tests.test_tasting:linear", ["digits:heldout"], image_size=SIZE,
                                   eval_batch_size=16)

    first = scorer()
    one = ladle.cook("greedy", [str(p) for p in paths], scorer=first, out=tmp_path / "one.safetensors")
    assert first.evaluator.forward_passes > 0

    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluated again")

    monkeypatch.setattr(Evaluator, "run", no_evaluation)
    monkeypatch.setattr(Evaluator, "prepare", no_evaluation)
    again = scorer()
    two = ladle.cook("greedy", [str(p) for p in paths], scorer=again, out=tmp_path / "two.safetensors")
    assert again.evaluator.forward_passes == 0
    assert two.manifest["weights"] == one.manifest["weights"]
    assert two.manifest["trace"]["greedy"]["steps"] == one.manifest["trace"]["greedy"]["steps"]


def test_a_stopped_evaluation_in_the_store_is_finished_when_a_lower_bar_asks_for_it(tmp_path, digits, ingredients):
    """A candidate stopped early against a high bar leaves partial logits; asked again against a bar it may clear,
    it is evaluated to the end (from its file, the store saying it is incomplete), not read as if complete."""
    from safetensors.torch import save_file

    from ladle.io.checkpoints import open_ingredients
    from ladle.results.store import ResultStore
    from ladle.soup.check_parts import select_keys

    (good0, _), harmful = ingredients
    paths = []
    for name, state in [("good", good0), ("harmful", harmful)]:
        paths.append(tmp_path / f"{name}.safetensors")
        save_file({k: v.contiguous() for k, v in state.items()}, str(paths[-1]))

    def taster(store):
        t = Taster(evaluator(digits, batch_size=16, store=store))
        ings = open_ingredients([str(p) for p in paths])
        t.bind(ings, select_keys(ings[0].keys()))
        return t

    with ResultStore(tmp_path / "r.sqlite") as store:
        first = taster(store)
        assert first.score_soup([0.5, 0.5], must_reach=0.999) is None and first.last_images < len(digits["heldout"])
        again = taster(store)
        full = again.score_soup([0.5, 0.5], must_reach=0.0)
        assert full == taster(None).score_soup([0.5, 0.5])  # the full evaluation's score
