"""Text sweeps: fine-tune one Hugging Face text folder into N sequence classifiers, one executor task per run.

LP-FT as for images (ladle.training.sweep): the encoder's head (every module outside its pretrained body) is
initialised once from the sweep seed and briefly linear-probed with the body frozen: that is the stock, an HF
folder of its own. Each run then fine-tunes every weight with its drawn hyper-parameters (ladle.training.config:
lr, weight decay, warm-up, epochs, max length, label smoothing; its seed from the run number):

- AdamW, no decay on biases and LayerNorm weights (1-d tensors), gradients clipped to norm 1;
- the learning rate rises linearly from 0 over the warm-up, then falls linearly to 0 (`linear_warmup_decay`);
- cross-entropy with label smoothing; batches drawn in a seeded order, each padded to its longest text.

A run is a task of plain data (`TextRunTask`) run by `train_text_run` wherever the executor puts it; the task fixes
torch's thread count and seeds, so its bytes do not depend on the executor. An ingredient is an HF folder
(config.json, tokenizer files, model.safetensors, all by `save_pretrained`) plus `ladle.json`, the record, which
lists every file's sha256: a finished, undamaged folder whose record matches the run it would be is kept.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ladle.errors import LadleError
from ladle.progress import progress_bar
from ladle.training.config import TextSweepConfig, load_text_config, sample_text_run, text_sweep_id
from ladle.training.loop import accuracy, torch_threads
from ladle.training.runs import default_executor, put_ingredient, read_record

PARTS = {"objective": "cross_entropy", "optimiser": "adamw", "schedule": "linear_warmup_decay"}  # in every record
MAX_GRAD_NORM = 1.0
WEIGHTS = "model.safetensors"
_NO_NORMALISATION = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # accuracy()'s image mean and std: unused by text batches
_DATA: dict[tuple, tuple] = {}  # (folder, data, seed, caps) -> (train, heldout): a worker reads a sweep's data once


@dataclass(frozen=True)
class TextRunTask:
    """One run of a text sweep, as plain data that can cross a process or a machine."""

    run: int
    model: str  # the source folder: its tokenizer reads the data
    num_classes: int
    data: str  # SOURCE; its train and heldout splits
    data_seed: int
    train_examples: int | None
    heldout_examples: int | None
    fingerprints: tuple[str, str]  # of train and heldout at this run's max_length, as the parent read them
    hyperparameters: dict
    stock: str  # folder
    stock_sha256: str  # of its model.safetensors
    out: str  # the ingredient's folder
    device: str = "cpu"
    threads: int = 1
    progress: bool = False


# ---- the loop -------------------------------------------------------------------------------------------------------


def linear_warmup_decay(optimizer, total_steps: int, warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Step s runs at lr · s / w while s < w (warm-up), then at lr · (T - s) / (T - w): 0 at the first step of a
    warm-up, the peak at step w, 1/(T - w) of it at the last step T - 1."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def adamw(params, *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW decaying matrices only: biases and LayerNorm weights (1-d) keep their values' scale."""
    params = list(params)
    decay, keep = [p for p in params if p.ndim >= 2], [p for p in params if p.ndim < 2]
    groups = [{"params": ps, "weight_decay": wd} for ps, wd in ((decay, weight_decay), (keep, 0.0)) if ps]
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


def train_text(model: nn.Module, data, *, lr: float, weight_decay: float = 0.0, warmup: float = 0.0,
               label_smoothing: float = 0.0, epochs: int = 1, batch_size: int = 16, seed: int = 0,
               max_steps: int | None = None, params: list | None = None, frozen: list[nn.Module] = (),
               device="cpu", progress: bool = False, desc: str = "fine-tune") -> list[float]:
    """Train a sequence classifier in place on a TextSet; return the loss of every step.

    The data order comes from a generator seeded with `seed`, dropout from the global RNG seeded with it (the
    caller's RNG state is restored afterwards). `params` defaults to every parameter that requires grad; `frozen`
    modules stay in eval mode (no dropout) while the rest trains."""
    from ladle.data.text import model_inputs
    from ladle.evaluation.evaluator import call_model

    total_steps = min(epochs * math.ceil(len(data) / batch_size), max_steps or 1 << 62)
    with torch.random.fork_rng(devices=[] if str(device) == "cpu" else None):
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        model.to(device)
        params = [p for p in model.parameters() if p.requires_grad] if params is None else list(params)
        opt = adamw(params, lr=lr, weight_decay=weight_decay)
        sched = linear_warmup_decay(opt, total_steps, round(warmup * total_steps))
        model.train()
        for module in frozen:
            module.eval()
        losses, step = [], 0
        with progress_bar(total=total_steps, desc=desc, unit="step", enabled=progress) as bar:
            while step < total_steps:
                order = torch.randperm(len(data), generator=generator)
                for start in range(0, len(data), batch_size):
                    if step >= total_steps:
                        break
                    idx = order[start : start + batch_size]
                    batch = {k: v.to(device) for k, v in model_inputs(data.take(idx)).items()}
                    logits = call_model(model, batch)
                    loss = F.cross_entropy(logits, data.y[idx].to(device), label_smoothing=label_smoothing)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
                    opt.step()
                    sched.step()
                    losses.append(loss.item())
                    step += 1
                    bar.update()
    model.eval()
    return losses


def head_modules(model: nn.Module) -> list[nn.Module]:
    """A sequence classifier's head: its children outside the pretrained body (`base_model_prefix`), e.g. BERT's
    dropout and classifier, RoBERTa's classification head."""
    prefix = getattr(model, "base_model_prefix", None)
    head = [m for name, m in model.named_children() if name != prefix]
    if prefix is None or not any(True for m in head for _ in m.parameters()):
        raise LadleError(f"model: no classification head outside the body of a {type(model).__name__}")
    return head


def reset_head(model: nn.Module, seed: int) -> None:
    """The head initialised afresh from `seed` (each layer's own reset), the same for every run of a sweep."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in head_modules(model):
            for m in module.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()


def linear_probe(model: nn.Module, data, *, steps: int, lr: float, batch_size: int = 16, seed: int = 0, device="cpu",
                 progress: bool = False) -> list[float]:
    """A short probe of the head alone (the LP of LP-FT): the body frozen (no grad, no dropout), no warm-up."""
    head = head_modules(model)
    params = [p for m in head for p in m.parameters()]
    body = [m for m in model.children() if not any(m is h for h in head)]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    try:
        return train_text(model, data, lr=lr, epochs=1 << 20, max_steps=steps, batch_size=batch_size, seed=seed,
                          params=params, frozen=body, device=device, progress=progress, desc="linear probe")
    finally:
        for p in model.parameters():
            p.requires_grad_(True)


# ---- data -----------------------------------------------------------------------------------------------------------


def load_splits(folder: str, data: str, seed: int, train_examples: int | None, heldout_examples: int | None,
                max_length: int) -> tuple:
    """The sweep's train and held-out TextSets read through the folder's tokenizer at `max_length`, each cut to its
    seeded subset; read once per process (other lengths reuse the examples)."""
    from ladle.data import open_data
    from ladle.models.text import tokenization

    key = (folder, data, seed, train_examples, heldout_examples)
    if key not in _DATA:
        tok = tokenization(folder, max_length)
        splits = (open_data(f"{data}:{split}", preprocess=tok, seed=seed, workers=0) for split in ("train", "heldout"))
        _DATA.clear()
        _DATA[key] = tuple(_cap(d, n, seed, salt) for salt, (d, n) in enumerate(zip(splits, (train_examples,
                                                                                             heldout_examples))))
    return tuple(at_length(d, max_length) for d in _DATA[key])


def _cap(data, n: int | None, seed: int, salt: int):
    if n is None or n >= len(data):
        return data
    idx = np.sort(np.random.default_rng([seed, salt]).permutation(len(data))[:n])
    return data.subset(idx, f"{data.source['split']}: {n} of {len(data)} (seed {seed})")


def at_length(data, max_length: int):
    """The same examples tokenised to another length (its fingerprint says which)."""
    from ladle.data.text import TextSet

    if data.tokenization.max_length == max_length:
        return data
    return TextSet(data.examples, data.tokenization.at_length(max_length), data.source, data.workers)


# ---- folders --------------------------------------------------------------------------------------------------------


def save_folder(folder: Path, model: nn.Module, tokenizer, record: dict) -> dict:
    """The model and tokenizer by `save_pretrained` and the record as ladle.json (with every file's sha256), written
    into a temporary folder beside `folder` and renamed into place; returns the record written."""
    from ladle.io.atomic import TMP_MARK
    from ladle.io.hashing import sha256_content
    from ladle.io.writer import DIR_MANIFEST

    import transformers

    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}{TMP_MARK}{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    bars = transformers.logging.is_progress_bar_enabled()
    transformers.logging.disable_progress_bar()  # "Writing model shards": one small file
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        files = {p.name: sha256_content(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        record = dict(record, files=files)
        with open(tmp / DIR_MANIFEST, "w") as f:
            f.write(json.dumps(record, indent=2) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        for p in tmp.iterdir():
            os.chmod(p, 0o666 & ~umask)  # (save_pretrained writes some files private)
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        if folder.exists():  # damaged, or another run's: replaced whole
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if bars:
            transformers.logging.enable_progress_bar()
    return record


def _set_label_names(model: nn.Module, classes: list[str]) -> None:
    """The data's class names in the config (id2label / label2id), so the folder tastes with its own labels."""
    if len(classes) == model.config.num_labels:
        model.config.id2label = dict(enumerate(classes))
        model.config.label2id = {name: i for i, name in enumerate(classes)}


def _fingerprints(record: dict) -> tuple:
    data = record.get("data") or {}
    return tuple((data.get(split) or {}).get("fingerprint") for split in ("train", "heldout"))


def identity(record: dict) -> dict:
    """What makes a finished run the run a sweep wants (not its results, not the threads it ran with)."""
    return {"kind": record.get("kind"), "model": record.get("model"), "hyperparameters": record.get("hyperparameters"),
            "stock_sha256": record.get("stock_sha256"), "data": _fingerprints(record)}


# ---- the sweep ------------------------------------------------------------------------------------------------------


def run_text_sweep(config: TextSweepConfig | dict | str | Path | None, out: Path, *, overrides: dict | None = None,
                   executor=None, store=None, device: str | None = None, progress: bool = False) -> list[dict]:
    """A text sweep from a config (text-sweep.yaml underneath) plus overrides, into `out/`: `stock/` and
    `ingredient-NN/` folders. Returns the records, in run order, each with its `path` and `sha256` (of its
    model.safetensors); a store gets one ingredient row per run."""
    from ladle.evaluation.tasting import default_device
    from ladle.io.hashing import sha256_file

    cfg = config if isinstance(config, TextSweepConfig) else load_text_config(config, overrides)
    device = str(device or default_device())
    out = Path(out)
    try:
        train, heldout = load_splits(cfg.model, cfg.data, cfg.data_seed, cfg.train_examples, cfg.heldout_examples,
                                     cfg.longest)
        num_classes = cfg.num_classes or train.num_classes
        stock = make_text_stock(cfg, train, heldout, out, device=device, progress=progress)
        stock_sha = sha256_file(stock / WEIGHTS)
        name = text_sweep_id(cfg, stock_sha)
        records: dict[int, dict] = {}
        tasks = []
        for run in range(cfg.runs):
            hp = sample_text_run(cfg, run)
            fingerprints = tuple(at_length(d, hp["max_length"]).source["fingerprint"] for d in (train, heldout))
            path = out / f"ingredient-{run:02d}"
            planned = {"kind": "text", "model": cfg.model, "hyperparameters": hp, "stock_sha256": stock_sha,
                       "data": fingerprints}
            record = read_record(path)
            if record is not None and identity(record) == planned:
                records[run] = dict(record, path=str(path), sha256=record["files"][WEIGHTS])
                put_ingredient(store, records[run], name, PARTS)
                continue
            tasks.append(TextRunTask(run, cfg.model, num_classes, cfg.data, cfg.data_seed, cfg.train_examples,
                                     cfg.heldout_examples, fingerprints, hp, str(stock), stock_sha, str(path), device,
                                     cfg.threads, progress))
        own = executor is None
        if own:
            executor = default_executor(len(tasks), cfg.threads, device)
        try:
            for result in executor.map(train_text_run, tasks, desc="sweep" if progress else "",
                                       tag=lambda t: f"run {t.run}"):
                records[result["run"]] = result
                put_ingredient(store, result, name, PARTS)
        finally:
            if own:
                executor.close()
    finally:
        _DATA.clear()
    return [records[run] for run in range(cfg.runs)]


def make_text_stock(cfg: TextSweepConfig, train, heldout, out: Path, *, device="cpu", progress=False) -> Path:
    """The shared start of every run, `out/stock/`: the folder's body with a seeded fresh head, linear-probed at
    the longest max length a run can draw; kept if one with this record exists."""
    from ladle.evaluation.evaluator import check_num_classes
    from ladle.models.text import build_text_model

    path = Path(out) / "stock"
    num_classes = cfg.num_classes or train.num_classes
    wanted = {"steps": cfg.lp_steps, "lr": cfg.lp_lr, "seed": cfg.seed, "batch_size": cfg.batch_size,
              "max_length": train.tokenization.max_length}
    fingerprints = (train.source["fingerprint"], heldout.source["fingerprint"])
    stock = read_record(path)
    if stock is not None and (stock.get("role"), stock.get("kind"), stock.get("model"), stock.get("num_classes"),
                              stock.get("linear_probe"), _fingerprints(stock)) == (
            "stock", "text", cfg.model, num_classes, wanted, fingerprints):
        return path
    with torch_threads(cfg.threads), torch.random.fork_rng(devices=[] if str(device) == "cpu" else None):
        model = build_text_model(cfg.model, num_classes).to(device)
        check_num_classes(model, train)  # one line now, not an IndexError mid-training (and no folder made)
        reset_head(model, cfg.seed)  # one shared head, initialised once
        _set_label_names(model, train.classes)
        if cfg.lp_steps > 0:  # LP-FT; 0: fine-tune straight from the fresh head
            linear_probe(model, train, steps=cfg.lp_steps, lr=cfg.lp_lr, batch_size=cfg.batch_size, seed=cfg.seed,
                         device=device, progress=progress)
        record = {"role": "stock", "kind": "text", "model": cfg.model, "num_classes": num_classes,
                  "linear_probe": wanted, "heldout_accuracy": accuracy(model, heldout, *_NO_NORMALISATION, device),
                  "data": {"train": train.source, "heldout": heldout.source}}
        Path(out).mkdir(parents=True, exist_ok=True)
        save_folder(path, model.cpu(), train.tokenization.load(), record)
    return path


def train_text_run(task: TextRunTask) -> dict:
    """Fine-tune one run from the stock and write its folder atomically; the executor's task function."""
    from ladle.data.text import load_tokenizer
    from ladle.io.hashing import sha256_file
    from ladle.models.text import build_text_model

    hp = task.hyperparameters
    with torch_threads(task.threads):
        train, heldout = load_splits(task.model, task.data, task.data_seed, task.train_examples, task.heldout_examples,
                                     hp["max_length"])
        got = (train.source["fingerprint"], heldout.source["fingerprint"])
        if got != tuple(task.fingerprints):
            raise LadleError(f"run {task.run}: the data read here ({got[0]}, {got[1]}) differ from the sweep's "
                             f"({task.fingerprints[0]}, {task.fingerprints[1]})", file=task.data)
        stock = Path(task.stock)
        if sha256_file(stock / WEIGHTS) != task.stock_sha256:
            raise LadleError("the stock changed after the sweep started; run the sweep again", file=stock)
        model = build_text_model(str(stock), task.num_classes)
        losses = train_text(model, train, lr=hp["lr"], weight_decay=hp["weight_decay"], warmup=hp["warmup"],
                            label_smoothing=hp["label_smoothing"], epochs=hp["epochs"], batch_size=hp["batch_size"],
                            seed=hp["seed"], device=task.device, progress=task.progress,
                            desc=f"fine-tune seed {hp['seed']}")
        record = {"role": "ingredient", "kind": "text", "model": task.model, "num_classes": task.num_classes,
                  "run": task.run, **PARTS,
                  "hyperparameters": hp, "stock_sha256": task.stock_sha256, "threads": task.threads,
                  "final_train_loss": losses[-1] if losses else None,
                  "heldout_accuracy": accuracy(model, heldout, *_NO_NORMALISATION, task.device),
                  "data": {"train": train.source, "heldout": heldout.source}}
        record = save_folder(Path(task.out), model.cpu(), load_tokenizer(stock), record)
    return dict(record, path=task.out, sha256=record["files"][WEIGHTS])


__all__ = ["TextRunTask", "adamw", "at_length", "head_modules", "identity", "linear_probe", "linear_warmup_decay",
           "load_splits", "make_text_stock", "read_record", "reset_head", "run_text_sweep", "save_folder", "train_text",
           "train_text_run"]
