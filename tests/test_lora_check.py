"""`ladle check` on LoRA adapters: ranks, scalings, modules, and cosines of the updates against PEFT's dense ΔW.

Adapters are made by PEFT (random non-zero factors) on tiny Llama / GPT-2 bases; the reference updates are PEFT's
`get_delta_weight`, the reference cosines those of the concatenated dense updates (zeros where a module is absent).
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

import ladle
from ladle.errors import LadleError
from ladle.soup.adapter_check import AdapterCheckReport
from ladle.soup.check import format_report
from lora_fixtures import llama_base, peft_model, write_adapter, write_gpt2

WEIGHTS = "adapter_model.safetensors"


def strict_json(text: str):
    """JSON without NaN or Infinity (null for unknown figures)."""
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A base and three adapters: plain r=4; r=2 on three module types; rslora with rank and alpha patterns and
    lm_head saved whole."""
    root = tmp_path_factory.mktemp("lora_check")
    base = llama_base(root / "base")
    a = write_adapter(base, root / "a", seed=1)
    b = write_adapter(base, root / "b", seed=2, r=2, lora_alpha=3, target_modules=["q_proj", "v_proj", "down_proj"])
    c = write_adapter(base, root / "c", seed=3, use_rslora=True, rank_pattern={"v_proj": 2},
                      alpha_pattern={"o_proj": 5}, modules_to_save=["lm_head"])
    return base, a, b, c


@pytest.fixture(scope="module")
def dense(llama):
    """PEFT's ΔW of every module of a, b and c, by the base weight's key (float64)."""
    base, *adapters = llama
    return [peft_deltas(base, x) for x in adapters]


def peft_deltas(base, adapter, kind="llama") -> dict[str, np.ndarray]:
    from peft.tuners.lora import LoraLayer

    model = peft_model(base, adapter, kind)
    return {name + ".weight": module.get_delta_weight("default").detach().double().numpy()
            for name, module in model.base_model.model.named_modules() if isinstance(module, LoraLayer)}


def dense_cosine(deltas: list[dict[str, np.ndarray]], keys=None) -> tuple[np.ndarray, np.ndarray]:
    """Norms and cosines of the updates concatenated over `keys` (all modules by default), zeros where absent."""
    keys = keys or sorted({k for d in deltas for k in d})
    shapes = {k: next(d[k].shape for d in deltas if k in d) for k in keys}
    flat = np.stack([np.concatenate([d.get(k, np.zeros(shapes[k])).ravel() for k in keys]) for d in deltas])
    norms = np.linalg.norm(flat, axis=1)
    return norms, (flat @ flat.T) / np.outer(norms, norms)


def edit_weights(src, dst, change):
    """A copy of an adapter folder with its factors changed by `change(dict of arrays)`."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dst)
    tensors = load_file(dst / WEIGHTS)
    change(tensors)
    save_file(tensors, dst / WEIGHTS, metadata={"format": "pt"})
    return dst


def test_cosines_and_norms_are_those_of_the_dense_updates(llama, dense):
    base, a, b, c = llama
    report = ladle.check([a, b, c])
    assert isinstance(report, AdapterCheckReport) and report.ok and report.selected_tensors == 14
    norms, cosine = dense_cosine(dense)
    np.testing.assert_allclose(report.update_norms, norms, rtol=1e-6)
    np.testing.assert_allclose(report.update_cosine, cosine, atol=1e-6)
    for key, matrix in report.module_cosine.items():  # per module: null where an adapter does not adapt it
        holders = [i for i, d in enumerate(dense) if key in d]
        _, expected = dense_cosine([dense[i] for i in holders], [key])
        got = np.array(matrix, dtype=float)
        np.testing.assert_allclose(got[np.ix_(holders, holders)], expected, atol=1e-6)
        absent = [i for i in range(3) if i not in holders]
        assert np.isnan(got[absent]).all() and np.isnan(got[:, absent]).all()
    # --include: the cosine over the selected modules only
    picked = ladle.check([a, b, c], include=["*q_proj*"])
    assert picked.selected_tensors == 2 and set(picked.module_cosine) == {
        f"model.layers.{i}.self_attn.q_proj.weight" for i in (0, 1)}
    np.testing.assert_allclose(picked.update_cosine, dense_cosine(dense, sorted(picked.module_cosine))[1], atol=1e-6)


def test_an_adapter_with_itself_has_cosine_one(llama):
    _, a, _, c = llama
    report = ladle.check([a, a, c])
    assert report.update_cosine[0][1] == report.update_cosine[1][0] == 1.0
    assert all(report.update_cosine[i][i] == 1.0 for i in range(3))
    assert report.update_norms[0] == report.update_norms[1] > 0


def test_transposed_modules_and_embeddings_against_peft(tmp_path):
    gpt2 = write_gpt2(tmp_path / "gpt2")
    targets = {"target_modules": ["c_attn", "c_fc", "wte"], "fan_in_fan_out": True}
    g1 = write_adapter(gpt2, tmp_path / "g1", seed=4, **targets)
    g2 = write_adapter(gpt2, tmp_path / "g2", seed=5, r=3, **targets)
    report = ladle.check([g1, g2], base=gpt2)
    assert report.ok and report.ingredients[0]["adapter"]["kinds"] == {"linear": 4, "embedding": 1}
    norms, cosine = dense_cosine([peft_deltas(gpt2, g1), peft_deltas(gpt2, g2)])
    np.testing.assert_allclose(report.update_norms, norms, rtol=1e-6)
    np.testing.assert_allclose(report.update_cosine, cosine, atol=1e-6)


def test_ranks_scalings_targets_and_tensors_saved_whole(llama):
    base, a, b, c = llama
    report = ladle.check([a, b, c])
    ad = [i["adapter"] for i in report.ingredients]
    assert (ad[0]["ranks"], ad[0]["scalings"], ad[0]["per_module"], ad[0]["use_rslora"]) == ([4], [2.0], {}, False)
    assert (ad[1]["modules"], ad[1]["ranks"], ad[1]["scalings"]) == (6, [2], [1.5])
    assert ad[1]["target_modules"] == ad[1]["adapted"] == ["down_proj", "q_proj", "v_proj"]
    assert ad[2]["use_rslora"] and ad[2]["scaling"] == 4.0  # 8 / √4
    assert ad[2]["ranks"] == [2, 4] and ad[2]["scalings"] == sorted({4.0, round(8 / math.sqrt(2), 6), 2.5})
    assert ad[2]["per_module"] == {
        **{f"model.layers.{i}.self_attn.v_proj.weight": {"rank": 2, "alpha": 8.0, "scaling": round(8 / math.sqrt(2), 6)}
           for i in (0, 1)},
        **{f"model.layers.{i}.self_attn.o_proj.weight": {"rank": 4, "alpha": 5.0, "scaling": 2.5} for i in (0, 1)}}
    assert ad[2]["saved_whole"] == ["lm_head.weight"] and ad[0]["saved_whole"] == []
    assert {x["base_model_name_or_path"] for x in ad} == {str(base)}
    text = format_report(report)
    assert f"[2] {c}: LoRA adapter, 14 modules" in text
    assert "r 4, lora_alpha 8, scaling 4 (alpha/√r, rslora)" in text
    assert "rank/alpha pattern: model.layers.*.self_attn.v_proj.weight: r 2, alpha 8, scaling 5.657 (×2)" in text
    assert "saved whole (modules_to_save): lm_head.weight" in text


def test_modules_adapted_by_some_are_listed(llama):
    _, a, b, c = llama
    report = ladle.check([a, b, c])
    expected = [f"model.layers.{i}.{m}.weight" for i in (0, 1)
                for m in ("mlp.gate_proj", "mlp.up_proj", "self_attn.k_proj", "self_attn.o_proj")]
    assert list(report.missing_modules) == [str(b)] and sorted(report.missing_modules[str(b)]) == sorted(expected)
    warning = next(w for w in report.warnings if w["kind"] == "missing_modules")
    assert warning["file"] == str(b) and "does not adapt 8 of the 14 modules" in warning["message"]
    assert "model.layers.*.self_attn.k_proj.weight (×2)" in warning["message"]


def test_different_bases_want_base(llama, tmp_path, cli):
    base, a, b, _ = llama
    other = shutil.copytree(b, tmp_path / "other")
    config = json.loads((other / "adapter_config.json").read_text())
    (other / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "someone/else"}))
    result = cli("check", a, other)
    assert result.code == 0
    assert (f"warning: {other / 'adapter_config.json'}: base_model_name_or_path 'someone/else' differs from {a}'s "
            f"'{base}': a soup of these adapters needs --base (the model they apply to)") in result.out.splitlines()
    with_base = cli("check", a, other, "--base", base)
    assert with_base.code == 0 and "base_model_name_or_path" not in with_base.out


def test_shape_disagreements_are_problems(llama, tmp_path, cli):
    base, a, b, _ = llama
    key = "model.layers.0.self_attn.q_proj.weight"
    wide = edit_weights(b, tmp_path / "wide", lambda t: t.update({
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": np.ones((20, 2), np.float32)}))
    result = cli("check", a, wide)
    assert result.code == 2
    assert f"problem: {wide}: tensor '{key}': update shape [20, 16] differs from [16, 16] in {a}" in result.out
    assert result.out.splitlines()[-1] == "NOT SOUPABLE: 1 problem(s)"
    doc = strict_json(cli("check", a, wide, "--json").out)
    assert doc["ok"] is False and doc["problems"] == [{"kind": "shape", "file": str(wide), "key": key,
                                                       "message": f"update shape [20, 16] differs from [16, 16] in {a}"}]
    assert key not in doc["module_cosine"]  # left out of the cosines, as check leaves out mismatched tensors
    against_base = cli("check", wide, "--base", base, "--json")
    assert against_base.code == 2 and strict_json(against_base.out)["problems"][0]["message"] == \
        f"update shape [20, 16] differs from [16, 16] in {base}"


def test_nonfinite_factors_are_warned_and_their_cosines_unknown(llama, tmp_path):
    _, a, b, _ = llama
    nan = edit_weights(b, tmp_path / "nan", lambda t: t[
        "base_model.model.model.layers.1.mlp.down_proj.lora_A.weight"].__setitem__((0, 0), np.nan))
    report = ladle.check([a, nan])
    assert report.ok and [(w["file"], w["key"]) for w in report.warnings if w["kind"] == "nonfinite"] == [
        (str(nan), "model.layers.1.mlp.down_proj.weight")]
    assert math.isnan(report.update_norms[1]) and math.isnan(report.update_cosine[0][1])
    assert not math.isnan(report.update_norms[0])


def test_json_fields(llama, cli):
    _, a, b, c = llama
    result = cli("check", a, b, c, "--json")
    assert result.code == 0
    doc = strict_json(result.out)
    assert doc["ok"] is True and doc["selected_tensors"] == 14 and doc["base"] is None
    assert [i["name"] for i in doc["ingredients"]] == [str(a), str(b), str(c)]
    assert set(doc["ingredients"][2]["adapter"]) == {
        "modules", "kinds", "ranks", "scalings", "r", "lora_alpha", "use_rslora", "scaling", "per_module",
        "target_modules", "adapted", "base_model_name_or_path", "saved_whole"}
    assert len(doc["update_norms"]) == 3 and len(doc["update_cosine"]) == 3 and len(doc["module_cosine"]) == 14
    k_proj = doc["module_cosine"]["model.layers.0.self_attn.k_proj.weight"]
    assert k_proj[1] == [None, None, None] and k_proj[0][0] == 1.0  # b does not adapt k_proj
    assert sorted(doc["missing_modules"]) == [str(b)]


def test_text_report(llama, cli):
    _, a, b, c = llama
    result = cli("check", a, b, c)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].startswith(f"[0] {a}: LoRA adapter, 14 modules, 2,176 parameters")
    assert "adapted modules: 14 (by any adapter)" in lines
    assert any(line.startswith("update norms ‖ΔWᵢ‖_F (all modules): [0] ") for line in lines)
    assert lines[-1] == "OK: these adapters can be souped"


@pytest.mark.parametrize("case, message", [
    ("mixed", "a LoRA adapter checked with a full checkpoint .*check them separately"),
    ("adapter-base", "--base is a LoRA adapter"),
    ("dora", "adapter_config.json: use_dora: DoRA"),
    ("no-config", "no adapter_config.json"),
    ("predict", "check --predict compares two full checkpoints, not LoRA adapters"),
])
def test_bad_input_is_one_line_exit_2(llama, tmp_path, cli, case, message):
    import re

    base, a, b, c = llama
    bad = shutil.copytree(a, tmp_path / "bad")
    config = json.loads((bad / "adapter_config.json").read_text())
    args = {"mixed": [bad, base], "adapter-base": [bad, b, "--base", c], "predict": [bad, b, "--predict"]}
    args = args.get(case, [bad, b])
    if case == "dora":
        (bad / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    elif case == "no-config":
        (bad / "adapter_config.json").unlink()
    result = cli("check", *args)
    assert result.code == 2 and result.out == ""
    line = result.err.strip()
    assert len(line.splitlines()) == 1 and re.search(message, line), line
    assert str(bad if case != "adapter-base" else c) in line
    if case == "mixed":  # the Python API raises the same error
        with pytest.raises(LadleError, match="check them separately"):
            ladle.check([bad, base])
