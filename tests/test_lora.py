"""LoRA adapters as ingredients: every update against PEFT's own, every output reloaded by PEFT.

Adapters are made by PEFT (random non-zero factors) on tiny Llama / GPT-2 bases written by the tests; references
are PEFT's `get_delta_weight`, `merge_and_unload` and the outputs of `PeftModel.from_pretrained`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import ladle
from ladle.errors import LadleError
from ladle.io.lora import LoraAdapter
from ladle.soup import lowrank
from lora_fixtures import llama_base, load_base, logits, peft_model, tokens, write_adapter, write_gpt2


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A base and three adapters: plain r=4; r=2 on three modules only; rslora with rank and alpha patterns."""
    root = tmp_path_factory.mktemp("lora")
    base = llama_base(root / "base")
    a = write_adapter(base, root / "a", seed=1)
    b = write_adapter(base, root / "b", seed=2, r=2, lora_alpha=3, target_modules=["q_proj", "v_proj", "down_proj"])
    c = write_adapter(base, root / "c", seed=3, use_rslora=True, rank_pattern={"v_proj": 2}, alpha_pattern={"o_proj": 5})
    return base, a, b, c


def peft_deltas(base, adapter, kind="llama") -> dict[str, torch.Tensor]:
    """PEFT's own ΔW of every adapted module, by the base weight's key."""
    from peft.tuners.lora import LoraLayer

    model = peft_model(base, adapter, kind)
    return {name + ".weight": module.get_delta_weight("default").detach()
            for name, module in model.base_model.model.named_modules() if isinstance(module, LoraLayer)}


def reference_model(base, adapters, weights, kind="llama"):
    """The base with Σ wᵢ·ΔWᵢ added to its weights, every ΔW PEFT's."""
    model = load_base(base, kind)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for adapter, w in zip(adapters, weights):
        for key, delta in peft_deltas(base, adapter, kind).items():
            state[key] += w * delta
    model.load_state_dict(state)
    return model


def run(*args):
    return subprocess.run([sys.executable, "-m", "ladle", *map(str, args)], capture_output=True, text=True)


def test_each_modules_update_is_pefts_for_every_scaling(llama, tmp_path):
    base, a, b, c = llama
    for adapter in (a, b, c):
        opened = LoraAdapter(adapter)
        reference = peft_deltas(base, adapter)
        assert set(opened.modules) == set(reference)
        for key, delta in reference.items():
            np.testing.assert_allclose(opened.delta(key), delta.numpy(), rtol=1e-5, atol=1e-7)
    scalings = {m.name.split(".")[-1]: m.scaling for m in LoraAdapter(c).modules.values()}
    assert scalings["q_proj"] == 8 / 2 and scalings["v_proj"] == 8 / 2 ** 0.5 and scalings["o_proj"] == 5 / 2  # α/√r
    gpt2 = write_gpt2(tmp_path / "gpt2")
    conv1d = write_adapter(gpt2, tmp_path / "g", seed=4, target_modules=["c_attn", "c_fc", "wte"], fan_in_fan_out=True)
    opened = LoraAdapter(conv1d)
    for key, delta in peft_deltas(gpt2, conv1d).items():
        assert opened.modules[key].transposed  # GPT-2's Conv1D and the embedding store fan_in × fan_out
        np.testing.assert_allclose(opened.delta(key), delta.numpy(), rtol=1e-5, atol=1e-7)


def test_one_adapter_at_weight_one_gives_itself_back(llama, tmp_path):
    base, a, _, _ = llama
    soup = ladle.cook("weighted", [a], weights=[1.0], out=tmp_path / "one")
    assert soup.manifest["output"]["ranks"] == {k: 4 for k in LoraAdapter(a).modules}
    ids = tokens()
    torch.testing.assert_close(logits(peft_model(base, tmp_path / "one"), ids), logits(peft_model(base, a), ids),
                               rtol=1e-5, atol=1e-5)
    config = json.loads((tmp_path / "one" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["use_rslora"]) == (4, 4, False)  # scaling 1: folded into B


def test_exact_uniform_adapter_is_the_base_plus_the_mean_update(llama, tmp_path):
    base, a, b, c = llama
    soup = ladle.cook("uniform", [a, b, c], out=tmp_path / "soup")
    ranks = soup.manifest["output"]["ranks"]
    assert ranks["model.layers.0.self_attn.q_proj.weight"] == 4 + 2 + 4
    assert ranks["model.layers.0.self_attn.v_proj.weight"] == 4 + 2 + 2
    assert ranks["model.layers.0.self_attn.k_proj.weight"] == 4 + 4  # b does not adapt k_proj: a zero update
    assert "model.layers.0.self_attn.k_proj.weight" in soup.manifest["missing_modules"][str(b)]
    ids = tokens()
    expected = logits(reference_model(base, [a, b, c], [1 / 3] * 3), ids)
    torch.testing.assert_close(logits(peft_model(base, tmp_path / "soup"), ids), expected, rtol=1e-4, atol=1e-5)
    # the order of the ingredients does not matter
    ladle.cook("uniform", [c, a, b], out=tmp_path / "reordered")
    torch.testing.assert_close(logits(peft_model(base, tmp_path / "reordered"), ids), expected, rtol=1e-4, atol=1e-5)


def test_merged_model_equals_peft_merge_and_unload(llama, tmp_path):
    from transformers import AutoModelForCausalLM

    base, a, b, c = llama
    ladle.cook("weighted", [a], weights=[1.0], merge_into=base, out=tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    reference = peft_model(base, a).merge_and_unload()
    ours, theirs = merged.state_dict(), reference.state_dict()
    assert set(ours) == set(theirs)
    original = load_base(base).state_dict()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-6, atol=1e-6)
        if key not in LoraAdapter(a).modules:
            assert torch.equal(ours[key], original[key]), key  # untouched tensors are the base's, bit for bit
    assert (tmp_path / "merged" / "tokenizer.json").is_file() or (tmp_path / "merged" / "vocab.txt").is_file()
    card = (tmp_path / "merged" / "README.md").read_text()
    assert str(base) in card and str(a) in card
    # the merged uniform soup is the exact adapter's model
    ladle.cook("uniform", [a, b, c], merge_into=base, out=tmp_path / "merged3")
    ids = tokens()
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "merged3").eval(), ids),
                               logits(reference_model(base, [a, b, c], [1 / 3] * 3), ids), rtol=1e-4, atol=1e-5)


def test_low_rank_adapter_is_the_truncated_svd_of_each_mixed_update(llama, tmp_path):
    base, a, b, c = llama
    soup = ladle.cook("uniform", [a, b, c], rank=3, out=tmp_path / "r3")
    errors = soup.manifest["output"]["relative_error"]
    mixed = reference_model(base, [a, b, c], [1 / 3] * 3).state_dict()
    original = load_base(base).state_dict()
    reloaded = peft_deltas(base, tmp_path / "r3")
    for key, error in errors.items():
        delta = (mixed[key] - original[key]).double().numpy()
        s = np.linalg.svd(delta, compute_uv=False)
        assert error == pytest.approx(np.sqrt(np.sum(s[3:] ** 2) / np.sum(s ** 2)), rel=1e-4, abs=1e-6)
        got = reloaded[key].double().numpy()
        assert np.linalg.norm(delta - got) / np.linalg.norm(delta) == pytest.approx(error, rel=1e-3, abs=1e-5)
    assert any("worst relative error" in n for n in soup.notes)


def test_non_linear_recipes_need_a_rank_or_a_merge(llama, tmp_path):
    base, a, b, c = llama
    with pytest.raises(LadleError, match="does not mix updates linearly.*--rank"):
        ladle.cook("ties", [a, b, c], out=tmp_path / "ties")
    assert not (tmp_path / "ties").exists()
    ladle.cook("ties", [a, b, c], density=0.5, merge_into=base, out=tmp_path / "ties-merged")
    soup = ladle.cook("ties", [a, b, c], density=0.5, rank=8, out=tmp_path / "ties-r8")
    assert soup.manifest["output"]["svd"]  # every module went through the SVD of its mixed update
    peft_model(base, tmp_path / "ties-r8")  # reloads
    # TIES on the updates: the merged model is base + TIES(ΔW₁, ΔW₂, ΔW₃) with a zero base, per module
    from ladle.soup.mixing import ties_cut, ties_merge, ties_trim

    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "ties-merged").state_dict()
    original = load_base(base).state_dict()
    key = "model.layers.1.mlp.down_proj.weight"
    deltas = [LoraAdapter(x).delta(key) if key in LoraAdapter(x).modules else np.zeros_like(LoraAdapter(a).delta(key))
              for x in (a, b, c)]
    expected, _, _ = ties_merge(lambda: (ties_trim(d, 0.5, ties_cut(d, 0.5)) for d in deltas))
    np.testing.assert_allclose(merged[key].numpy() - original[key].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_adapters_of_different_bases_need_the_base_named(llama, tmp_path):
    base, a, b, _ = llama
    other = tmp_path / "other"
    shutil.copytree(b, other)
    config = json.loads((other / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "someone/else"
    (other / "adapter_config.json").write_text(json.dumps(config))
    result = run("cook", "uniform", a, other, "-o", tmp_path / "out")
    assert result.returncode == 2 and "base_model_name_or_path" in result.stderr and "--base" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    assert run("cook", "uniform", a, other, "--base", base, "-o", tmp_path / "out").returncode == 0


def test_a_full_checkpoint_souped_with_adapters_becomes_a_merged_model(llama, tmp_path):
    from transformers import AutoModelForCausalLM

    base, a, _, _ = llama
    model = load_base(base)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.save_pretrained(tmp_path / "full")
    with pytest.raises(LadleError, match="needs the base"):
        ladle.cook("uniform", [tmp_path / "full", a], out=tmp_path / "soup")
    ladle.cook("uniform", [tmp_path / "full", a], base=base, out=tmp_path / "soup")
    soup = AutoModelForCausalLM.from_pretrained(tmp_path / "soup").state_dict()
    original, full = load_base(base).state_dict(), model.state_dict()
    deltas = LoraAdapter(a)
    for key in soup:
        expected = original[key] + 0.5 * (full[key] - original[key])
        if key in deltas.modules:
            expected = expected + 0.5 * torch.from_numpy(deltas.delta(key))
        torch.testing.assert_close(soup[key], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("damage, message", [
    ("no-config", "no adapter_config.json"),
    ("dora", "use_dora"),
    ("ia3", "peft_type"),
    ("wrong-base", "does not fit|is \\[|the base has no tensor"),
])
def test_bad_adapters_are_one_line_exit_2_and_nothing_written(llama, tmp_path, damage, message):
    import re

    base, a, b, _ = llama
    bad = tmp_path / "bad"
    shutil.copytree(a, bad)
    args = ["cook", "uniform", bad, b, "-o", tmp_path / "out"]
    if damage == "no-config":
        (bad / "adapter_config.json").unlink()
    elif damage in ("dora", "ia3"):
        config = json.loads((bad / "adapter_config.json").read_text())
        config.update({"use_dora": True} if damage == "dora" else {"peft_type": "IA3"})
        (bad / "adapter_config.json").write_text(json.dumps(config))
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        LlamaForCausalLM(LlamaConfig(vocab_size=30, hidden_size=24, intermediate_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, num_key_value_heads=2)).save_pretrained(tmp_path / "wide")
        args = ["cook", "uniform", bad, b, "--merge-into", tmp_path / "wide", "-o", tmp_path / "out"]
    result = run(*args)
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and re.search(message, line) and str(bad) in line.replace("'", "")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_svd_helpers_agree_with_numpy():
    rng = np.random.default_rng(0)
    b, a = rng.standard_normal((40, 6)).astype(np.float32), rng.standard_normal((6, 30)).astype(np.float32)
    new_a, new_b, error = lowrank.svd_of_factors(a, b, 4)
    s = np.linalg.svd((b @ a).astype(np.float64), compute_uv=False)
    assert error == pytest.approx(np.sqrt(np.sum(s[4:] ** 2) / np.sum(s ** 2)), rel=1e-6)
    u, s_full, vt = np.linalg.svd((b @ a).astype(np.float64))
    np.testing.assert_allclose(new_b @ new_a, (u[:, :4] * s_full[:4]) @ vt[:4], rtol=1e-4, atol=1e-4)
    # a large dense update: the randomised SVD is as good as numpy's exact truncation on a decaying spectrum
    low = rng.standard_normal((2100, 12)) @ np.diag(np.geomspace(10, 1, 12)) @ rng.standard_normal((12, 2050))
    dense = (low + 0.01 * rng.standard_normal(low.shape)).astype(np.float32)
    a8, b8, error8, method = lowrank.truncated_svd(dense, 8, seed="k")
    s = np.linalg.svd(dense.astype(np.float64), compute_uv=False)
    optimum = np.sqrt(np.sum(s[8:] ** 2) / np.sum(s ** 2))
    assert method == "randomised" and error8 == pytest.approx(optimum, rel=1e-3)
    assert np.linalg.norm(dense - b8 @ a8) / np.linalg.norm(dense) == pytest.approx(error8, rel=1e-3)
    again = lowrank.truncated_svd(dense, 8, seed="k")
    assert np.array_equal(again[0], a8) and np.array_equal(again[1], b8)  # seeded: the same bytes
    # ⟨B₁A₁, B₂A₂⟩ from the factors
    b2, a2 = rng.standard_normal((40, 3)), rng.standard_normal((3, 30))
    assert lowrank.factor_inner(a, b, a2, b2) == pytest.approx(float(np.sum((b @ a) * (b2 @ a2))), rel=1e-6)


def test_an_adapter_saved_as_bin_is_read_weights_only_and_gives_the_same_soup(llama, tmp_path):
    from safetensors.torch import load_file

    _, a, b, _ = llama
    pickled = tmp_path / "a-bin"
    pickled.mkdir()
    shutil.copy(a / "adapter_config.json", pickled)
    torch.save(load_file(a / "adapter_model.safetensors"), pickled / "adapter_model.bin")
    ladle.cook("uniform", [a, b], out=tmp_path / "from-safetensors")
    ladle.cook("uniform", [pickled, b], out=tmp_path / "from-bin")
    ours, theirs = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("from-bin", "from-safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
