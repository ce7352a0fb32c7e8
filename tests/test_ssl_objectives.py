"""Self-supervised objectives: each lowers its loss on a tiny fixed batch; MoCo's momentum update and MMCR's
nuclear norm against hand computations; views are seeded; MAE starts from the stock's weights untouched."""

from __future__ import annotations

import functools

import pytest
import torch

from ladle.data.load import ImageSet
from ladle.models.encoder import embed, encoder_state, head_keys
from ladle.models.specs import small_resnet
from ladle.training.loop import adamw, constant, train
from ladle.training.objectives import MAE, MMCR, MaskedImage, MoCoV3, make_objective
from ladle.training.objectives.masked import patch_mask
from ladle.training.objectives.mmcr import mmcr_loss
from ladle.training.objectives.mocov3 import contrastive, momentum_at
from ladle.training.objectives.views import View, augment, moco_views

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


def tiny_images(n: int = 16, side: int = 16, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, side, side, generator=g)
    x[:, :, : side // 2] *= torch.linspace(0.2, 1.0, n).view(n, 1, 1, 1)  # some structure to learn
    return ImageSet(x, torch.full((n,), -1), ["unlabelled"])  # labels that would break a supervised loss


def tiny_vit(side: int = 16):
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=side, patch_size=4, embed_dim=32,
                             depth=2, num_heads=2, num_classes=10)


def losses_of(objective, model, data, steps=40, lr=3e-3):
    return train(model, objective, data, optimiser=functools.partial(adamw, lr=lr, weight_decay=0.0),
                 schedule=functools.partial(constant, lr=lr), bn="train", epochs=steps, batch_size=len(data), seed=0,
                 mean=MEAN, std=STD)


@pytest.mark.parametrize("objective, model", [
    (MoCoV3(temperature=0.2, proj_dim=16, hidden_dim=32), "cnn"),
    (MoCoV3(temperature=1.0, proj_dim=16, hidden_dim=32, simplified=True), "cnn"),
    (MMCR(views=2, proj_dim=16, hidden_dim=32), "cnn"),
    (MMCR(views=2, local_views=2, proj_dim=16, hidden_dim=32), "cnn"),
    (MaskedImage(mask_ratio=0.5, patch_size=4), "cnn"),
    (MAE(mask_ratio=0.75, decoder_dim=16, decoder_depth=1, decoder_heads=2), "vit"),
], ids=["mocov3", "mocov3-simplified", "mmcr-global", "mmcr-global+local", "masked", "mae"])
def test_each_objective_lowers_its_loss_on_a_tiny_fixed_batch(objective, model):
    torch.manual_seed(0)
    net = small_resnet(10, width=8) if model == "cnn" else tiny_vit()
    losses = losses_of(objective, net, tiny_images())
    assert all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < first - 0.02 * abs(first), (first, last)


def test_the_momentum_update_matches_a_hand_computation():
    torch.manual_seed(0)
    model = small_resnet(10, width=4)
    objective = MoCoV3(momentum_start=0.99, proj_dim=4, hidden_dim=8)
    objective.setup(model, tiny_images(4, 8))
    before = {k: v.clone() for k, v in objective.momentum_encoder.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    objective.after_step(model, step=0, total_steps=10)  # m = 0.99 at the first step
    for name, online in model.named_parameters():
        expected = 0.99 * before[name] + 0.01 * online
        assert torch.allclose(dict(objective.momentum_encoder.named_parameters())[name], expected, atol=1e-6)
    assert momentum_at(0, 10, 0.99) == pytest.approx(0.99) and momentum_at(9, 10, 0.99) == pytest.approx(1.0)
    assert 0.99 < momentum_at(5, 10, 0.99) < 1.0


def test_the_contrastive_loss_by_hand():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # normalised: the identity
    t = 0.5
    logit = 1 / t  # positive cosine 1, negative 0
    expected = 2 * t * -torch.log(torch.exp(torch.tensor(logit)) / (torch.exp(torch.tensor(logit)) + 1))
    assert torch.allclose(contrastive(q, k, t), expected)


def test_the_mmcr_loss_is_the_negative_nuclear_norm_of_the_centroids_plus_lambda_times_the_local_ones():
    # two images, two views each; centroids [[3, 0], [0, 4]] have nuclear norm 7
    z = torch.tensor([[[3.0, 0.0], [3.0, 0.0]], [[0.0, 4.0], [0.0, 4.0]]])
    assert mmcr_loss(z, 0.0).item() == pytest.approx(-7.0)
    # each image's views (2 × 2, rank 1): nuclear norms √18 and √32; λ · their sum / batch
    lam = 0.5
    expected = -7.0 + lam * (18 ** 0.5 + 32 ** 0.5) / 2
    assert mmcr_loss(z, lam).item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="even number of views"):
        mmcr_loss(z[:, :1].repeat(1, 3, 1), 0.0)


def test_views_are_seeded_in_range_and_differ():
    x = tiny_images(8, 16).x
    a = [augment(x, v, torch.Generator().manual_seed(3)) for v in moco_views()]
    b = [augment(x, v, torch.Generator().manual_seed(3)) for v in moco_views()]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert all(v.min() >= 0 and v.max() <= 1 and v.shape == x.shape for v in a)
    assert not torch.equal(a[0], a[1])
    small = augment(x, View(size=0.5), torch.Generator().manual_seed(0))
    assert small.shape == (8, 3, 8, 8)


def test_a_flat_image_stays_flat_through_crop_flip_and_blur():
    x = torch.full((4, 3, 16, 16), 0.3)
    out = augment(x, View(jitter=0.0, grayscale_p=0.0, blur_p=1.0), torch.Generator().manual_seed(0))
    assert torch.allclose(out, x, atol=1e-6)


def test_the_patch_mask_masks_exactly_the_ratio_of_patches():
    mask = patch_mask(5, 16, 4, 0.5, torch.Generator().manual_seed(0))
    assert mask.shape == (5, 1, 16, 16)
    assert torch.all(mask.view(5, -1).sum(1) == 8 * 16)  # 8 of 16 patches, 16 pixels each


def test_mae_starts_from_the_stocks_weights_untouched():
    vit = tiny_vit()
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    MAE(decoder_dim=16, decoder_depth=1, decoder_heads=2).setup(vit, tiny_images())
    assert all(torch.equal(before[k], v) for k, v in vit.state_dict().items())


def test_mae_refuses_a_convolutional_model_in_one_line():
    from ladle.errors import LadleError

    with pytest.raises(LadleError, match="needs a timm Vision Transformer, got SmallResNet"):
        MAE().setup(small_resnet(10, width=4), tiny_images())


def test_the_encoder_is_the_model_without_its_head():
    model = small_resnet(10, width=4)
    assert head_keys(model) == ["fc.weight", "fc.bias"]
    assert set(encoder_state(model)) == set(model.state_dict()) - {"fc.weight", "fc.bias"}
    assert embed(model, torch.rand(2, 3, 8, 8)).shape == (2, 16)
    vit = tiny_vit()
    assert head_keys(vit) == ["head.weight", "head.bias"]


def test_self_supervised_objectives_never_read_labels():
    for name in ("mocov3", "mmcr", "masked"):
        assert make_objective(name).encoder_only
    assert not make_objective("cross_entropy").encoder_only


def test_ladle_train_ssl_writes_the_encoder_as_the_ingredient_and_its_heads_beside_it(tmp_path):
    import json

    from safetensors import safe_open

    from ladle.cli import main
    from ladle.io.manifest import read_manifest

    out = tmp_path / "ingr"
    code = main(["train", "ssl", "--objective", "mocov3", "--model", "ladle.models:small_resnet", "--data", "digits",
                 "--image-size", "8", "--steps", "4", "--batch-size", "16", "--set", "temperature=0.1",
                 "--set", "proj_dim=8", "--set", "hidden_dim=16", "--out", str(out)])
    assert code == 0
    ingredient = out / "ingredient-00.safetensors"
    with safe_open(str(ingredient), "pt") as f:
        keys = set(f.keys())
    model = small_resnet(10)
    assert keys == set(model.state_dict()) - {"fc.weight", "fc.bias"}  # the encoder only
    record = read_manifest(ingredient)
    assert record["objective"] == "mocov3" and record["encoder_only"] and record["head_keys"] == ["fc.weight", "fc.bias"]
    assert record["hyperparameters"]["temperature"] == 0.1 and record["hyperparameters"]["steps"] == 4
    assert record["data"]["train"]["split"] == "train" and 0.0 <= record["heldout_accuracy"] <= 1.0
    with safe_open(str(out / "objective-00.safetensors"), "pt") as f:
        heads = set(f.keys())
    assert any(k.startswith("projector.") for k in heads) and any(k.startswith("momentum_encoder.") for k in heads)
    json.dumps(record)


def test_ladle_train_ssl_refuses_a_knob_of_another_objective_in_one_line(tmp_path, capsys):
    from ladle.cli import main

    code = main(["train", "ssl", "--objective", "masked", "--set", "temperature=0.1", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "field 'temperature': not used by this sweep" in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_no_objective_knob_shares_a_name_with_an_optimiser_or_schedule_knob():
    from ladle.training.loop import OPTIMISERS, SCHEDULES
    from ladle.training.objectives import OBJECTIVES, knobs_of

    parts = {k for table in (OPTIMISERS, SCHEDULES) for f in table.values() for k in knobs_of(f)}
    for name, cls in OBJECTIVES.items():
        assert not set(knobs_of(cls)) & parts, name  # a sweep field must mean one thing


def test_the_shipped_ssl_sweep_draws_self_supervised_runs_with_a_fixed_step_count():
    from ladle.training.config import load_config, sample_run

    config = load_config("ssl-sweep.yaml")
    runs = [sample_run(config, r) for r in range(config.runs)]
    assert config.lp_steps == 0 and all(make_objective(r.objective).encoder_only for r in runs)
    assert all(r.hyperparameters["steps"] == 100 for r in runs)
    assert "steps" not in load_config(None).to_dict()  # sweeps without it keep their ids
