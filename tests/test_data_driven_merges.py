"""The data-driven merges (AdaMerging, RegMean, Fisher) on digits, checked against hand computations."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import ladle
from ladle.errors import LadleError
from ladle.evaluation.evaluator import Evaluator
from ladle.evaluation.scorer import Taster
from test_tasting import SIZE, linear, train_linear


@pytest.fixture(scope="module")
def kitchen():
    from ladle.data import load_data

    data = {s: load_data(f"digits:{s}", image_size=SIZE) for s in ("train", "heldout")}
    base = train_linear(data["train"], seed=9, steps=5)  # a weak stock
    fts = [train_linear(data["train"], seed, steps=60) for seed in (0, 1, 2)]
    return data, base, fts


def taster(data, labels=None) -> Taster:
    heldout = data["heldout"] if labels is None else dataclasses.replace(data["heldout"], y=labels)
    return Taster(Evaluator(linear(), {"heldout": heldout}))


def entropy_of(state: dict, data) -> float:
    model = linear()
    model.load_state_dict(state)
    with torch.no_grad():
        p = model((data.x - 0.5) / 0.5).softmax(-1)
    return float(-(p * p.clamp_min(1e-12).log()).sum(-1).mean())


def test_adamerging_never_reads_the_labels(kitchen):
    data, base, fts = kitchen
    one = ladle.cook("adamerging", fts, base=base, scorer=taster(data), epochs=2, batch_size=50, lr=0.01)
    shuffled = data["heldout"].y[torch.randperm(len(data["heldout"].y), generator=torch.Generator().manual_seed(0))]
    two = ladle.cook("adamerging", fts, base=base, scorer=taster(data, labels=shuffled), epochs=2, batch_size=50, lr=0.01)
    assert all(torch.equal(one.state_dict[k], two.state_dict[k]) for k in one.state_dict)
    assert one.manifest["trace"]["adamerging"] == {**two.manifest["trace"]["adamerging"],
                                                   "data": one.manifest["trace"]["adamerging"]["data"]}


def test_at_a_vanishing_learning_rate_it_is_task_arithmetic_at_init_and_its_loss_is_that_soups_entropy(kitchen):
    data, base, fts = kitchen
    soup = ladle.cook("adamerging", fts, base=base, scorer=taster(data), per="model", init=0.3, epochs=1,
                      batch_size=len(data["heldout"].y), lr=1e-12)
    expected = {k: base[k] + 0.3 * sum(f[k] - base[k] for f in fts) for k in base}
    for k in expected:
        torch.testing.assert_close(soup.state_dict[k], expected[k], rtol=1e-5, atol=1e-6)
    record = soup.manifest["trace"]["adamerging"]
    assert record["entropy_per_epoch"][0] == pytest.approx(entropy_of(expected, data["heldout"]), rel=1e-4)
    assert soup.manifest["weights"] == pytest.approx([0.3] * 3, abs=1e-6)


def test_layerwise_coefficients_lower_the_entropy_and_are_the_soups(kitchen):
    data, base, fts = kitchen
    soup = ladle.cook("adamerging", fts, base=base, scorer=taster(data), epochs=6, batch_size=50, lr=0.05)
    record = soup.manifest["trace"]["adamerging"]
    assert record["entropy_per_epoch"][-1] < record["entropy_per_epoch"][0]
    lambdas = record["lambdas"]
    assert set(lambdas) == set(base) and all(len(v) == 3 for v in lambdas.values())
    assert any(abs(v - 0.3) > 1e-3 for vs in lambdas.values() for v in vs)  # they moved
    for k, lam in lambdas.items():  # the returned soup is base + Σ λᵢ,ₖ τᵢ,ₖ with the recorded λ
        expected = base[k] + sum(l * (f[k] - base[k]) for l, f in zip(lam, fts))
        torch.testing.assert_close(soup.state_dict[k], expected, rtol=1e-5, atol=1e-6)


def test_adamerging_needs_a_base_and_sane_settings(kitchen):
    data, base, fts = kitchen
    with pytest.raises(LadleError, match="needs a base model"):
        ladle.cook("adamerging", fts, scorer=taster(data))
    with pytest.raises(LadleError, match="epochs and batch_size"):
        ladle.cook("adamerging", fts, base=base, scorer=taster(data), epochs=0)


# ---------------------------------------------------------------- RegMean


def mlp(hidden: int = 16) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * SIZE * SIZE, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, 10))


def train_mlp(data, seed: int, steps: int = 60) -> dict:
    torch.manual_seed(seed)
    model = mlp()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    x = (data.x - 0.5) / 0.5
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), data.y).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_regmean_with_one_shared_input_space_is_the_uniform_soup(kitchen):
    data, _, fts = kitchen  # one linear layer: every ingredient sees the same inputs, so the Grams cancel
    soup = ladle.cook("regmean", fts, scorer=taster(data), examples=200)
    uniform = ladle.cook("uniform", fts).state_dict
    for k in uniform:
        torch.testing.assert_close(soup.state_dict[k], uniform[k], rtol=1e-4, atol=1e-5)


def test_regmean_solves_the_regularised_least_squares_of_each_layer(kitchen):
    data, _, _ = kitchen
    states = [train_mlp(data["train"], seed) for seed in (0, 1, 2)]
    ev = Evaluator(mlp(), {"heldout": data["heldout"]})
    soup = ladle.cook("regmean", states, scorer=Taster(ev), alpha=0.8, examples=150)
    x = ((data["heldout"].x[:150] - 0.5) / 0.5).flatten(1).double()
    inputs = {"1.weight": [x] * 3}  # layer 1 reads the images; layer 3 each ingredient's own hidden features
    inputs["3.weight"] = [torch.relu(x @ s["1.weight"].double().T + s["1.bias"].double()) for s in states]
    for key, xs in inputs.items():
        grams = [xi.T @ xi for xi in xs]
        regular = [0.8 * g + 0.2 * torch.diag(torch.diagonal(g)) for g in grams]
        total, rhs = sum(regular), sum(r @ s[key].double().T for r, s in zip(regular, states))
        dead = torch.diagonal(total) == 0  # dead ReLU units: no constraint, their rows are the mean
        total[dead, dead] = 3.0
        rhs[dead] = sum(s[key].double().T for s in states)[dead]
        expected = torch.linalg.solve(total, rhs).T
        torch.testing.assert_close(soup.state_dict[key].double(), expected, rtol=1e-4, atol=1e-5)
    for key in ("1.bias", "3.bias"):  # every other tensor: the mean
        torch.testing.assert_close(soup.state_dict[key], sum(s[key] for s in states) / 3, rtol=1e-6, atol=1e-7)
    assert soup.manifest["trace"]["regmean"]["layers"] == 2


def test_regmean_refuses_a_singular_gram_and_regularises_it_below_alpha_1(kitchen):
    data, _, fts = kitchen
    with pytest.raises(LadleError, match="singular.*--alpha"):
        ladle.cook("regmean", fts, scorer=taster(data), alpha=1.0, examples=5)  # 5 images span 5 of 192 directions
    one = ladle.cook("regmean", fts[:1], scorer=taster(data), alpha=0.5, examples=5).state_dict
    for k, v in fts[0].items():  # one ingredient: (G̃)⁻¹ G̃ W = W
        torch.testing.assert_close(one[k], v, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- Fisher merging


def linear_fisher(state: dict, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The diagonal Fisher of a softmax-linear model by its closed form: ∂ log p_c/∂W_k = (δ_ck − p_k)·x, so
    F_W[k, j] = E_x Σ_c p_c (δ_ck − p_k)² x_j² and F_b[k] = E_x Σ_c p_c (δ_ck − p_k)²."""
    w, b = state["1.weight"].double(), state["1.bias"].double()
    x = x.flatten(1).double()
    p = (x @ w.T + b).softmax(-1)  # (N, K)
    eye = torch.eye(p.shape[1], dtype=torch.float64)
    per_class = ((eye[None, :, :] - p[:, None, :]) ** 2 * p[:, :, None]).sum(1)  # (N, K): Σ_c p_c (δ_ck − p_k)²
    return {"1.weight": (per_class[:, :, None] * x[:, None, :] ** 2).mean(0), "1.bias": per_class.mean(0)}


def test_fisher_merging_weights_each_parameter_by_each_ingredients_fisher(kitchen):
    data, _, fts = kitchen
    soup = ladle.cook("fisher", fts, scorer=taster(data), examples=40, epsilon=1e-8)
    x = (data["heldout"].x[:40] - 0.5) / 0.5
    fishers = [linear_fisher(f, x) for f in fts]
    for key in ("1.weight", "1.bias"):
        num = sum((fi[key] + 1e-8) * f[key].double() for fi, f in zip(fishers, fts))
        den = sum(fi[key] + 1e-8 for fi in fishers)
        torch.testing.assert_close(soup.state_dict[key].double(), num / den, rtol=1e-4, atol=1e-6)
        low = torch.stack([f[key] for f in fts]).min(0).values
        high = torch.stack([f[key] for f in fts]).max(0).values
        assert bool(((soup.state_dict[key] >= low - 1e-6) & (soup.state_dict[key] <= high + 1e-6)).all())


def test_fisher_of_one_or_of_identical_ingredients_gives_it_back(kitchen):
    data, _, fts = kitchen
    one = ladle.cook("fisher", fts[:1], scorer=taster(data), examples=10).state_dict
    same = ladle.cook("fisher", [fts[0]] * 3, scorer=taster(data), examples=10).state_dict
    for k, v in fts[0].items():
        torch.testing.assert_close(one[k], v, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(same[k], v, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- data per ingredient


def test_regmean_reads_each_ingredients_grams_on_its_own_data(kitchen):
    """--data once per ingredient: Gᵢ from ingredient i's own examples (the paper's setting: one task each)."""
    data, _, _ = kitchen
    states = [train_mlp(data["train"], seed) for seed in (0, 1, 2)]
    parts = {f"part{i}": data["heldout"].subset(range(100 * i, 100 * i + 100), f"part {i}") for i in range(3)}
    scorer = Taster(Evaluator(mlp(), parts), "part0")
    scorer.given_splits = list(parts)
    soup = ladle.cook("regmean", states, scorer=scorer, alpha=0.8, examples=100)
    assert soup.manifest["trace"]["regmean"]["split_per_ingredient"] == ["part0", "part1", "part2"]
    xs = [((p.x - 0.5) / 0.5).flatten(1).double() for p in parts.values()]
    inputs = {"1.weight": xs, "3.weight": [torch.relu(x @ s["1.weight"].double().T + s["1.bias"].double())
                                           for x, s in zip(xs, states)]}
    for key, layer_inputs in inputs.items():
        regular = [0.8 * (x.T @ x) + 0.2 * torch.diag(torch.diagonal(x.T @ x)) for x in layer_inputs]
        total, rhs = sum(regular), sum(r @ s[key].double().T for r, s in zip(regular, states))
        dead = torch.diagonal(total) == 0
        total[dead, dead] = 3.0
        rhs[dead] = sum(s[key].double().T for s in states)[dead]
        torch.testing.assert_close(soup.state_dict[key].double(), torch.linalg.solve(total, rhs).T, rtol=1e-4, atol=1e-5)
    shared = ladle.cook("regmean", states, scorer=Taster(Evaluator(mlp(), parts), "part0"), alpha=0.8, examples=100)
    assert not torch.allclose(shared.state_dict["1.weight"], soup.state_dict["1.weight"])  # the data did matter


def test_fisher_reads_each_ingredients_fisher_on_its_own_data(kitchen):
    data, _, fts = kitchen
    parts = {f"part{i}": data["heldout"].subset(range(20 * i, 20 * i + 20), f"part {i}") for i in range(3)}
    scorer = Taster(Evaluator(linear(), parts), "part0")
    scorer.given_splits = list(parts)
    soup = ladle.cook("fisher", fts, scorer=scorer, examples=20)
    fishers = [linear_fisher(f, (p.x - 0.5) / 0.5) for f, p in zip(fts, parts.values())]
    for key in ("1.weight", "1.bias"):
        num = sum((fi[key] + 1e-8) * f[key].double() for fi, f in zip(fishers, fts))
        den = sum(fi[key] + 1e-8 for fi in fishers)
        torch.testing.assert_close(soup.state_dict[key].double(), num / den, rtol=1e-4, atol=1e-6)


def test_data_given_neither_once_nor_once_per_ingredient_is_refused(kitchen):
    data, _, fts = kitchen
    parts = {f"part{i}": data["heldout"].subset(range(10 * i, 10 * i + 10), f"part {i}") for i in range(2)}
    scorer = Taster(Evaluator(linear(), parts), "part0")
    scorer.given_splits = list(parts)
    for recipe in ("fisher", "regmean"):
        with pytest.raises(LadleError, match=f"{recipe}: --data given 2 times for 3 ingredients"):
            ladle.cook(recipe, fts, scorer=scorer, examples=5)


# ---------------------------------------------------------------- Fisher of causal language models


@pytest.fixture(scope="module")
def language(tmp_path_factory):
    from text_fixtures import reviews, write_jsonl, write_llama

    root = tmp_path_factory.mktemp("lm")
    lms = [write_llama(root / f"lm{i}", seed=i) for i in range(2)]
    corpus = write_jsonl(root / "corpus.jsonl", [{"text": t} for t, _ in reviews(3, seed=3)])
    other = write_jsonl(root / "other.jsonl", [{"text": t} for t, _ in reviews(3, seed=5)])
    return lms, corpus, other


def exact_next_token_fisher(folder, texts: list[str]) -> dict[str, torch.Tensor]:
    """Σ_t Σ_v p_t(v)·(∂ log p_t(v)/∂θ)² per text (float64, every token of the vocabulary), averaged over the texts:
    the expectation the sampled Fisher estimates."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder).double().eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    params = {k: v.detach() for k, v in model.named_parameters()}
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    for text in texts:
        ids = tokenizer(text, return_tensors="pt")["input_ids"]

        def log_probs(p):
            return torch.func.functional_call(model, p, (ids,)).logits[0, :-1].log_softmax(-1)

        jac = torch.func.jacrev(log_probs)(params)  # (positions, vocabulary, *shape) per tensor
        p = log_probs(params).exp()
        for k, j in jac.items():
            total[k] += (p.reshape(*p.shape, *[1] * (j.dim() - 2)) * j ** 2).sum((0, 1))
    return {k: v / len(texts) for k, v in total.items()}


def test_fisher_of_a_language_model_samples_next_tokens_and_estimates_the_exact_expectation(language):
    from ladle.evaluation.tasting import make_scorer
    from text_fixtures import reviews

    lms, corpus, _ = language
    scorer = make_scorer(str(lms[0]), [f"{corpus}:all"], workers=0, split="all")
    scorer.bind(*_opened(lms[:1]))
    sampled = scorer.fisher_diagonal(0, examples=3, samples=100, seed=0)
    exact = exact_next_token_fisher(lms[0], [t for t, _ in reviews(3, seed=3)])
    assert set(sampled) == set(exact)
    flat_sampled = torch.cat([sampled[k].flatten() for k in exact])
    flat_exact = torch.cat([exact[k].flatten() for k in exact])
    assert float(flat_sampled.sum() / flat_exact.sum()) == pytest.approx(1.0, abs=0.1)  # 300 draws: 1.012
    assert float(torch.nn.functional.cosine_similarity(flat_sampled, flat_exact, dim=0)) > 0.98  # 300 draws: 0.9995
    one, again, other = (scorer.fisher_diagonal(0, examples=3, samples=2, seed=s) for s in (0, 0, 1))
    assert all(torch.equal(one[k], again[k]) for k in one)  # seeded: the same draws
    assert not torch.equal(one["model.embed_tokens.weight"], other["model.embed_tokens.weight"])


def _opened(folders):
    from ladle.io.checkpoints import open_ingredient

    ingredients = [open_ingredient(str(f)) for f in folders]
    return ingredients, list(ingredients[0].keys())


def test_ladle_cook_fisher_merges_language_models_each_on_its_own_corpus(language, tmp_path, cli):
    from ladle.io.checkpoints import open_ingredient

    lms, corpus, other = language
    out = tmp_path / "lm-soup"
    r = cli("cook", "fisher", *lms, "--data", f"{corpus}:all", "--data", f"{other}:all", "--workers", "0",
            "--samples", "3", "--examples", "2", "-o", out)
    assert r.code == 0, r.err
    soup = open_ingredient(str(out))
    record = json.loads((out / "ladle.json").read_text())["trace"]["fisher"]
    assert record["split_per_ingredient"] == [f"{corpus}:all", f"{other}:all"] and record["samples"] == 3
    a, b = (open_ingredient(str(f)) for f in lms)
    for k in soup.keys():  # a Fisher-weighted mean: between the ingredients in every coordinate
        low, high = torch.minimum(a.get(k), b.get(k)), torch.maximum(a.get(k), b.get(k))
        assert bool(((soup.get(k) >= low - 1e-6) & (soup.get(k) <= high + 1e-6)).all()), k
    bad = tmp_path / "bad-soup"
    r = cli("cook", "fisher", *lms, "--data", f"{corpus}:all", "--data", f"{other}:all", "--data", f"{corpus}:all",
            "--workers", "0", "-o", bad)
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
    assert "--data given 3 times for 2 ingredients" in r.err and not bad.exists()
