"""The self-souping study end to end at a tiny scale: disjoint halves enforced and recorded, encoder-only
inter-trained ingredients, fine-tuned-back twins, soups, controls and the table; a rerun trains nothing."""

from __future__ import annotations

import json

import pytest

from ladle.errors import LadleError
from ladle.io.manifest import read_manifest
from ladle.studies.self_soup import load_self_soup_config, study_self_soup

TINY = {"model": "ladle.models:small_resnet", "image_size": 16, "target": ["imagenet-c:gaussian_noise", "laion-c:mosaic"],
        "ssl": [{"objective": "mocov3", "simplified": True, "temperature": 0.1, "proj_dim": 8, "hidden_dim": 16},
                {"objective": "mmcr", "proj_dim": 8, "hidden_dim": 16}],
        "ssl_steps": 2, "ft_epochs": 1, "lp_steps": 1, "season_epochs": 1}


def test_the_study_runs_end_to_end_and_a_rerun_trains_nothing(tmp_path, monkeypatch):
    cfg = load_self_soup_config(None, TINY)
    table = study_self_soup(tmp_path, config=cfg, executor="local:1", device="cpu")
    assert [r["row"] for r in table["rows"]] == ["best single ingredient", "uniform", "greedy", "self-seasoned",
                                                  "self-seasoned, ingredients only",
                                                  "supervised uniform (no inter-training)",
                                                  "stock (linear-probed, as is)", "stock, BN re-estimated on the pool"]
    assert table["columns"] == ["clean", "imagenet-c", "laion-c"]
    for row in table["rows"]:
        assert all(0 <= row[c] <= 100 for c in table["columns"])
    halves = json.loads((tmp_path / "data" / "halves.json").read_text())
    assert not set(halves["pool_indices"]) & set(halves["eval_indices"])  # disjoint, and recorded
    assert len(halves["pool_indices"]) + len(halves["eval_indices"]) == 1197
    assert halves["pool_images"] == 2 * len(halves["pool_indices"])  # one copy per target corruption
    ssl = read_manifest(tmp_path / "ssl" / "run-00" / "ingredient-00.safetensors")
    assert ssl["encoder_only"] and ssl["objective"] == "mocov3" and ssl["heldout_accuracy"] is None  # no labels
    back = read_manifest(tmp_path / "back" / "back-00.safetensors")
    assert back["inter_trained"]["objective"] == "mocov3"
    sup = read_manifest(tmp_path / "supervised" / "ingredient-00.safetensors")
    assert back["identity"]["plan"]["hyperparameters"] == sup["hyperparameters"]  # the supervised twin's plan
    assert "self-seasoned" in (tmp_path / "results.md").read_text()

    import ladle.training.loop as loop

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(loop, "train", no_training)
    again = study_self_soup(tmp_path, config=cfg, executor="local:1", device="cpu")
    assert again["rows"] == table["rows"]


@pytest.mark.parametrize("overrides, field, message", [
    ({"ssl": [{"objective": "cross_entropy"}]}, "ssl", "not self-supervised"),
    ({"ssl": [{"objective": "mmcr", "temperature": 0.1}]}, "ssl", "has no knob 'temperature'"),
    ({"target": ["imagenet-c:smog"]}, "target", "'smog' is not in suite imagenet-c"),
    ({"pool_fraction": 1.0}, "pool_fraction", "must be < 1, got 1.0"),
    ({"severity": 6}, "severity", "must be ≤ 5, got 6"),
    ({"lunch": 1}, "lunch", "unknown field"),
])
def test_config_errors_name_the_field_in_one_line(overrides, field, message):
    with pytest.raises(LadleError) as err:
        load_self_soup_config(None, overrides)
    assert f"field '{field}'" in str(err.value) and message in str(err.value) and "\n" not in str(err.value)


def test_a_timm_stock_loads_its_weights_from_a_local_file_without_its_head(tmp_path):
    import timm
    import torch
    from safetensors.torch import save_file

    from ladle.models import build_model

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, num_classes=0)
    path = tmp_path / "mae-encoder.safetensors"
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))  # an encoder: no head
    import functools

    monkey = functools.partial(timm.create_model, img_size=32, patch_size=8)
    with pytest.MonkeyPatch.context() as m:  # a small ViT under the registered name (no 224 px model needed)
        m.setattr(timm, "create_model", lambda name, **kw: monkey(name, **kw))
        model = build_model(f"timm:vit_tiny_patch16_224@{path}", 10)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in vit.state_dict().items())
    assert model.get_classifier().out_features == 10
    bad = tmp_path / "bad.safetensors"
    save_file({"blocks.0.norm1.weight": torch.zeros(3)}, str(bad))
    with pytest.raises(LadleError, match="bad.safetensors.*lacks a tensor|the weights lack a tensor"):
        build_model(f"timm:vit_tiny_patch16_224@{bad}", 10)


def test_the_shipped_configs():
    cpu = load_self_soup_config(None)
    assert cpu.model == "efficientnet-lite0" and cpu.image_size == 64 and len(cpu.ssl) >= 2
    for name, suite in (("paper-in-c.yaml", "imagenet-c"), ("paper-laion-c.yaml", "laion-c")):
        paper = load_self_soup_config(name)
        assert paper.image_size == 224 and paper.ssl_steps == 10000 and paper.target == (suite,)
        assert paper.model.startswith("timm:vit_base_patch16_224@")
        assert {r["objective"] for r in paper.ssl} == {"mae", "mocov3", "mmcr"}
        assert {r.get("temperature") for r in paper.ssl if r["objective"] == "mocov3"} == {0.1, 1.0}
