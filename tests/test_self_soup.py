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
                                                  "supervised uniform (no inter-training)",
                                                  "stock, BN re-estimated on the pool"]
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
    ({"pool_fraction": 1.0}, "pool_fraction", "out of range"),
    ({"lunch": 1}, "lunch", "unknown field"),
])
def test_config_errors_name_the_field_in_one_line(overrides, field, message):
    with pytest.raises(LadleError) as err:
        load_self_soup_config(None, overrides)
    assert f"field '{field}'" in str(err.value) and message in str(err.value) and "\n" not in str(err.value)
