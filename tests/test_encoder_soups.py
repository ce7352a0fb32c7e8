"""Heterogeneous soups: --encoder-only soups the shared encoder of ingredients trained with different objectives
(heads and decoders dropped, as each ingredient's record or model names them)."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from ladle import cook
from ladle.cli import main
from ladle.errors import LadleError
from ladle.io.checkpoints import TensorInfo
from ladle.io.writer import SoupWriter
from ladle.models.encoder import encoder_state, head_keys
from ladle.models.specs import small_resnet

MODEL = "ladle.models:small_resnet"


def write(path, tensors: dict, record: dict) -> str:
    with SoupWriter(path, {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in tensors.items()}, force=True) as w:
        for k, v in tensors.items():
            w.add(k, v.contiguous())
        w.finish(record)
    return str(path)


def ssl_ingredient(path, seed: int, width: int = 8, objective: str = "mocov3"):
    torch.manual_seed(seed)
    model = small_resnet(10, width)
    return write(path, encoder_state(model), {"role": "ingredient", "objective": objective, "encoder_only": True,
                                              "head_keys": head_keys(model), "model": MODEL})


def full_model(path, seed: int, width: int = 8):
    torch.manual_seed(seed)
    return write(path, small_resnet(10, width).state_dict(), {"role": "ingredient", "model": MODEL})


def keys_of(path) -> set[str]:
    with safe_open(str(path), "pt") as f:
        return set(f.keys())


def tensors_of(path) -> dict:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_an_encoder_only_soup_drops_every_head_and_averages_the_encoder(tmp_path):
    a = ssl_ingredient(tmp_path / "moco.safetensors", 0, objective="mocov3")
    b = ssl_ingredient(tmp_path / "mmcr.safetensors", 1, objective="mmcr")
    c = full_model(tmp_path / "supervised.safetensors", 2)  # a head of its own, named by its model
    out = tmp_path / "soup.safetensors"
    cook("uniform", [a, b, c], out=out, encoder_only=True)
    encoder = set(small_resnet(10, 8).state_dict()) - {"fc.weight", "fc.bias"}
    assert keys_of(out) == encoder
    parts = [tensors_of(p) for p in (a, b, c)]
    soup = tensors_of(out)
    for k in encoder:
        if soup[k].is_floating_point():
            expected = (parts[0][k].double() + parts[1][k].double() + parts[2][k].double()) / 3
            assert torch.allclose(soup[k].double(), expected, atol=1e-6), k


def test_one_encoder_at_weight_one_is_itself_and_order_does_not_matter(tmp_path):
    a = ssl_ingredient(tmp_path / "a.safetensors", 0)
    c = full_model(tmp_path / "c.safetensors", 2)
    cook("weighted", [a, c], weights=[1.0, 0.0], out=tmp_path / "one.safetensors", encoder_only=True)
    assert all(torch.equal(v, tensors_of(a)[k]) for k, v in tensors_of(tmp_path / "one.safetensors").items())
    cook("uniform", [a, c], out=tmp_path / "ac.safetensors", encoder_only=True)
    cook("uniform", [c, a], out=tmp_path / "ca.safetensors", encoder_only=True)
    ac, ca = tensors_of(tmp_path / "ac.safetensors"), tensors_of(tmp_path / "ca.safetensors")
    assert all(torch.equal(ac[k], ca[k]) for k in ac)


def test_without_encoder_only_a_head_of_one_ingredient_is_named_in_one_line(tmp_path, capsys):
    a = ssl_ingredient(tmp_path / "a.safetensors", 0)
    c = full_model(tmp_path / "c.safetensors", 2)
    code = main(["cook", "uniform", c, a, "-o", str(tmp_path / "s.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "'fc.weight': missing" in err and "--encoder-only" in err
    assert not (tmp_path / "s.safetensors").exists()


def test_encoders_of_different_shapes_are_refused_naming_file_and_tensor(tmp_path, capsys):
    a = ssl_ingredient(tmp_path / "a.safetensors", 0, width=8)
    b = ssl_ingredient(tmp_path / "wide.safetensors", 1, width=16)
    code = main(["cook", "uniform", a, b, "--encoder-only", "-o", str(tmp_path / "s.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "wide.safetensors" in err and "shape" in err
    assert not (tmp_path / "s.safetensors").exists()


def test_an_ingredient_that_names_no_head_is_refused_with_a_hint(tmp_path):
    a = ssl_ingredient(tmp_path / "a.safetensors", 0)
    bare = tmp_path / "bare.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in small_resnet(10, 8).state_dict().items()}, str(bare))
    with pytest.raises(LadleError, match="names no head .* --exclude PATTERN") as err:
        cook("uniform", [a, str(bare)], out=tmp_path / "s.safetensors", encoder_only=True)
    assert "bare.safetensors" in str(err.value)
