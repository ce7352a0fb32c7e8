"""Cook ingredients: fine-tune one stock model several times with random hyper-parameters.

The recipe follows the model-soups setup at small scale: a shared head initialised once (seeded) and
briefly linear-probed (LP-FT), then each run fine-tunes every weight with its own learning rate, weight
decay, label smoothing, augmentation and data order. BatchNorm running statistics stay frozen (eval
mode) during fine-tuning: measured here, that is what keeps ingredients in one basin (DESIGN.md).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ladle.io.checkpoints import TensorInfo, open_ingredient
from ladle.data.load import ImageSet
from ladle.errors import LadleError
from ladle.evaluation.evaluator import channels_last, check_num_classes, metrics_from_logits
from ladle.io.hashing import sha256_file
from ladle.io.writer import SoupWriter

LEARNING_RATES = (1e-4, 2e-4, 3e-4)
WEIGHT_DECAYS = (0.0, 0.05, 0.1)
LABEL_SMOOTHINGS = (0.0, 0.1)
SHIFTS = (0, 4)  # pixels of random translation


@dataclass(frozen=True)
class HyperParams:
    lr: float
    weight_decay: float
    label_smoothing: float
    shift: int
    epochs: int
    batch_size: int
    seed: int


def sample_hyperparams(sweep_seed: int, run: int, epochs: int = 6, batch_size: int = 32) -> HyperParams:
    """Run `run` of a sweep: a fixed function of (sweep seed, run), so a resumed sweep draws the same."""
    rng = random.Random(sweep_seed * 100_003 + run)
    return HyperParams(rng.choice(LEARNING_RATES), rng.choice(WEIGHT_DECAYS), rng.choice(LABEL_SMOOTHINGS),
                       rng.choice(SHIFTS), epochs, batch_size, sweep_seed * 1000 + run)


def random_shift(x: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ±pixels (edge-replicated padding, then a random crop)."""
    if pixels == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pixels,) * 4, mode="replicate")
    dx = torch.randint(0, 2 * pixels + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * pixels + 1, (n,), generator=generator)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def freeze_batchnorm_statistics(model: nn.Module) -> None:
    """BatchNorm layers in eval mode: running statistics stay, affine parameters still train."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def classifier_of(model: nn.Module) -> nn.Module:
    if hasattr(model, "get_classifier"):
        return model.get_classifier()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise LadleError("model: no classifier layer found for the linear probe")
    return linears[-1]


def _train(model, params, data: ImageSet, mean, std, *, epochs, batch_size, lr, weight_decay, label_smoothing,
           shift, seed, device, desc, progress, max_steps=None) -> list[float]:
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = -(-len(data) // batch_size)
    total_steps = min(epochs * steps_per_epoch, max_steps or 1 << 62)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps)
    mean, std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    channels_last(model.to(device)).train()
    freeze_batchnorm_statistics(model)
    losses, step = [], 0
    with tqdm(total=total_steps, desc=desc, leave=False, disable=not progress) as bar:
        while step < total_steps:
            order = torch.randperm(len(data), generator=generator)
            for start in range(0, len(data), batch_size):
                if step >= total_steps:
                    break
                idx = order[start : start + batch_size]
                x = (random_shift(data.x[idx], shift, generator) - mean) / std
                loss = F.cross_entropy(model(channels_last(x.to(device))), data.y[idx].to(device),
                                       label_smoothing=label_smoothing)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
                step += 1
                bar.update()
    model.eval()
    return losses


def linear_probe(model: nn.Module, data: ImageSet, mean, std, *, steps: int = 10, lr: float = 1e-2, batch_size: int = 32,
                 seed: int = 0, device="cpu", progress=False) -> list[float]:
    """A short linear probe of the head only (not to zero loss): the LP of LP-FT."""
    head = classifier_of(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in head.parameters():
        p.requires_grad_(True)
    try:
        return _train(model, list(head.parameters()), data, mean, std, epochs=1 << 20, batch_size=batch_size, lr=lr,
                      weight_decay=0.0, label_smoothing=0.0, shift=0, seed=seed, device=device, desc="linear probe",
                      progress=progress, max_steps=steps)
    finally:
        for p in model.parameters():
            p.requires_grad_(True)


def finetune(model: nn.Module, data: ImageSet, hp: HyperParams, mean, std, device="cpu", progress=False) -> list[float]:
    """Fine-tune every weight (AdamW, one-cycle schedule), BatchNorm statistics frozen."""
    return _train(model, [p for p in model.parameters() if p.requires_grad], data, mean, std, epochs=hp.epochs,
                  batch_size=hp.batch_size, lr=hp.lr, weight_decay=hp.weight_decay, label_smoothing=hp.label_smoothing,
                  shift=hp.shift, seed=hp.seed, device=device, desc=f"fine-tune seed {hp.seed}", progress=progress)


def accuracy(model: nn.Module, data: ImageSet, mean, std, device="cpu") -> float:
    """Accuracy of the model as it stands (no state loaded, no caching)."""
    from ladle.evaluation.evaluator import Evaluator

    evaluator = Evaluator(model, {"data": data}, mean=mean, std=std, device=device)
    return metrics_from_logits(evaluator.run("data"), data.y).accuracy


def save_checkpoint(path: Path, model: nn.Module, manifest: dict) -> None:
    """Atomically, with the run's record in the metadata."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with SoupWriter(path, {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in state.items()}, force=True) as w:
        for k, v in state.items():
            w.add(k, v)
        w.finish(manifest)


def read_record(path: Path) -> dict | None:
    """The record of a finished run, or None if the file is missing or damaged (then it is retrained)."""
    if not path.is_file():
        return None
    from ladle.io.manifest import read_manifest

    try:
        return read_manifest(path)
    except (LadleError, json.JSONDecodeError):
        return None


def sweep(model_spec, train: ImageSet, heldout: ImageSet, out: Path, *, runs: int = 8, epochs: int = 6, seed: int = 0,
          lp_steps: int = 10, lp_lr: float = 1e-2, batch_size: int = 32, device="cpu", progress=True) -> list[dict]:
    """Fine-tune `runs` ingredients from one stock into `out/`; finished runs are kept, not retrained."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # a stock without pretrained weights is initialised from the seed: reproducible sweeps
        model = model_spec.build().to(device)
    check_num_classes(model, train)  # one line now, not an IndexError mid-training
    out.mkdir(parents=True, exist_ok=True)
    stock_path = out / "stock.safetensors"
    stock = read_record(stock_path)
    wanted_lp = {"steps": lp_steps, "lr": lp_lr, "seed": seed}
    if stock is not None and (stock.get("model") != model_spec.spec or stock.get("linear_probe") != wanted_lp):
        stock = None  # made by another sweep (seed, model or probe differ): start again
    if stock is None:
        with torch.random.fork_rng():
            torch.manual_seed(seed)  # one shared head, initialised once
            classifier = classifier_of(model)
            for m in classifier.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
        if lp_steps > 0:  # LP-FT; 0: fine-tune straight from the fresh head
            linear_probe(model, train, model_spec.mean, model_spec.std, steps=lp_steps, lr=lp_lr, seed=seed,
                         device=device, progress=progress)
        stock = {"role": "stock", "model": model_spec.spec, "linear_probe": wanted_lp,
                 "heldout_accuracy": accuracy(model, heldout, model_spec.mean, model_spec.std, device),
                 "data": {"train": train.source, "heldout": heldout.source}}
        save_checkpoint(stock_path, model, stock)
    stock_state = open_ingredient(stock_path).state_dict()
    stock_sha = sha256_file(stock_path)
    records = []
    for run in tqdm(range(runs), desc="sweep", disable=not progress):
        path = out / f"ingredient-{run:02d}.safetensors"
        record = read_record(path)
        hp = sample_hyperparams(seed, run, epochs, batch_size)
        if record is not None and (record.get("hyperparameters") != asdict(hp) or record.get("stock_sha256") != stock_sha):
            record = None  # another sweep's run, or trained from another stock: retrain
        if record is None:
            model.load_state_dict(stock_state)
            losses = finetune(model, train, hp, model_spec.mean, model_spec.std, device, progress)
            record = {"role": "ingredient", "model": model_spec.spec, "run": run, "hyperparameters": asdict(hp),
                      "stock_sha256": stock_sha,
                      "final_train_loss": losses[-1],
                      "heldout_accuracy": accuracy(model, heldout, model_spec.mean, model_spec.std, device),
                      "data": {"train": train.source, "heldout": heldout.source}}
            save_checkpoint(path, model, record)
        records.append(dict(record, path=str(path)))
    return records
