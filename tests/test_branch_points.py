"""The branch-point study's training half: stock checkpoints, branches, resume, config errors."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ladle.errors import LadleError
from ladle.io.manifest import read_manifest
from ladle.studies import branch_points as bp
from ladle.studies.branch_points import (PAPER_VARIANTS, branch_tasks, default_config_path, load_branch_config,
                                         train_branch, train_branch_points, train_stock)

from conftest import TMP_MARK, sha256_of, snapshot

# A tiny BN net on the 8×8 digits: 5 steps an epoch, a checkpoint every 2 epochs, branches at 2 and 4 of 6.
SMALL = {"model": "ladle.models:tiny_cnn", "image_size": 8, "epochs": 6, "checkpoint_every": 2,
         "branch_epochs": [2, 4], "batch_size": 64, "threads": 1}


def small(**more):
    return load_branch_config(None, {**SMALL, **more})


def test_the_stock_keeps_a_checkpoint_every_k_epochs_and_the_branches_record_what_they_are(tmp_path):
    cfg = small()
    records = train_branch_points(cfg, tmp_path, executor="local:1", device="cpu")
    for epoch in (2, 4, 6):
        stock = tmp_path / "stock" / f"stock-e{epoch:03d}.safetensors"
        manifest = read_manifest(stock)
        assert manifest["role"] == "stock" and manifest["epoch"] == epoch
        assert (tmp_path / "stock" / f"stock-e{epoch:03d}.optim.safetensors").is_file()
    assert [r["name"] for r in records] == [f"e{e:03d}-v{v}" for e in (2, 4) for v in (1, 2, 3, 4)]
    seeds = set()
    for r in records:
        manifest = read_manifest(r["path"])
        assert (manifest["branch_epoch"], manifest["variant"]) == (r["branch_epoch"], r["variant"])
        scales = PAPER_VARIANTS[int(r["variant"][1:]) - 1]
        assert manifest["scales"] == list(scales)
        hp = manifest["hyperparameters"]
        assert hp["lr"] == pytest.approx(0.1 * scales[0]) and hp["momentum"] == pytest.approx(0.9 * scales[1])
        assert hp["weight_decay"] == pytest.approx(cfg.weight_decay * scales[2]) and hp["nesterov"] is True
        assert hp["seed"] == r["seed"]
        seeds.add(r["seed"])
        assert manifest["stock_sha256"] == sha256_of(tmp_path / "stock" / f"stock-e{r['branch_epoch']:03d}.safetensors")
        assert 0 <= r["heldout_accuracy"] <= 1 and r["sha256"]  # a fraction, as the sweep records it
    assert len(seeds) == len(records)  # each branch its own seed


def test_a_branch_trains_with_its_scaled_hyper_parameters_on_the_continued_cosine(tmp_path, monkeypatch):
    cfg = small(branch_epochs=[4])
    stock = train_stock(cfg, tmp_path, device="cpu")
    built = []
    make = bp._momentum_optimiser

    def spy(model, buffers, holder, **hp):
        inner = make(model, buffers, holder, **hp)

        def build(params):
            opt = inner(params)
            group = opt.param_groups[0]
            built.append({k: group[k] for k in ("lr", "momentum", "weight_decay", "nesterov")}
                         | {"buffers": sum(1 for p in params if "momentum_buffer" in opt.state[p])})
            return opt

        return build

    monkeypatch.setattr(bp, "_momentum_optimiser", spy)
    task = branch_tasks(cfg, tmp_path, stock, device="cpu")[1]  # v2
    result = train_branch(task)
    lr, momentum, wd = PAPER_VARIANTS[1]
    assert built == [{"lr": pytest.approx(0.1 * lr), "momentum": pytest.approx(0.9 * momentum),
                      "weight_decay": pytest.approx(cfg.weight_decay * wd), "nesterov": True,
                      "buffers": len(list(cfg_model_params(cfg)))}]  # the stock's momentum buffers, all of them
    assert result["variant"] == "v2" and result["branch_epoch"] == 4


def cfg_model_params(cfg):
    from ladle.models import build_model

    return build_model(cfg.model, 10).parameters()


def test_the_schedule_continues_one_cosine_across_calls():
    param = torch.nn.Parameter(torch.zeros(1))
    lrs = []
    for offset in (0, 3, 6):  # three calls of 3 steps = one cosine of 10 steps
        opt = torch.optim.SGD([param], lr=2.0)
        sched = bp.global_cosine(opt, 3, offset=offset, length=10)
        for _ in range(3):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    assert lrs == pytest.approx([2.0 * 0.5 * (1 + math.cos(math.pi * t / 10)) for t in range(9)])


def test_a_killed_stock_resumes_from_its_last_checkpoint_with_identical_bytes(tmp_path):
    cfg = small()
    train_stock(cfg, tmp_path, device="cpu")
    whole = snapshot(tmp_path)
    (tmp_path / "stock" / "stock-e006.safetensors").unlink()  # killed before the last checkpoint was complete
    (tmp_path / "stock" / "stock-e002.optim.safetensors").write_bytes(b"")  # and an earlier one damaged: redo all
    records = train_stock(cfg, tmp_path, device="cpu")
    assert snapshot(tmp_path) == whole
    assert [r["epoch"] for r in records] == [2, 4, 6]
    (tmp_path / "stock" / "stock-e006.safetensors").unlink()
    mtime = os.stat(tmp_path / "stock" / "stock-e004.safetensors").st_mtime_ns
    train_stock(cfg, tmp_path, device="cpu")  # resumes after epoch 4: that one is kept as it is
    assert os.stat(tmp_path / "stock" / "stock-e004.safetensors").st_mtime_ns == mtime
    assert snapshot(tmp_path) == whole


def test_a_stock_killed_with_sigkill_resumes_to_the_bytes_of_an_uninterrupted_run(tmp_path):
    # the study's own BN ResNet, long enough (12 epochs, 38 steps each) to be killed between checkpoints
    overrides = {**SMALL, "model": "ladle.models:small_resnet", "epochs": 12, "batch_size": 8}
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    script = ("import sys; from ladle.studies.branch_points import load_branch_config, train_stock; "
              f"train_stock(load_branch_config(None, {overrides!r}), sys.argv[1], device='cpu')")
    proc = subprocess.Popen([sys.executable, "-c", script, str(killed)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (killed / "stock" / "stock-e004.safetensors").exists():
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert (killed / "stock" / "stock-e004.safetensors").exists(), "the stock did not get going"
    assert not (killed / "stock" / "stock-e012.safetensors").exists(), "killed too late to test a resume"
    cfg = load_branch_config(None, overrides)
    records = train_stock(cfg, killed, device="cpu")
    train_stock(cfg, whole, device="cpu")
    kept = {k: v for k, v in snapshot(killed).items() if TMP_MARK not in k}
    assert kept == snapshot(whole)
    assert [r["epoch"] for r in records] == [2, 4, 6, 8, 10, 12]


def test_branches_on_two_workers_are_the_bytes_of_one(tmp_path):
    cfg = small(branch_epochs=[2, 4], variants=[[0.5, 1.0, 1.0], [1.0, 1.0, 0.5]])
    one = train_branch_points(cfg, tmp_path / "one", executor="local:1", device="cpu")
    two = train_branch_points(cfg, tmp_path / "two", executor="local:2", device="cpu")
    assert [r["sha256"] for r in one] == [r["sha256"] for r in two]
    assert [r["name"] for r in two] == ["e002-v1", "e002-v2", "e004-v1", "e004-v2"]


def test_a_stock_from_another_config_is_trained_again(tmp_path):
    train_stock(small(), tmp_path, device="cpu")
    before = read_manifest(tmp_path / "stock" / "stock-e002.safetensors")
    train_stock(small(lr=0.05), tmp_path, device="cpu")
    after = read_manifest(tmp_path / "stock" / "stock-e002.safetensors")
    assert before["identity"]["lr"] == 0.1 and after["identity"]["lr"] == 0.05


def test_a_finished_branch_is_never_trained_again(tmp_path, monkeypatch):
    cfg = small(branch_epochs=[4], variants=[[0.5, 1.0, 1.0], [1.0, 1.0, 1.0]])
    first = train_branch_points(cfg, tmp_path, executor="local:1", device="cpu")
    mtimes = {r["name"]: os.stat(r["path"]).st_mtime_ns for r in first}
    calls = []
    real = bp._train_span
    monkeypatch.setattr(bp, "_train_span", lambda *a, **k: calls.append(k.get("desc")) or real(*a, **k))
    again = train_branch_points(cfg, tmp_path, executor="local:1", device="cpu")
    assert calls == []
    assert [r["sha256"] for r in again] == [r["sha256"] for r in first]
    assert all(not r["trained"] for r in again)
    assert {r["name"]: os.stat(r["path"]).st_mtime_ns for r in again} == mtimes
    # a changed variant is a different branch: only it is trained
    changed = small(branch_epochs=[4], variants=[[0.5, 1.0, 1.0], [1.0, 1.0, 0.5]])
    third = train_branch_points(changed, tmp_path, executor="local:1", device="cpu")
    assert calls == ["branch e004-v2"]
    assert [r["trained"] for r in third] == [False, True]


@pytest.mark.parametrize("text, line, field, message", [
    ("epochs: 4\nwidth: 3\n", 2, "width", "unknown field"),
    ("epochs: -1\n", 1, "epochs", "must be ≥ 1"),
    ("lr: fast\n", 1, "lr", "must be a number"),
    ("checkpoint_every: 5\nbranch_epochs: [7]\n", 2, "branch_epochs", "epoch 7 is not a checkpoint"),
    ("epochs: 24\nbranch_epochs: [24]\n", 2, "branch_epochs", "leaves nothing to train"),
    ("branch_epochs: sometimes\n", 1, "branch_epochs", "'from E'"),
    ("variants: [[1.0, 2.0]]\n", 1, "variants", "item 1 must be [lr_scale, momentum_scale, wd_scale]"),
    ("variants: [[1.0, 1.2, 1.0]]\n", 1, "variants", "must stay < 1"),
    ("bn: sometimes\n", 1, "bn", "unknown BatchNorm policy"),
    ("nesterov: 3\n", 1, "nesterov", "must be true or false"),
    ("corruptions: [imagenet-x]\n", 1, "corruptions", "unknown suite 'imagenet-x'"),
    ("corruptions: [imagenet-c:smog]\n", 1, "corruptions", "'smog' is not in suite imagenet-c"),
    ("corruptions: 3\n", 1, "corruptions", "must be a list of suites"),
    ("severities: 7\n", 1, "severities", "must lie in 1-5"),
])
def test_config_errors_name_the_file_line_and_field(tmp_path, text, line, field, message):
    path = tmp_path / "bp.yaml"
    path.write_text(text)
    with pytest.raises(LadleError) as err:
        load_branch_config(path)
    text = str(err.value)
    assert "\n" not in text and text.startswith(f"{path}:{line}: field '{field}': ") and message in text


def test_the_shipped_configs():
    cpu = load_branch_config(None)
    assert cpu.model == "ladle.models:small_resnet" and cpu.data == "digits" and cpu.bn == "train"
    assert cpu.variants == PAPER_VARIANTS and all(e < cpu.branch_end for e in cpu.branch_epochs)
    assert len(cpu.branch_epochs) * len(cpu.variants) <= 40  # the grid stays affordable
    assert (cpu.corruptions, cpu.severities) == (("imagenet-c",), "3")
    assert load_branch_config(None, {"corruptions": [], "severities": "1-5"}).corruptions == ()
    paper = load_branch_config(default_config_path("paper.yaml"))
    assert load_branch_config("paper.yaml") == paper  # a bare name: the shipped config
    assert (paper.model, paper.epochs, paper.batch_size, paper.checkpoint_every) == ("timm:resnet50", 300, 128, 10)
    assert paper.branch_epochs == tuple(range(50, 301, 10)) and len(paper.branch_epochs) * 4 == 104
    assert paper.variants == PAPER_VARIANTS and paper.label_smoothing == 0.1 and paper.nesterov


def test_the_small_resnet_is_cheap_at_the_default_size():
    from torch.utils.flop_counter import FlopCounterMode

    from ladle.models import build_model

    cfg = load_branch_config(None)
    model = build_model(cfg.model, 10).eval()
    with FlopCounterMode(display=False) as flops:
        out = model(torch.zeros(1, 3, cfg.image_size, cfg.image_size))
    assert out.shape == (1, 10) and flops.get_total_flops() <= 2e6
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
