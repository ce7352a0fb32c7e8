"""Every shipped paper-scale config runs end to end at miniature size, on CPU, through the same loader, code path
and model family: a user who takes one to a GPU does not crash hours in.

Only sizes are overridden (images, epochs, steps, models, threads); the model family, the objectives and their
knobs, and the study's code path are the config's. The data are written here in the format the config names:
CIFAR-100 python pickles for the branch-point study's ResNet-50, an ImageFolder for the self-soup ViT-B/16, whose
MAE stock is a random-init weights file without a head (timm key names), as `@FILE` expects.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from ladle.studies.branch_points import load_branch_config, study_branch_points
from ladle.studies.self_soup import load_self_soup_config, study_self_soup

# about 5 minutes each on 2 shared cores (ViT-B/16 at 224 px through a whole study): `-m "not slow"` leaves them out
slow = pytest.mark.slow


def write_cifar100(folder: Path, train: int = 24, test: int = 4, used: int = 4) -> Path:
    """CIFAR-100's python layout (`train`, `test`, `meta`; fine labels), random 32 px images of `used` classes."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    for name, n in (("train", train), ("test", test)):
        batch = {b"data": rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8),
                 b"fine_labels": [i % used for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [f"class{i}".encode() for i in range(100)]}))
    return folder


def test_branch_points_paper_config_at_miniature_size(tmp_path):
    paper = load_branch_config("paper.yaml")
    cfg = load_branch_config("paper.yaml", {
        "data": str(write_cifar100(tmp_path / "cifar-100-python")),
        "epochs": 2, "schedule_epochs": 2, "checkpoint_every": 1, "branch_epochs": [1], "branch_end": 2,
        "corruptions": ["imagenet-c:gaussian_noise"], "threads": 1})  # one corruption of the suite: fewer images
    assert (cfg.model, cfg.num_classes, cfg.image_size, cfg.variants, cfg.severities) == (
        paper.model, paper.num_classes, paper.image_size, paper.variants, paper.severities)  # only sizes changed
    assert paper.corruptions == ("imagenet-c",)
    analysis = study_branch_points(tmp_path / "bp", config=cfg, executor="local:1", device="cpu")
    assert analysis["pairs"] == 6  # the paper's 4 variants of the one branch point, every pair souped
    assert (tmp_path / "bp" / "report" / "summary.md").is_file()


def write_image_folder(root: Path, per_class: dict[str, int]) -> None:
    from PIL import Image

    rng = np.random.default_rng(1)
    for split, n in per_class.items():
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / split / label / f"{i}.png")


def write_mae_stock(path: Path) -> Path:
    """A ViT-B/16 encoder with random weights and no head, under timm's key names (as MAE checkpoints convert)."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def one_of_each_objective(runs: tuple[dict, ...]) -> list[dict]:
    """Fewer models: the first run of each objective, with the config's knobs."""
    return list({run["objective"]: run for run in reversed(runs)}.values())[::-1]


@slow
@pytest.mark.parametrize("name, target", [("paper-in-c.yaml", "imagenet-c:gaussian_noise"),
                                          ("paper-laion-c.yaml", "laion-c:mosaic")])
def test_self_soup_paper_configs_at_miniature_size(tmp_path, name, target):
    paper = load_self_soup_config(name)
    write_image_folder(tmp_path / "imagenet", {"train": 3, "test": 10})
    stock = write_mae_stock(tmp_path / "mae_pretrain_vit_base.safetensors")
    model = paper.model.partition("@")[0] + f"@{stock}"
    assert paper.target[0] == target.partition(":")[0]  # one corruption of the config's suite: fewer images
    cfg = load_self_soup_config(name, {
        "model": model, "data": str(tmp_path / "imagenet"), "target": [target], "ssl": one_of_each_objective(paper.ssl),
        "pool_fraction": 0.9,  # a pool of 18: self-seasoning needs batches of more than its k = 16 neighbours
        "ssl_steps": 1, "ssl_batch_size": 2, "ft_epochs": 1, "lp_steps": 1, "season_epochs": 1, "threads": 2})
    assert (cfg.image_size, cfg.ssl_lr, cfg.severity) == (paper.image_size, paper.ssl_lr, paper.severity)
    assert {r["objective"] for r in cfg.ssl} == {"mae", "mocov3", "mmcr"}
    table = study_self_soup(tmp_path / "ss", config=cfg, executor="local:1", device="cpu")
    assert table["columns"] == ["clean", paper.target[0]] and len(table["rows"]) == 8
