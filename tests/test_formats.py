"""Every checkpoint format ladle reads, the wrappers it unwraps, and sharded directory outputs."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import ladle
from ladle import LadleError
from conftest import A, B, as_state, tensor

MIXED = {
    "enc.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3),
    "enc.bias": tensor([0.5, -1.5], torch.float16),
    "enc.scale": tensor([1.25], torch.bfloat16),
    "enc.double": tensor([1e-300, 3.0], torch.float64),
    "bn.num_batches_tracked": torch.tensor(17),
    "mask": tensor([True, False, True], torch.bool),
    "scalar": torch.tensor(2.5),
}


def assert_same_state(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        assert got[k].shape == want[k].shape, k
        assert torch.equal(got[k], want[k]), k


def test_safetensors(ckpt):
    path = ckpt.st("m", MIXED)
    ing = ladle.open_ingredient(path)
    assert ing.name == str(path) and ing.files == [path] and ing.notes == []
    assert sorted(ing.keys()) == sorted(MIXED)
    assert ing.info("enc.weight").shape == (2, 3) and ing.info("enc.bias").dtype == "F16"
    assert_same_state(ladle.load_soup(path), MIXED)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt"])
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_torch_save(ckpt, suffix, legacy):
    path = ckpt.pt("m" + suffix, MIXED, legacy=legacy)
    assert path.read_bytes()[:2] == (b"\x80\x02" if legacy else b"PK")
    ing = ladle.open_ingredient(path)
    assert ing.notes == [] and ing.files == [path]
    assert_same_state(ing.state_dict(), MIXED)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_unknown_suffix_is_sniffed(ckpt, legacy):
    torch_file = ckpt.pt("m.weights", MIXED, legacy=legacy)
    st_file = ckpt.st("m.tensors", MIXED)
    assert_same_state(ladle.load_soup(torch_file), MIXED)
    assert_same_state(ladle.load_soup(st_file), MIXED)


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "model_state_dict"])
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_wrappers_are_unwrapped_and_noted(ckpt, wrapper, legacy):
    state = as_state(A)
    path = ckpt.pt("w.pt", {wrapper: state, "epoch": 7, "optimizer": {"lr": 0.1}}, legacy=legacy)
    ing = ladle.open_ingredient(path)
    assert ing.notes == [f"took the state dict from the top-level '{wrapper}' entry"]
    assert_same_state(ing.state_dict(), state)


def test_module_prefix_is_removed_and_noted(ckpt):
    state = as_state(A)
    path = ckpt.pt("ddp.pt", {"state_dict": {"module." + k: v for k, v in state.items()}})
    ing = ladle.open_ingredient(path)
    assert ing.notes == ["took the state dict from the top-level 'state_dict' entry",
                         "removed the 'module.' prefix from every key"]
    assert sorted(ing.keys()) == sorted(state)
    assert_same_state(ing.state_dict(), state)


def test_compiled_and_ddp_prefixes_both_removed(ckpt):
    state = as_state(A)
    path = ckpt.st("both", {"module._orig_mod." + k: v for k, v in state.items()})
    ing = ladle.open_ingredient(path)
    assert ing.notes == ["removed the 'module.' prefix from every key", "removed the '_orig_mod.' prefix from every key"]
    assert_same_state(ing.state_dict(), state)


def test_prefix_kept_when_not_on_every_key(ckpt):
    state = {"module.a": tensor([1.0]), "b": tensor([2.0])}
    ing = ladle.open_ingredient(ckpt.st("partial", state))
    assert sorted(ing.keys()) == ["b", "module.a"] and ing.notes == []


def test_non_tensor_entries_are_ignored_and_noted(ckpt):
    path = ckpt.pt("extras.pt", {"w": tensor([1.0, 2.0]), "step": 5, "name": "run-3"})
    ing = ladle.open_ingredient(path)
    assert ing.keys() == ["w"]
    assert ing.notes == ["ignored 2 non-tensor entries (step, name)"]


def test_wrapped_ingredient_soups_with_a_plain_one_and_notes_travel(cli, ckpt, tmp_path):
    """A DDP checkpoint wrapped in {'model_state_dict': …} soups with a plain safetensors file; notes reach stderr and the manifest."""
    a = ckpt.st("a", as_state(A))
    b = ckpt.pt("b.pth", {"model_state_dict": {"module." + k: v for k, v in as_state(B).items()}, "epoch": 3})
    out = tmp_path / "soup.safetensors"
    result = cli("cook", "uniform", a, b, "-o", out)
    assert result.code == 0, result.err
    assert result.err.splitlines() == [
        f"note: {b}: took the state dict from the top-level 'model_state_dict' entry",
        f"note: {b}: removed the 'module.' prefix from every key",
    ]
    soup = load_file(out)
    assert torch.equal(soup["layer.weight"], tensor([[2.0, 4.0], [4.0, 2.0]]))
    assert torch.equal(soup["layer.bias"], tensor([1.0, 0.0]))
    entry = ladle.read_manifest(out)["ingredients"][1]
    assert entry["path"] == str(b)
    assert entry["notes"] == ["took the state dict from the top-level 'model_state_dict' entry",
                              "removed the 'module.' prefix from every key"]
    assert "notes" not in ladle.read_manifest(out)["ingredients"][0]


def test_check_cli_prints_the_notes(cli, ckpt):
    path = ckpt.pt("w.pt", {"model": {"module." + k: v for k, v in as_state(A).items()}})
    result = cli("check", path)
    assert result.code == 0
    assert "      note: took the state dict from the top-level 'model' entry" in result.out.splitlines()
    assert "      note: removed the 'module.' prefix from every key" in result.out.splitlines()


# ---------------------------------------------------------------- save_pretrained-style directories


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("shards", [1, 3])
def test_hf_directory(ckpt, fmt, shards):
    state = {f"layers.{i}.weight": torch.full((2, 2), float(i)) for i in range(5)}
    state["layers.0.num_batches_tracked"] = torch.tensor(4)
    d = ckpt.hf("model", state, fmt=fmt, shards=shards)
    ing = ladle.open_ingredient(d)
    assert ing.name == str(d)
    stem = "model" if fmt == "safetensors" else "pytorch_model"
    suffix = "safetensors" if fmt == "safetensors" else "bin"
    if shards == 1:
        assert ing.files == [d / f"{stem}.{suffix}"]
    else:
        assert ing.files == [d / f"{stem}-{i:05d}-of-00003.{suffix}" for i in (1, 2, 3)]
    assert_same_state(ing.state_dict(), state)


def test_hf_directory_prefers_safetensors(ckpt):
    d = ckpt.hf("model", as_state(A), fmt="safetensors")
    torch.save(as_state(B), d / "pytorch_model.bin")
    ing = ladle.open_ingredient(d)
    assert ing.files == [d / "model.safetensors"]
    assert_same_state(ing.state_dict(), as_state(A))


def test_hf_index_naming_a_missing_shard_is_an_error(ckpt):
    d = ckpt.hf("model", as_state(A), shards=2)
    (d / "model-00001-of-00002.safetensors").unlink()
    with pytest.raises(LadleError) as e:
        ladle.open_ingredient(d)
    assert e.value.file == str(d / "model.safetensors.index.json")
    assert "index names a shard that is missing: model-00001-of-00002.safetensors" in str(e.value)


def test_hf_bin_index_naming_a_missing_shard_is_an_error(ckpt):
    d = ckpt.hf("model", as_state(A), fmt="bin", shards=2)
    (d / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(LadleError, match="pytorch_model-00002-of-00002.bin"):
        ladle.open_ingredient(d)


def test_hf_index_and_shards_disagree(ckpt):
    state = {"a": tensor([1.0]), "b": tensor([2.0]), "c": tensor([3.0])}
    d = ckpt.hf("model", state, shards=2)  # a and b in the first shard, c in the second
    index = json.loads((d / "model.safetensors.index.json").read_text())
    assert index["weight_map"]["b"] == "model-00001-of-00002.safetensors"
    del index["weight_map"]["b"]
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(LadleError) as e:
        ladle.open_ingredient(d)
    assert e.value.key == "b" and "disagree" in str(e.value)


def test_hf_tensor_in_two_shards(ckpt):
    from safetensors.torch import save_file

    d = ckpt.hf("model", as_state(A), shards=2)
    first = load_file(d / "model-00001-of-00002.safetensors")
    second = load_file(d / "model-00002-of-00002.safetensors")
    save_file({**second, **first}, str(d / "model-00002-of-00002.safetensors"))  # shard 2 repeats shard 1's tensor
    with pytest.raises(LadleError) as e:
        ladle.open_ingredient(d)
    assert list(first) == [e.value.key] and "appears in two shards" in str(e.value)


def test_identical_weights_in_every_format_soup_to_themselves(ckpt, tmp_path):
    state = as_state(A)
    sources = [
        ckpt.st("a", state),
        ckpt.pt("a.pt", state),
        ckpt.pt("a_legacy.bin", {"state_dict": {"module." + k: v for k, v in state.items()}}, legacy=True),
        ckpt.hf("hf_st", state, shards=2),
        ckpt.hf("hf_bin", state, fmt="bin", shards=2),
        ckpt.hf("hf_bin1", state, fmt="bin"),
    ]
    soup = ladle.cook("uniform", sources).state_dict
    assert_same_state(soup, state)


# ---------------------------------------------------------------- sharded outputs round-trip


def _ingredients(ckpt):
    a = {f"blocks.{i}.weight": torch.full((4, 4), float(i)) for i in range(6)}
    b = {f"blocks.{i}.weight": torch.full((4, 4), float(i) + 2.0) for i in range(6)}
    a["blocks.0.steps"], b["blocks.0.steps"] = torch.tensor(3), torch.tensor(3)
    return ckpt.st("a", a), ckpt.st("b", b)


def test_sharded_directory_round_trip(ckpt, tmp_path):
    a, b = _ingredients(ckpt)
    single = tmp_path / "soup.safetensors"
    out = tmp_path / "soupdir"
    ladle.cook("uniform", [a, b], out=single)
    soup = ladle.cook("uniform", [a, b], out=out, max_shard_size=150)  # each weight is 64 bytes: 2 per shard
    n = 3
    shard_names = [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert sorted(p.name for p in out.iterdir()) == sorted(shard_names + ["model.safetensors.index.json", "ladle.json", "README.md"])
    assert sorted(soup.sha256) == shard_names

    index = json.loads((out / "model.safetensors.index.json").read_text())
    expected = ladle.load_soup(single)
    assert sorted(index["weight_map"]) == sorted(expected)
    assert set(index["weight_map"].values()) == set(shard_names)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in expected.values())

    from_shards = {}
    for name in shard_names:
        part = load_file(out / name)  # every shard is a plain safetensors file
        assert sum(t.numel() * t.element_size() for t in part.values()) <= 150
        assert all(index["weight_map"][k] == name for k in part)
        from_shards.update(part)
    assert_same_state(from_shards, expected)
    assert_same_state(ladle.load_soup(out), expected)

    import hashlib

    for name, digest in soup.sha256.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    manifest = json.loads((out / "ladle.json").read_text())
    assert manifest == ladle.read_manifest(out) == json.loads(json.dumps(soup.manifest))
    assert manifest["recipe"] == "uniform" and manifest["selection"]["tensors"] == 7


def test_sharded_directory_through_the_cli(cli, ckpt, tmp_path):
    a, b = _ingredients(ckpt)
    out = tmp_path / "soupdir"
    result = cli("cook", "uniform", a, b, "-o", out, "--max-shard-size", "150B")
    assert result.code == 0, result.err
    names = [f"model-{i:05d}-of-00003.safetensors" for i in (1, 2, 3)]
    import hashlib

    for name in names:
        digest = hashlib.sha256((out / name).read_bytes()).hexdigest()
        assert f"sha256 {digest}  {name}" in result.out.splitlines()


def test_single_shard_directory(ckpt, tmp_path):
    a, b = _ingredients(ckpt)
    out = tmp_path / "soupdir"
    ladle.cook("uniform", [a, b], out=out)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "ladle.json", "model.safetensors"]
    assert_same_state(ladle.load_soup(out), ladle.cook("uniform", [a, b]).state_dict)


def test_a_tensor_larger_than_the_shard_size_gets_its_own_shard(ckpt, tmp_path):
    a, b = _ingredients(ckpt)
    out = tmp_path / "soupdir"
    ladle.cook("uniform", [a, b], out=out, max_shard_size=10)
    assert len(list(out.glob("model-*-of-00007.safetensors"))) == 7
    assert_same_state(ladle.load_soup(out), ladle.cook("uniform", [a, b]).state_dict)


def test_file_output_above_max_shard_size_is_an_error(ckpt, tmp_path):
    a, b = _ingredients(ckpt)
    out = tmp_path / "soup.safetensors"
    with pytest.raises(LadleError) as e:
        ladle.cook("uniform", [a, b], out=out, max_shard_size="300B")
    assert e.value.file == str(out) and "--max-shard-size" in str(e.value)
    assert list(tmp_path.iterdir()) == [ckpt.folder]


def test_sharded_soup_is_an_ingredient(ckpt, tmp_path):
    a, b = _ingredients(ckpt)
    out = tmp_path / "soupdir"
    ladle.cook("uniform", [a, b], out=out, max_shard_size=150)
    again = ladle.cook("uniform", [out, a]).state_dict
    assert torch.equal(again["blocks.1.weight"], torch.full((4, 4), (2.0 + 1.0) / 2))


# ---------------------------------------------------------------- in-memory ingredients through the API


def _linear(w, b) -> nn.Linear:
    m = nn.Linear(2, 1)
    with torch.no_grad():
        m.weight.copy_(tensor([w]))
        m.bias.copy_(tensor([b]))
    return m


def test_modules_as_ingredients():
    soup = ladle.cook("uniform", [_linear([1.0, 2.0], 3.0), _linear([3.0, 6.0], 5.0)])
    assert soup.path is None and soup.sha256 == {}
    assert sorted(soup.state_dict) == ["bias", "weight"]
    assert torch.equal(soup.state_dict["weight"], tensor([[2.0, 4.0]]))
    assert torch.equal(soup.state_dict["bias"], tensor([4.0]))
    names = [i["path"] for i in soup.manifest["ingredients"]]
    assert all(n.startswith("<Linear ") for n in names) and names[0] != names[1]  # distinct objects, distinct names
    assert soup.manifest["ingredients"][0]["bytes"] == 12 and soup.manifest["ingredients"][0]["files"] == []


def test_state_dicts_modules_and_files_mix(ckpt, tmp_path):
    path = ckpt.st("third", {"weight": tensor([[5.0, 7.0]]), "bias": tensor([10.0])})
    ingredients = [{"weight": tensor([[1.0, 2.0]]), "bias": tensor([3.0])}, _linear([3.0, 6.0], 5.0), path]
    out = tmp_path / "soup.safetensors"
    soup = ladle.cook("weighted", ingredients, weights=[1, 1, 2], out=out)
    got = load_file(out)
    assert torch.equal(got["weight"], tensor([[3.5, 5.5]]))
    assert torch.equal(got["bias"], tensor([7.0]))
    names = [i["path"] for i in soup.manifest["ingredients"]]
    assert names[0].startswith("<state dict ") and names[1].startswith("<Linear ") and names[2] == str(path)
    assert "sha256" not in soup.manifest["ingredients"][0]
    assert soup.manifest["ingredients"][2]["sha256"] == __import__("hashlib").sha256(path.read_bytes()).hexdigest()


def test_module_with_buffers_and_wrapped_state_dict():
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)) for _ in range(2)]
    for i, net in enumerate(nets):
        net[1].num_batches_tracked.fill_(10 + i)
    wrapped = {"state_dict": {"module." + k: v for k, v in nets[1].state_dict().items()}}
    soup = ladle.cook("uniform", [nets[0], wrapped])
    sd0, sd1 = nets[0].state_dict(), nets[1].state_dict()
    for k, v in soup.state_dict.items():
        if v.is_floating_point():
            assert torch.allclose(v, (sd0[k] + sd1[k]) / 2, rtol=0, atol=1e-7), k
    assert soup.state_dict["1.num_batches_tracked"].item() == 10  # integers: the first ingredient's
    assert any("removed the 'module.' prefix" in n for n in soup.notes)
    assert any("took the state dict from the top-level 'state_dict' entry" in n for n in soup.notes)


def test_check_api_takes_modules_and_dicts():
    report = ladle.check([_linear([1.0, 2.0], 3.0), {"weight": tensor([[1.0, 2.0]]), "bias": tensor([3.0])}])
    assert report.ok and len(report.identical_groups) == 1
    assert [n.split(" ")[0] for n in report.identical_groups[0]] == ["<Linear", "<state"]


def test_in_memory_errors_name_the_source():
    with pytest.raises(LadleError, match="holds no tensors"):
        ladle.open_ingredient({"lr": 0.1})
    with pytest.raises(LadleError) as e:
        ladle.cook("uniform", [{"w": tensor([1.0])}, {"w": tensor([1.0, 2.0])}])
    assert e.value.key == "w" and "shape" in str(e.value)


def test_an_index_file_given_directly_opens_its_shards(ckpt):
    state = as_state(A)
    d = ckpt.hf("model", state, fmt="safetensors", shards=3)
    ing = ladle.open_ingredient(d / "model.safetensors.index.json")
    assert ing.files == ladle.open_ingredient(d).files and len(ing.files) > 1
    assert_same_state(ing.state_dict(), state)
