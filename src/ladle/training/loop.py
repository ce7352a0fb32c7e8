"""One training loop: an objective, a BatchNorm policy, an optimiser and a schedule, all pluggable.

Registries (ladle.registry.Registry) take one decorator per entry. An optimiser or schedule entry is a function
whose keyword-only parameters with defaults are its hyper-parameters (sweep config fields, e.g. SGD's
`momentum`); `lr` and `weight_decay` every run has. BatchNorm "frozen" keeps running statistics in eval mode
while the affine parameters train: measured on the demo, that is what keeps ingredients from one stock in one
basin, so that their soups beat them; "train" lets the statistics follow the batches.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import torch
from torch import nn
from ladle.progress import progress_bar

from ladle.evaluation.evaluator import channels_last
from ladle.models.encoder import classifier_of
from ladle.registry import Registry
from ladle.training.objectives import Batch, CrossEntropy, Objective, knobs_of, make_objective


# New entries go at the end: a sweep draws its listed fields in registry order (ladle.training.config), which
# validates names against these registries, so none imports `package.module:name`.
OPTIMISERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimiser", importable=False)
SCHEDULES: Registry[Callable] = Registry("schedule", importable=False)
BN_POLICIES: Registry[Callable[[nn.Module], None]] = Registry("BatchNorm policy", importable=False)


@OPTIMISERS.register("adamw")
def adamw(params, *, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


@OPTIMISERS.register("sgd")
def sgd(params, *, lr: float, weight_decay: float, momentum: float = 0.9, nesterov: bool = False) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov)


@SCHEDULES.register("one_cycle")
def one_cycle(optimizer, total_steps: int, *, lr: float):
    """Warm up to lr over the first 30% of steps, then anneal (cosine) to ~0."""
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps)


@SCHEDULES.register("cosine")
def cosine(optimizer, total_steps: int, *, lr: float):
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)


@SCHEDULES.register("constant")
def constant(optimizer, total_steps: int, *, lr: float):
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


@BN_POLICIES.register("frozen")
def freeze_batchnorm_statistics(model: nn.Module) -> None:
    """BatchNorm layers in eval mode: running statistics stay, affine parameters still train."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


@BN_POLICIES.register("train")
def train_batchnorm_statistics(model: nn.Module) -> None:
    """BatchNorm as the model's train mode has it: batch statistics, running statistics updated."""


def optimiser(name: str, *, lr: float, weight_decay: float, **knobs) -> Callable[[list], torch.optim.Optimizer]:
    """params -> optimizer, from a registry name and its hyper-parameters."""
    return functools.partial(OPTIMISERS.get(name, where="optimiser"), lr=lr, weight_decay=weight_decay, **knobs)


def schedule(name: str, *, lr: float, **knobs) -> Callable:
    """(optimizer, total_steps) -> LR scheduler, from a registry name and its hyper-parameters."""
    return functools.partial(SCHEDULES.get(name, where="schedule"), lr=lr, **knobs)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run with n torch threads, then restore: the thread count changes the bytes a run writes, so it is part of
    the run, not of the machine or executor that happens to run it."""
    if not n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train(model: nn.Module, objective: Objective, data, *, optimiser: Callable, schedule: Callable,
          bn: str | Callable[[nn.Module], None] = "frozen", epochs: int, batch_size: int, seed: int, mean, std,
          device="cpu", params: list | None = None, max_steps: int | None = None, progress: bool = False,
          desc: str = "train") -> list[float]:
    """Train `model` (and the objective's own modules) in place; return the loss of every step.

    Data order and augmentations come from a generator seeded with `seed`; the global RNG (dropout, the
    objective's heads) is seeded with it too, and the caller's RNG state is restored afterwards. `params`
    defaults to every model parameter that requires grad.
    """
    bn_policy = BN_POLICIES.get(bn, where="bn") if isinstance(bn, str) else bn
    steps_per_epoch = -(-len(data) // batch_size)
    total_steps = min(epochs * steps_per_epoch, max_steps or 1 << 62)
    mean, std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    with torch.random.fork_rng(devices=[] if str(device) == "cpu" else None):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        channels_last(model.to(device))
        objective.setup(model, data)
        objective.to(device)
        params = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
        seen = {id(p) for p in params}
        for module in objective.trainable_modules():  # the objective's heads train with the model
            for p in module.parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        opt = optimiser(params)
        sched = schedule(opt, total_steps)
        model.train()
        bn_policy(model)
        objective.train()
        losses, step = [], 0
        with progress_bar(total=total_steps, desc=desc, unit="step", enabled=progress) as bar:
            while step < total_steps:
                order = torch.randperm(len(data), generator=generator)
                for start in range(0, len(data), batch_size):
                    if step >= total_steps:
                        break
                    idx = order[start : start + batch_size]
                    batch = Batch(data.x[idx], data.y[idx], generator, mean, std, device, step, total_steps)
                    loss = objective.loss(model, batch)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    sched.step()
                    objective.after_step(model, step, total_steps)
                    losses.append(loss.item())
                    step += 1
                    bar.update()
    model.eval()
    objective.eval()
    return losses


def linear_probe(model: nn.Module, data, mean, std, *, steps: int = 10, lr: float = 1e-2, batch_size: int = 32,
                 seed: int = 0, device="cpu", progress=False) -> list[float]:
    """A short linear probe of the head only (not to zero loss): the LP of LP-FT. AdamW, one-cycle, frozen BN."""
    head = classifier_of(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in head.parameters():
        p.requires_grad_(True)
    try:
        return train(model, CrossEntropy(), data, optimiser=functools.partial(adamw, lr=lr, weight_decay=0.0),
                     schedule=functools.partial(one_cycle, lr=lr), bn="frozen", epochs=1 << 20, batch_size=batch_size,
                     seed=seed, mean=mean, std=std, device=device, params=list(head.parameters()), max_steps=steps,
                     progress=progress, desc="linear probe")
    finally:
        for p in model.parameters():
            p.requires_grad_(True)


def finetune(model: nn.Module, data, run, mean, std, device="cpu", progress=False,
             objective: Objective | None = None) -> list[float]:
    """Fine-tune every weight as one drawn run (ladle.training.config.Run) prescribes; return the step losses."""
    from ladle.training.objectives import objective_class

    hp = run.hyperparameters
    objective = objective or make_objective(run.objective, **_pick(hp, knobs_of(objective_class(run.objective))))
    opt = optimiser(run.optimiser, lr=hp["lr"], weight_decay=hp["weight_decay"],
                    **_pick(hp, knobs_of(OPTIMISERS[run.optimiser])))
    sched = schedule(run.schedule, lr=hp["lr"], **_pick(hp, knobs_of(SCHEDULES[run.schedule])))
    steps = hp.get("steps")  # a fixed number of steps, however many epochs that takes
    return train(model, objective, data, optimiser=opt, schedule=sched, bn=run.bn,
                 epochs=1 << 20 if steps else hp["epochs"], max_steps=steps, batch_size=hp["batch_size"],
                 seed=hp["seed"], mean=mean, std=std, device=device, progress=progress,
                 desc=f"{'train' if objective.encoder_only else 'fine-tune'} seed {hp['seed']}")


def _pick(hp: dict, knobs: dict) -> dict:
    return {k: hp[k] for k in knobs if k in hp}


def accuracy(model: nn.Module, data, mean, std, device="cpu") -> float:
    """Accuracy of the model as it stands (no state loaded, no caching)."""
    from ladle.evaluation.evaluator import Evaluator, metrics_from_logits

    evaluator = Evaluator(model, {"data": data}, mean=mean, std=std, device=device)
    return metrics_from_logits(evaluator.run("data"), data.y).accuracy
