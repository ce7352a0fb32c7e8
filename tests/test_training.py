"""The training package: one loop with pluggable objectives, optimisers, schedules and BatchNorm policies; sweeps
from YAML configs, one executor task per run, resumable, byte-identical whatever runs them.

A 3-layer CNN on 16×16 digits keeps every training here to a fraction of a second.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import ladle
from ladle.data import load_data
from ladle.errors import LadleError
from ladle.evaluation.evaluator import batchnorm_keys
from ladle.execution import make_executor
from ladle.models import tiny_cnn
from ladle.training import (OPTIMISERS, SCHEDULES, CrossEntropy, Objective, load_config, run_sweep, sample_hyperparams,
                            sample_run, train)
from ladle.training.loop import optimiser, schedule

from conftest import sha256_of, snapshot

MODEL = "ladle.models:tiny_cnn"
TINY = {"model": MODEL, "data": "digits", "image_size": 16, "runs": 2, "epochs": 1, "lp_steps": 2}
MEAN = STD = (0.5, 0.5, 0.5)


@pytest.fixture(scope="module")
def digits():
    return load_data("digits:train", image_size=16)


def run_loop(model, objective, data, *, opt="adamw", sched="one_cycle", bn="frozen", lr=1e-2, steps=10, **knobs):
    return train(model, objective, data, optimiser=optimiser(opt, lr=lr, weight_decay=0.0, **knobs),
                 schedule=schedule(sched, lr=lr), bn=bn, epochs=1, batch_size=32, seed=0, mean=MEAN, std=STD,
                 max_steps=steps)


def clone(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class MseToZero(Objective):
    """Not classification: pull a head of its own, on top of the model's outputs, towards zero."""

    def __init__(self, *, scale: float = 1.0):
        super().__init__()
        self.scale, self.steps, self.initial = scale, 0, None

    def setup(self, model, data):
        self.head = nn.Linear(10, 4)
        self.initial = clone(self.head)

    def loss(self, model, batch):
        return self.scale * self.head(model(batch.input(batch.x))).pow(2).mean()

    def after_step(self, model, step, total_steps):
        self.steps += 1


def test_a_custom_objective_trains_through_the_loop_with_its_own_head(digits):
    torch.manual_seed(0)
    model, objective = tiny_cnn(), MseToZero(scale=2.0)
    before = clone(model)
    losses = run_loop(model, objective, digits, steps=8)
    assert len(losses) == 8 and objective.steps == 8  # the per-step hook ran after every step
    assert losses[-1] < losses[0]
    head = clone(objective.head)
    assert all(not torch.equal(head[k], objective.initial[k]) for k in head)  # its own head was optimised
    assert not torch.equal(model.state_dict()["0.weight"], before["0.weight"])  # and the model with it
    assert set(objective.extra_state()) == {"head.weight", "head.bias"}
    assert CrossEntropy().extra_state() == {}


@pytest.mark.parametrize("name", list(OPTIMISERS))
def test_each_optimiser_trains(digits, name):
    for knobs in ([{}] if name == "adamw" else [{"momentum": 0.9, "nesterov": False}, {"momentum": 0.9, "nesterov": True}]):
        torch.manual_seed(0)
        model = tiny_cnn()
        before = clone(model)
        losses = run_loop(model, CrossEntropy(), digits, opt=name, lr=0.05, steps=6, **knobs)
        assert all(map(torch.isfinite, map(torch.tensor, losses)))
        assert not torch.equal(model.state_dict()["8.weight"], before["8.weight"])


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_each_schedule_shapes_the_learning_rate(digits, name):
    lr, lrs = 1e-2, []

    def recording(opt, total_steps):
        sched = SCHEDULES[name](opt, total_steps, lr=lr)
        step = sched.step
        sched.step = lambda: (lrs.append(opt.param_groups[0]["lr"]), step())[1]
        return sched

    train(tiny_cnn(), CrossEntropy(), digits, optimiser=optimiser("sgd", lr=lr, weight_decay=0.0), schedule=recording,
          epochs=1, batch_size=32, seed=0, mean=MEAN, std=STD, max_steps=10)
    assert len(lrs) == 10
    if name == "constant":
        assert lrs == [lr] * 10
    elif name == "cosine":
        assert lrs[0] == lr and all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] < 0.03 * lr
    else:  # one-cycle: warm up from lr/25 to lr, then anneal
        assert lrs[0] == pytest.approx(lr / 25) and max(lrs) == pytest.approx(lr) and lrs[-1] < lrs[0]


def test_frozen_batchnorm_keeps_running_statistics_bit_for_bit(digits):
    torch.manual_seed(0)
    model = tiny_cnn()
    model(torch.rand(8, 3, 16, 16))  # running statistics that are not the initial ones
    before = clone(model)
    run_loop(model, CrossEntropy(), digits, bn="frozen", steps=5)
    after = clone(model)
    stats = batchnorm_keys(model) | {k for k in after if k.endswith("num_batches_tracked")}
    assert stats and all(torch.equal(after[k], before[k]) for k in stats)
    for affine in ("1.weight", "1.bias", "4.weight", "4.bias"):
        assert not torch.equal(after[affine], before[affine]), affine

    run_loop(model, CrossEntropy(), digits, bn="train", steps=5)
    assert not torch.equal(model.state_dict()["1.running_mean"], after["1.running_mean"])
    assert model.state_dict()["1.num_batches_tracked"].item() == before["1.num_batches_tracked"].item() + 5


# The draws of the hard-coded sweep these configs replaced: (lr, weight_decay, label_smoothing, shift) per run.
OLD_DRAWS = {
    0: [(2e-4, 0.05, 0.0, 4), (1e-4, 0.1, 0.0, 4), (1e-4, 0.0, 0.0, 4), (1e-4, 0.1, 0.0, 4), (1e-4, 0.05, 0.0, 4),
        (3e-4, 0.05, 0.1, 0), (3e-4, 0.0, 0.1, 4), (2e-4, 0.0, 0.1, 0)],
    1: [(2e-4, 0.1, 0.0, 0), (1e-4, 0.05, 0.0, 4), (3e-4, 0.05, 0.1, 0), (3e-4, 0.0, 0.1, 0), (1e-4, 0.1, 0.1, 0),
        (3e-4, 0.1, 0.0, 0), (3e-4, 0.0, 0.0, 4), (3e-4, 0.1, 0.1, 0)],
    2: [(3e-4, 0.05, 0.0, 4), (3e-4, 0.1, 0.1, 4), (1e-4, 0.0, 0.0, 0), (2e-4, 0.1, 0.0, 4), (3e-4, 0.0, 0.1, 4),
        (2e-4, 0.1, 0.0, 4), (1e-4, 0.05, 0.1, 0), (3e-4, 0.0, 0.1, 4)],
}


@pytest.mark.parametrize("seed", sorted(OLD_DRAWS))
def test_the_default_config_draws_what_the_old_sweep_drew(seed):
    config = load_config(None, {"seed": seed})
    assert (config.runs, config.lp_steps, config.lp_lr) == (8, 10, 0.01)
    for run, (lr, wd, ls, shift) in enumerate(OLD_DRAWS[seed]):
        drawn = sample_run(config, run)
        assert drawn.parts() == {"objective": "cross_entropy", "optimiser": "adamw", "schedule": "one_cycle", "bn": "frozen"}
        assert drawn.hyperparameters == {"lr": lr, "weight_decay": wd, "label_smoothing": ls, "shift": shift, "epochs": 6,
                                         "batch_size": 32, "seed": seed * 1000 + run}
        assert vars(sample_hyperparams(seed, run)) == drawn.hyperparameters
    # a fixed field consumes no draw: SGD with one momentum draws the same lr, wd, ls and shift
    sgd = load_config({"optimiser": "sgd", "momentum": 0.8, "seed": seed})
    for run, (lr, wd, ls, shift) in enumerate(OLD_DRAWS[seed]):
        hp = sample_run(sgd, run).hyperparameters
        assert (hp["lr"], hp["weight_decay"], hp["label_smoothing"], hp["shift"], hp["momentum"]) == (lr, wd, ls, shift, 0.8)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, line, message", [
    ("model: ladle.models:tiny_cnn\nruns: 2\nlrr: [1.0e-4]\n", 3, "field 'lrr': unknown field (known fields: model, "),
    ("runs: 2\nlr: [1.0e-4, fast]\n", 2, "field 'lr': must be a number, got 'fast'"),
    ("epochs: 1.5\n", 1, "field 'epochs': must be an integer, got 1.5"),
    ("runs: 2\n\noptimiser: [adamw, adam]\n", 3, "field 'optimiser': unknown optimiser 'adam' (known: adamw, sgd)"),
    ("seed: 1\nmomentum: 0.9\n", 2, "field 'momentum': not used by this sweep (objective: cross_entropy; optimiser: adamw; "
                                    "schedule: one_cycle); it belongs to optimiser 'sgd'"),
    ("weight_decay: []\n", 1, "field 'weight_decay': must list at least one value"),
    ("lr: 0\n", 1, "field 'lr': must be > 0, got 0.0"),
    ("label_smoothing: [0.0, 1.5]\n", 1, "field 'label_smoothing': objective 'cross_entropy' rejects label_smoothing=1.5, "
                                         "shift=0: must be in [0, 1], got 1.5"),
    ("optimiser: sgd\nmomentum: 0.0\nnesterov: true\n", 2, "field 'momentum': optimiser 'sgd' rejects momentum=0.0, "
                                                           "nesterov=True: Nesterov momentum requires a momentum"),
    ("objective: no_such_module:Thing\n", 1, "field 'objective': cannot import 'no_such_module:Thing'"),
    ("runs: [1, 2]\n", 1, "field 'runs': must be an integer, got [1, 2]"),
])
def test_config_errors_name_the_file_line_and_field(tmp_path, text, line, message):
    path = write(tmp_path, text)
    with pytest.raises(LadleError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}:{line}: {message}")
    assert "\n" not in str(e.value)


def test_config_values_and_overrides(tmp_path):
    path = write(tmp_path, "data: digits:test\nlr: [1e-4, 2.5e-4]\nnesterov: [true, false]\noptimiser: [adamw, sgd]\n")
    config = load_config(path, {"epochs": 2, "runs": None})
    assert config.data == "digits" and config.runs == 8  # a split is dropped; None overrides nothing
    assert config.space["lr"] == (1e-4, 2.5e-4)  # PyYAML reads 1e-4 as a string: taken as the number it is
    assert config.space["nesterov"] == (True, False) and config.space["momentum"] == (0.9,)
    assert config.space["epochs"] == (2,)
    assert list(config.space)[:6] == ["objective", "optimiser", "schedule", "bn", "lr", "weight_decay"]
    drawn = [sample_run(config, run) for run in range(8)]
    assert {d.optimiser for d in drawn} == {"adamw", "sgd"}
    for d in drawn:  # each run records the knobs of the parts it drew, and only those
        assert ("momentum" in d.hyperparameters) == (d.optimiser == "sgd")
    with pytest.raises(LadleError, match=r"^overrides: field 'epochs': must be an integer, got 'x'$"):
        load_config(path, {"epochs": "x"})


def test_a_custom_objective_in_a_sweep_records_its_knobs_and_head(tmp_path):
    out = tmp_path / "sweep"
    records = run_sweep({**TINY, "runs": 1, "objective": "test_training:MseToZero", "scale": [0.5, 2.0],
                         "optimiser": "sgd", "schedule": "cosine", "bn": "train"}, out,
                        executor=make_executor("local:1"))
    record = ladle.read_manifest(out / "ingredient-00.safetensors")
    assert record == {k: v for k, v in records[0].items() if k not in ("path", "sha256")}
    assert (record["objective"], record["optimiser"], record["schedule"], record["bn"]) == (
        "test_training:MseToZero", "sgd", "cosine", "train")
    assert record["hyperparameters"]["scale"] in (0.5, 2.0) and record["hyperparameters"]["momentum"] == 0.9
    head = load_file(str(out / record["objective_state"]["path"]))
    assert set(head) == {"head.weight", "head.bias"}
    assert record["objective_state"]["sha256"] == sha256_of(out / "objective-00.safetensors")
    stock, ingredient = load_file(str(out / "stock.safetensors")), load_file(str(out / "ingredient-00.safetensors"))
    assert set(ingredient) == set(stock)  # the model's tensors only: soups need nothing else
    assert not torch.equal(ingredient["1.running_mean"], stock["1.running_mean"])  # bn: train


def mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_a_sweep_resumes_without_retraining_and_extends(tmp_path):
    out = tmp_path / "sweep"
    first = run_sweep(TINY, out, executor=make_executor("local:1"))
    record = ladle.read_manifest(out / "ingredient-01.safetensors")
    assert (record["objective"], record["optimiser"], record["schedule"], record["bn"]) == (
        "cross_entropy", "adamw", "one_cycle", "frozen")
    assert record["hyperparameters"] == vars(sample_hyperparams(0, 1, epochs=1))
    assert record["stock_sha256"] == first[1]["stock_sha256"] == sha256_of(out / "stock.safetensors")
    assert record["data"]["train"]["spec"] == "digits:train" and record["data"]["heldout"]["image_size"] == 16
    before, times = snapshot(out), mtimes(out)
    again = run_sweep(TINY, out, executor=make_executor("local:1"))
    assert again == first
    assert snapshot(out) == before and mtimes(out) == times  # nothing trained, nothing rewritten
    more = run_sweep({**TINY, "runs": 3}, out, executor=make_executor("local:1"))
    assert more[:2] == first and (out / "ingredient-02.safetensors").is_file()
    assert all(mtimes(out)[n] == t for n, t in times.items())


def test_a_sweep_records_every_run_in_the_store(tmp_path):
    store_module = pytest.importorskip("ladle.results.store")
    out = tmp_path / "sweep"
    with store_module.ResultStore(tmp_path / "results.sqlite") as store:
        run_sweep({**TINY, "runs": 1}, out, executor=make_executor("local:1"), store=store)
        records = run_sweep(TINY, out, executor=make_executor("local:1"), store=store)  # extended: the same sweep
        rows = sorted(store.ingredients(), key=lambda r: r["run"])
    assert [r["sha256"] for r in rows] == [r["sha256"] for r in records]
    assert [r["run"] for r in rows] == [0, 1] and len({r["sweep"] for r in rows}) == 1
    for row, record in zip(rows, records):
        assert row["path"] == str(Path(record["path"]).resolve()) and row["objective"] == "cross_entropy"
        assert row["hyperparameters"] == {"optimiser": "adamw", "schedule": "one_cycle", "bn": "frozen",
                                          **record["hyperparameters"]}
        assert row["heldout_accuracy"] == record["heldout_accuracy"] and row["stock_sha256"] == record["stock_sha256"]


def test_the_bytes_do_not_depend_on_the_executor(tmp_path):
    """Two worker processes (each with the task's thread count) write what one in-process worker writes."""
    config = {**TINY, "threads": 1}
    run_sweep(config, tmp_path / "one", executor=make_executor("local:1"))
    two = make_executor("local:2")
    try:
        run_sweep(config, tmp_path / "two", executor=two)
    finally:
        two.close()
    one_files, two_files = snapshot(tmp_path / "one"), snapshot(tmp_path / "two")
    assert len(one_files) == 6 and one_files == two_files


def test_the_bytes_on_ray_are_the_local_ones(tmp_path):
    pytest.importorskip("ray")
    from ladle.execution.ray import RayExecutor

    config = {**TINY, "threads": 1}
    run_sweep(config, tmp_path / "local", executor=make_executor("local:1"))
    with RayExecutor(num_cpus=2) as executor:  # a Ray of its own, on loopback, shut down on leaving
        run_sweep(config, tmp_path / "ray", executor=executor)
    assert snapshot(tmp_path / "local") == snapshot(tmp_path / "ray")
