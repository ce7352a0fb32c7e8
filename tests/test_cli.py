"""The `ladle` command: every recipe's happy path, recipe files, --json, `ladle recipes` and `ladle check`."""

from __future__ import annotations

import hashlib
import json
import textwrap

import pytest
import torch
from safetensors.torch import load_file

import ladle
from ladle.soup.recipes import RECIPES
from conftest import A, B, BASE, as_state, ladle_script, run_process, snapshot, tensor


def strict_json(text: str):
    """Parse as RFC 8259 JSON: NaN and Infinity are not JSON."""

    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def assert_one_line_error(result, *needles):
    assert result.code == 2, (result.code, result.out, result.err)
    assert len(result.err_lines) == 1, result.err
    assert result.err_lines[0].startswith("ladle: error: ")
    for n in needles:
        assert str(n) in result.err_lines[0], (n, result.err_lines[0])


@pytest.fixture
def trio(ckpt):
    return ckpt.st("base", as_state(BASE)), ckpt.st("a", as_state(A)), ckpt.st("b", as_state(B))


# ---------------------------------------------------------------- cook: every recipe


def test_cook_uniform(cli, trio, tmp_path):
    _, a, b = trio
    out = tmp_path / "soup.safetensors"
    result = cli("cook", "uniform", a, b, "-o", out)
    assert result.code == 0 and result.err == ""
    assert result.out.splitlines()[0] == f"wrote {out}: 2 tensors, recipe uniform, weights [0.5, 0.5]"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "soup.safetensors", "soup.safetensors.json"]
    soup = load_file(out)
    assert torch.equal(soup["layer.weight"], tensor([[2.0, 4.0], [4.0, 2.0]]))
    assert torch.equal(soup["layer.bias"], tensor([1.0, 0.0]))


def test_cook_weighted(cli, trio, tmp_path):
    _, a, b = trio
    out = tmp_path / "soup.safetensors"
    result = cli("cook", "weighted", a, b, "--weights", "1,3", "-o", out)
    assert result.code == 0, result.err
    assert "weights [0.25, 0.75]" in result.out
    soup = load_file(out)
    assert torch.equal(soup["layer.weight"], tensor([[2.5, 5.0], [4.5, 1.0]]))
    assert torch.equal(soup["layer.bias"], tensor([1.25, 0.25]))


def test_cook_weighted_without_normalisation(cli, trio, tmp_path):
    _, a, b = trio
    out = tmp_path / "soup.safetensors"
    result = cli("cook", "weighted", a, b, "--weights", "1, 1", "--no-normalize", "-o", out)
    assert result.code == 0, result.err
    soup = load_file(out)
    assert torch.equal(soup["layer.weight"], tensor([[4.0, 8.0], [8.0, 4.0]]))
    assert ladle.read_manifest(out)["parameters"] == {"weights": [1.0, 1.0], "normalize": False}


@pytest.mark.parametrize("form", ["positional-base", "--base"])
def test_cook_interpolate(cli, trio, tmp_path, form):
    base, a, _ = trio
    out = tmp_path / "soup.safetensors"
    args = [base, a] if form == "positional-base" else [a, "--base", base]
    result = cli("cook", "interpolate", *args, "--alpha", "0.25", "-o", out)
    assert result.code == 0, result.err
    soup = load_file(out)
    assert torch.equal(soup["layer.weight"], tensor([[1.0, 1.25], [1.5, 1.75]]))
    assert torch.equal(soup["layer.bias"], tensor([0.125, -0.125]))
    m = ladle.read_manifest(out)
    assert m["base"]["path"] == str(base) and [i["path"] for i in m["ingredients"]] == [str(a)]


def test_cook_interpolate_extrapolation_is_noted(cli, trio, tmp_path):
    base, a, _ = trio
    result = cli("cook", "interpolate", base, a, "--alpha", "1.5", "-o", tmp_path / "s.safetensors")
    assert result.code == 0
    assert result.err.splitlines() == ["note: alpha=1.5 is outside [0, 1]: this extrapolates beyond the fine-tuned model"]


def test_cook_model_stock(cli, ckpt, tmp_path):
    base = ckpt.st("base", {"orth": tensor([1.0, 1.0]), "par": tensor([1.0, 1.0])})
    # task vectors: orth -> [1,0] and [0,1] (cos 0, so t = 0: the base); par -> [1,1] and [2,2] (cos 1, t = 1: the mean)
    ft1 = ckpt.st("ft1", {"orth": tensor([2.0, 1.0]), "par": tensor([2.0, 2.0])})
    ft2 = ckpt.st("ft2", {"orth": tensor([1.0, 2.0]), "par": tensor([3.0, 3.0])})
    out = tmp_path / "soup.safetensors"
    result = cli("cook", "model-stock", ft1, ft2, "--base", base, "-o", out)
    assert result.code == 0, result.err
    soup = load_file(out)
    assert torch.equal(soup["orth"], tensor([1.0, 1.0]))
    assert torch.allclose(soup["par"], tensor([2.5, 2.5]), rtol=0, atol=1e-6)
    trace = ladle.read_manifest(out)["trace"]["model_stock"]
    assert trace["orth"] == {"t": 0.0, "cos": 0.0}
    assert trace["par"]["t"] == pytest.approx(1.0, abs=1e-6) and trace["par"]["cos"] == pytest.approx(1.0, abs=1e-6)


def test_cook_to_a_directory(cli, trio, tmp_path):
    _, a, b = trio
    out = tmp_path / "soupdir"
    result = cli("cook", "uniform", a, b, "-o", out)
    assert result.code == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "ladle.json", "model.safetensors"]  # + model card
    digest = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    assert result.out.splitlines()[1] == f"sha256 {digest}  model.safetensors"


def test_cook_include_exclude(cli, trio, tmp_path):
    _, a, b = trio
    out = tmp_path / "soup.safetensors"
    assert cli("cook", "uniform", a, b, "--exclude", "*.bias", "-o", out).code == 0
    assert list(load_file(out)) == ["layer.weight"]
    assert cli("cook", "uniform", a, b, "--include", "*.bias", "--include", "nothing", "-o", out, "--force").code == 0
    assert list(load_file(out)) == ["layer.bias"]
    assert ladle.read_manifest(out)["selection"] == {"include": ["*.bias", "nothing"], "exclude": [], "tensors": 1}


def test_cook_json(cli, trio, tmp_path):
    base, a, b = trio
    out = tmp_path / "soup.safetensors"
    result = cli("cook", "model-stock", a, b, "--base", base, "-o", out, "--json")
    assert result.code == 0
    doc = strict_json(result.out)
    assert doc["output"] == str(out)
    assert doc["sha256"] == {"soup.safetensors": hashlib.sha256(out.read_bytes()).hexdigest()}
    assert doc["manifest"] == ladle.read_manifest(out)
    assert doc["manifest"]["recipe"] == "model-stock"


def test_console_script_cooks(trio, tmp_path):
    _, a, b = trio
    out = tmp_path / "soup.safetensors"
    result = run_process([ladle_script(), "cook", "uniform", a, b, "-o", out])
    assert result.code == 0, result.err
    assert result.err == ""  # no progress bar when stderr is not a terminal
    assert f"sha256 {hashlib.sha256(out.read_bytes()).hexdigest()}  soup.safetensors" in result.out.splitlines()


# ---------------------------------------------------------------- recipe files


def write_yaml(folder, text, name="recipe.yaml"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def test_recipe_file_resolves_paths_against_its_folder(cli, trio, tmp_path, monkeypatch):
    _, a, b = trio  # under tmp_path/in
    recipe = write_yaml(tmp_path / "recipes", """
        recipe: weighted
        ingredients: [../in/a.safetensors, ../in/b.safetensors]
        weights: [1, 3]
        output: soup.safetensors
        """)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = cli("cook", recipe)
    assert result.code == 0, result.err
    out = tmp_path / "recipes" / "soup.safetensors"
    assert out.is_file() and list(elsewhere.iterdir()) == []
    assert torch.equal(load_file(out)["layer.bias"], tensor([1.25, 0.25]))
    m = ladle.read_manifest(out)
    assert [i["path"] for i in m["ingredients"]] == [str(tmp_path / "recipes" / "../in/a.safetensors"),
                                                     str(tmp_path / "recipes" / "../in/b.safetensors")]


def test_recipe_file_relative_invocation(cli, trio, tmp_path, monkeypatch):
    write_yaml(tmp_path / "recipes", """
        recipe: uniform
        ingredients:
          - ../in/a.safetensors
          - ../in/b.safetensors
        output: out/soup.safetensors
        exclude: "*.bias"
        """)
    (tmp_path / "recipes" / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    result = cli("cook", "recipes/recipe.yaml")
    assert result.code == 0, result.err
    assert list(load_file(tmp_path / "recipes" / "out" / "soup.safetensors")) == ["layer.weight"]


def test_command_line_wins_over_the_recipe_file(cli, trio, tmp_path):
    _, a, b = trio
    recipe = write_yaml(tmp_path / "in", """
        recipe: weighted
        ingredients: [a.safetensors, b.safetensors]
        weights: [1, 3]
        output: soup.safetensors
        """)
    out = tmp_path / "in" / "soup.safetensors"
    assert cli("cook", recipe).code == 0
    result = cli("cook", recipe, "--weights", "3,1", "--force")
    assert result.code == 0, result.err
    assert torch.equal(load_file(out)["layer.bias"], tensor([0.75, -0.25]))
    result = cli("cook", recipe, b, a, "--force", "-o", tmp_path / "other.safetensors")
    assert result.code == 0
    assert [i["path"] for i in ladle.read_manifest(tmp_path / "other.safetensors")["ingredients"]] == [str(b), str(a)]


BAD_RECIPES = {
    # name: (yaml text, needles that the one error line must contain)
    "misspelt-field": ("""
        recipe: weighted
        ingredients: [a.safetensors, b.safetensors]
        weigths: [1, 3]
        output: soup.safetensors
        """, [":3:", "weigths", "unknown field"]),
    "alpha-not-a-number": ("""
        recipe: interpolate
        base: base.safetensors
        ingredients: [a.safetensors]
        alpha: high
        output: soup.safetensors
        """, [":4:", "alpha", "a number", "'high'"]),
    "weights-not-numbers": ("""
        recipe: weighted
        ingredients: [a.safetensors, b.safetensors]
        output: soup.safetensors
        weights: [1, x]
        """, [":4:", "weights", "list of numbers"]),
    "weights-not-a-list": ("""
        recipe: weighted
        ingredients: [a.safetensors, b.safetensors]
        weights: 0.5
        output: soup.safetensors
        """, [":3:", "weights"]),
    "force-not-bool": ("""
        recipe: uniform
        ingredients: [a.safetensors, b.safetensors]
        output: soup.safetensors
        force: "yes"
        """, [":4:", "force", "true or false"]),
    "bool-is-not-a-number": ("""
        recipe: interpolate
        base: base.safetensors
        ingredients: [a.safetensors]
        output: soup.safetensors
        alpha: true
        """, [":5:", "alpha", "a number"]),
    "ingredients-not-a-list": ("""
        recipe: uniform
        ingredients: a.safetensors
        output: soup.safetensors
        """, [":2:", "ingredients", "a list of paths"]),
    "unknown-recipe": ("""
        output: soup.safetensors
        recipe: minestrone
        ingredients: [a.safetensors, b.safetensors]
        """, [":2:", "recipe", "minestrone"]),
    "parameter-of-another-recipe": ("""
        recipe: uniform
        ingredients: [a.safetensors, b.safetensors]
        output: soup.safetensors
        alpha: 0.5
        """, [":4:", "alpha", "not used by recipe 'uniform'"]),
    "weights-count-from-cook": ("""
        recipe: weighted
        ingredients: [a.safetensors, b.safetensors]
        weights: [1, 2, 3]
        output: soup.safetensors
        """, [":3:", "weights", "3 values for 2 ingredients"]),
    "negative-weight-from-cook": ("""
        recipe: weighted
        ingredients: [a.safetensors, b.safetensors]
        output: soup.safetensors
        weights: [1, -2]
        """, [":4:", "weights", "-2.0"]),
    "bad-dtype-from-cook": ("""
        recipe: uniform
        ingredients: [a.safetensors, b.safetensors]
        dtype: int4
        output: soup.safetensors
        """, [":3:", "dtype", "int4"]),
    "missing-recipe": ("""
        ingredients: [a.safetensors, b.safetensors]
        output: soup.safetensors
        """, ["missing field 'recipe'"]),
    "not-yaml": ("""
        recipe: uniform
        ingredients: [a.safetensors, b.safetensors
        output: soup.safetensors
        """, ["not valid YAML"]),
    "not-a-mapping": ("""
        - uniform
        - a.safetensors
        """, ["must be a mapping"]),
}


@pytest.mark.parametrize("case", BAD_RECIPES, ids=list(BAD_RECIPES))
def test_bad_recipe_file(cli, trio, tmp_path, case):
    text, needles = BAD_RECIPES[case]
    recipe = write_yaml(tmp_path / "in", text)
    before = snapshot(tmp_path)
    result = cli("cook", recipe)
    assert_one_line_error(result, recipe, *needles)
    assert snapshot(tmp_path) == before


def test_recipe_file_with_a_missing_ingredient_names_the_resolved_path(cli, trio, tmp_path):
    recipe = write_yaml(tmp_path / "in", """
        recipe: uniform
        ingredients: [a.safetensors, nowhere.safetensors]
        output: soup.safetensors
        """)
    assert_one_line_error(cli("cook", recipe), tmp_path / "in" / "nowhere.safetensors", "no such file")


def test_missing_recipe_file(cli, tmp_path):
    assert_one_line_error(cli("cook", tmp_path / "nope.yaml"), tmp_path / "nope.yaml", "cannot read")


# ---------------------------------------------------------------- ladle recipes


def test_recipes_lists_every_recipe_with_every_parameter(cli):
    result = cli("recipes")
    assert result.code == 0
    lines = result.out.splitlines()
    names = [line.split(":")[0] for line in lines if line and not line.startswith(" ") and ":" in line.split()[0]]
    assert sorted(names) == sorted(RECIPES)
    for r in RECIPES.values():
        assert any(line.startswith(f"{r.name}: {r.summary}") for line in lines)
        for p in r.parameters:  # type, default and help of every parameter, read from the signature
            assert f"    {p.describe()}" in lines
    assert "    --weights (list of numbers, required): one non-negative weight per ingredient (W1,W2,…)" in lines
    assert "    --no-normalize (flag): do not scale the weights to sum to 1" in lines
    assert "    --max-passes (int, default 5): with replacement: passes over the candidates at most" in lines
    assert "scorer" not in result.out and "evaluator" not in result.out  # capabilities are not parameters


def test_recipes_json_lists_parameters(cli):
    result = cli("recipes", "--json")
    assert result.code == 0
    listed = {r["name"]: r for r in json.loads(result.out)}
    assert listed["greedy"]["tastes"] is True and listed["uniform"]["tastes"] is False
    accept = next(p for p in listed["greedy"]["parameters"] if p["name"] == "accept")
    assert accept == {"name": "accept", "flag": "--accept", "type": "ge|gt", "default": "ge", "required": False,
                      "help": "keep a candidate if the soup is not worse (ge, paper) or better (gt, official code)"}


# ---------------------------------------------------------------- ladle check


def test_check_compatible_exit_0(cli, trio):
    base, a, b = trio
    result = cli("check", a, b, "--base", base)
    assert result.code == 0, result.out
    lines = result.out.splitlines()
    assert lines[0] == f"[0] {a}: 2 tensors, 6 parameters, 0.0 MB (F32×2)"
    assert lines[2] == f"[base] {base}  (base): 2 tensors, 6 parameters, 0.0 MB (F32×2)"
    assert lines[-1] == "OK: these ingredients can be souped"
    assert "task-vector norms" in result.out


def test_check_mismatched_exit_2(cli, trio, ckpt):
    _, a, _ = trio
    c = ckpt.st("c", {"layer.weight": tensor([[1.0, 2.0, 3.0]]), "layer.bias": tensor([1.0, 2.0])})
    result = cli("check", a, c)
    assert result.code == 2
    assert f"problem: {c}: tensor 'layer.weight': shape [1, 3] differs from [2, 2] in {a}" in result.out.splitlines()
    assert result.out.splitlines()[-1] == "NOT SOUPABLE: 1 problem(s)"


def test_check_json(cli, trio, ckpt):
    base, a, b = trio
    result = cli("check", a, b, "--base", base, "--json")
    assert result.code == 0
    doc = strict_json(result.out)
    assert doc["ok"] is True and doc["task_vector_norms"] is not None
    assert [i["name"] for i in doc["ingredients"]] == [str(a), str(b)]

    c = ckpt.st("c", {"layer.weight": as_state(A)["layer.weight"]})
    bad = cli("check", a, c, "--json")
    assert bad.code == 2
    doc = strict_json(bad.out)
    assert doc["ok"] is False
    assert doc["problems"] == [{"kind": "missing", "file": str(c), "key": "layer.bias",
                                "message": f"missing (present in {a})"}]


def test_check_json_stays_json_with_nonfinite_ingredients(cli, trio, ckpt):
    base, a, _ = trio
    nan = ckpt.st("nan", {**as_state(B), "layer.bias": tensor([float("nan"), 1.0])})
    for extra in ([], ["--base", base]):
        result = cli("check", a, nan, *extra, "--json")
        assert result.code == 0
        doc = strict_json(result.out)
        assert doc["warnings"] == [{"kind": "nonfinite", "file": str(nan), "key": "layer.bias",
                                    "message": "holds NaN or Inf values"}]


def test_cook_json_stays_json_with_nonfinite_ingredients(cli, trio, ckpt, tmp_path):
    base, a, _ = trio
    nan = ckpt.st("nan", {**as_state(B), "layer.bias": tensor([float("nan"), 1.0])})
    result = cli("cook", "model-stock", a, nan, "--base", base, "-o", tmp_path / "s.safetensors", "--json")
    assert result.code == 0
    strict_json(result.out)
