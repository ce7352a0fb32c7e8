"""Every tasting recipe validates its ingredients against the model through one path (Taster.bind): a head for
another class count, an extra tensor or a mis-shaped weight is one line naming the file and the tensor, exit 2,
and nothing is written. Checkpoints and an `.npz` data set with 3 classes are made here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ladle.models import tiny_cnn

MODEL = "ladle.models:tiny_cnn"


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory):
    """A 3-class data set of 16×16 images, and ingredient files of several kinds."""
    root = tmp_path_factory.mktemp("fit")
    rng = np.random.default_rng(0)
    np.savez(root / "three.npz", x=rng.integers(0, 255, (60, 16, 16, 3), dtype=np.uint8), y=np.arange(60) % 3)

    def write(name, num_classes=3, edit=None):
        torch.manual_seed(len(name))
        state = {k: v.contiguous() for k, v in tiny_cnn(num_classes).state_dict().items()}
        if edit:
            edit(state)
        save_file(state, str(root / name))
        return root / name

    files = {
        "good": [write("good-a.safetensors"), write("good-b.safetensors")],
        "four": [write("four-a.safetensors", 4), write("four-b.safetensors", 4)],
        "extra": [write("extra-a.safetensors", edit=lambda s: s.update({"aux.weight": torch.ones(2)})),
                  write("extra-b.safetensors", edit=lambda s: s.update({"aux.weight": torch.ones(2)}))],
        "shape": [write("shape-a.safetensors", edit=lambda s: s.update({"0.weight": torch.zeros(16, 3, 5, 5)})),
                  write("shape-b.safetensors", edit=lambda s: s.update({"0.weight": torch.zeros(16, 3, 5, 5)}))],
    }
    return root, files


RECIPE_ARGS = {"greedy": [], "learned": ["--epochs", "1"], "season": ["--shots", "6", "--grid", "2"]}
EXPECTED = {"four": ("four-a.safetensors", "tensor '8.bias'", "shape [4], the model needs [3]"),
            "extra": ("extra-a.safetensors", "tensor 'aux.weight'", "a tensor the model does not have"),
            "shape": ("shape-a.safetensors", "tensor '0.weight'", "shape [16, 3, 5, 5], the model needs [16, 3, 3, 3]")}


@pytest.mark.parametrize("recipe", list(RECIPE_ARGS))
@pytest.mark.parametrize("kind", list(EXPECTED))
def test_ingredients_that_do_not_fit_are_refused_alike(recipe, kind, three_classes, cli, tmp_path):
    root, files = three_classes
    out = tmp_path / "soup.safetensors"
    split = "test" if recipe == "season" else "heldout"
    r = cli("cook", recipe, *files[kind], "--model", MODEL, "--data", f"{root / 'three.npz'}:{split}",
            "--image-size", "16", *RECIPE_ARGS[recipe], "-o", out)
    assert r.code == 2, r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ladle: error: ")
    for needle in EXPECTED[kind]:
        assert needle in lines[0]
    assert "soup of" not in lines[0]  # the file is named, never an internal label
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("recipe", list(RECIPE_ARGS))
def test_ingredients_that_fit_are_cooked(recipe, three_classes, cli, tmp_path):
    root, files = three_classes
    out = tmp_path / "soup.safetensors"
    split = "test" if recipe == "season" else "heldout"
    r = cli("cook", recipe, *files["good"], "--model", MODEL, "--data", f"{root / 'three.npz'}:{split}",
            "--image-size", "16", *RECIPE_ARGS[recipe], "-o", out)
    assert r.code == 0, r.err
    assert out.is_file()
