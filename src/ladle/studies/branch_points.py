"""The branch-point study's training half: one stock trained from scratch, branched at many epochs.

Ghyselincks, Mackenzie & Shelhamer ("When is model souping tasty?") train one ResNet-50 from scratch (SGD
Nesterov, cosine schedule, label smoothing), keep a checkpoint every 10 epochs, and from each branch point
continue four copies, each with its (lr, momentum, weight decay) scaled by fixed factors and its own seed.
Pairs that share few epochs have drifted into different basins and their soups collapse; pairs that share many
stay in one basin.

How a branch continues (the choices the paper's code makes, kept here):
  * the learning rate follows the stock's global cosine, lr · s_lr · ½(1 + cos(π t / T)), t the global step
    and T = `schedule_epochs` (default `epochs`) epochs of steps: a branch at epoch e starts where the stock
    was at e, only scaled, and anneals with it;
  * every branch trains from its branch epoch to `branch_end` (default `epochs`): early branches train long
    and drift far, late ones train briefly. The paper's scale sets schedule_epochs 280, epochs 300 and
    branch_end 310 (each branch runs 10 epochs past the stock's end, so the branch at 300 trains too);
  * the stock's SGD momentum buffers carry over (each checkpoint keeps them beside it in
    `stock-eNNN.optim.safetensors`), with the momentum coefficient scaled;
  * each branch's data order and augmentations come from its own seed, a fixed function of the study seed,
    the branch epoch and the variant.

The stock trains in segments of `checkpoint_every` epochs, one call of the training loop each (segment seed:
a fixed function of the study seed and the segment's first epoch), and writes a checkpoint with its momentum
buffers after each; a killed run restarts from the last complete checkpoint whose chain back to the start
matches this config and writes the same bytes an uninterrupted run writes (same `threads`). A branch whose
checkpoint exists with a matching manifest is never trained again. Threads and device are recorded, not part of
a checkpoint's identity (as in ladle.training.sweep): another thread count gives other bytes, not a wrong model.

Layout: OUT/stock/stock-eNNN.safetensors (+ .optim.safetensors), OUT/branches/eNNN-vK.safetensors, each with
its record as the manifest. The CPU default (configs/branch-points.yaml) was chosen by a pilot; its comments
say why its weight decay is 10× the paper's.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import sys
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from ladle.config import BRANCH_POINTS_FIELDS, Field, check_fields, check_value, fail, read_layers
from ladle.errors import LadleError

DEFAULT_CONFIG = "branch-points.yaml"
STUDY = "branch-points"
# (lr, momentum, weight decay) scale factors of the paper's four optimiser variants (its Table A1).
PAPER_VARIANTS = ((0.7073, 1.1009, 0.8284), (1.2244, 0.9247, 1.1150), (0.5112, 1.0695, 1.1099),
                  (0.5373, 0.8594, 0.9078))
# the items of the structured fields, checked as any field is
SCALE = Field("variants", float, None, "a scale factor", low=0, above=True)
EPOCH = Field("branch_epochs", int, None, "a checkpoint epoch", low=1)


@dataclass(frozen=True)
class BranchConfig:
    """A validated study config; null fields resolved (data_seed, schedule_epochs, branch_end, num_classes stays)."""

    model: str
    num_classes: int | None
    data: str
    data_seed: int
    image_size: int
    epochs: int
    schedule_epochs: int
    checkpoint_every: int
    branch_epochs: tuple[int, ...]
    branch_end: int
    variants: tuple[tuple[float, float, float], ...]
    lr: float
    momentum: float
    nesterov: bool
    weight_decay: float
    batch_size: int
    label_smoothing: float
    shift: int
    bn: str
    seed: int
    threads: int
    corruptions: tuple[str, ...] = ("imagenet-c",)
    severities: str = "3"
    origin: str = "config"

    def checkpoint_epochs(self) -> list[int]:
        """Every epoch the stock keeps: each `checkpoint_every`, and the last."""
        epochs = list(range(self.checkpoint_every, self.epochs + 1, self.checkpoint_every))
        return epochs if epochs and epochs[-1] == self.epochs else [*epochs, self.epochs]

    def variant_names(self) -> list[str]:
        return [f"v{i + 1}" for i in range(len(self.variants))]

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("origin")
        d["branch_epochs"] = list(self.branch_epochs)
        d["variants"] = [list(v) for v in self.variants]
        d["corruptions"] = list(self.corruptions)
        return d


def default_config_path(name: str = DEFAULT_CONFIG) -> Path:
    """A config shipped with ladle: `branch-points.yaml` (the CPU default) or `paper.yaml`."""
    return Path(str(resources.files("ladle.studies") / "configs" / name))


def load_branch_config(path: str | Path | None = None, overrides: dict | None = None) -> BranchConfig:
    """The default config, then a file on top (fields it leaves out keep the default's), then overrides (None
    values ignored). A bare name that is no file here but one shipped with ladle (`paper.yaml`) is that one.
    Errors name the file, the line and the field in one line."""
    layered = read_layers(BRANCH_POINTS_FIELDS, default_config_path(), path, overrides)
    return _validate(check_fields(BRANCH_POINTS_FIELDS, layered), layered.where, layered.origin)


def _validate(v: dict, where: dict, origin: str) -> BranchConfig:
    """The checked fields, nulls resolved and the structured ones parsed."""
    from ladle.data.load import parse_spec
    from ladle.training.loop import BN_POLICIES

    raw = dict(v)
    v["data"] = parse_spec(v["data"])[0]  # a source; a split given with it is dropped
    if v["data_seed"] is None:
        v["data_seed"] = v["seed"]
    if v["schedule_epochs"] is None:
        v["schedule_epochs"] = v["epochs"]
    if v["branch_end"] is None:
        v["branch_end"] = v["epochs"]
    if v["bn"] not in BN_POLICIES:
        fail(where, "bn", f"unknown BatchNorm policy '{v['bn']}' (known: {', '.join(BN_POLICIES)})")
    if v["checkpoint_every"] > v["epochs"]:
        fail(where, "checkpoint_every", f"must be ≤ epochs ({v['epochs']}), got {v['checkpoint_every']}")
    if v["branch_end"] < v["epochs"]:
        fail(where, "branch_end", f"must be ≥ epochs ({v['epochs']}) or null, got {v['branch_end']}")
    v["variants"] = _variants(raw["variants"], v["momentum"], where)
    v["corruptions"], v["severities"] = _corruptions(raw["corruptions"], raw["severities"], where)
    partial = BranchConfig(**{**v, "branch_epochs": ()}, origin=origin)
    v["branch_epochs"] = _branch_epochs(raw["branch_epochs"], partial, where)
    return BranchConfig(**v, origin=origin)


def _variants(value, momentum: float, where: dict) -> tuple:
    if not isinstance(value, list) or not value:
        fail(where, "variants", f"must be a non-empty list of [lr_scale, momentum_scale, wd_scale], got {value!r}")
    out = []
    for i, item in enumerate(value):
        if not (isinstance(item, list) and len(item) == 3):
            fail(where, "variants", f"item {i + 1} must be [lr_scale, momentum_scale, wd_scale], got {item!r}")
        scales = tuple(check_value(SCALE, x, where) for x in item)
        if momentum * scales[1] >= 1:
            fail(where, "variants", f"item {i + 1}: momentum {momentum:g} × {scales[1]:g} must stay < 1")
        out.append(scales)
    if len(set(out)) != len(out):
        fail(where, "variants", "lists a variant twice")
    return tuple(out)


def _corruptions(suites, severities, where: dict) -> tuple[tuple[str, ...], str]:
    """The grid's corruption suite: a list of specs (`imagenet-c`, `imagenet-c:fog,snow`, `laion-c`; empty:
    clean only) and the severities, checked now so a typo fails before any training."""
    from ladle.shifts.corruptions import parse_severities, parse_suite

    if suites is None:
        suites = []
    if isinstance(suites, str):
        suites = [suites]
    if not isinstance(suites, list) or not all(isinstance(x, str) for x in suites):
        fail(where, "corruptions", f"must be a list of suites such as [imagenet-c], got {suites!r}")
    severities = str(severities if severities is not None else "3")
    try:
        levels = parse_severities(severities)
        for text in suites:
            parse_suite(text, levels)
    except LadleError as e:
        field = "severities" if str(e).startswith("severities") else "corruptions"
        fail(where, field, str(e).partition(": ")[2])
    return tuple(suites), severities


def _branch_epochs(value, cfg: BranchConfig, where: dict) -> tuple[int, ...]:
    """A list of checkpoint epochs, or "from E" / "from E every K": each checkpoint epoch from E (every K-th
    epoch) that a branch can still train from (before branch_end)."""
    kept = cfg.checkpoint_epochs()
    if isinstance(value, str):
        m = re.fullmatch(r"\s*from\s+(\d+)(?:\s+every\s+(\d+))?\s*", value)
        if not m:
            fail(where, "branch_epochs", f"must be a list of epochs, 'from E' or 'from E every K', got {value!r}")
        start, every = int(m.group(1)), int(m.group(2) or 0)
        epochs = [e for e in kept if e >= start and e < cfg.branch_end and (not every or (e - start) % every == 0)]
        if not epochs:
            fail(where, "branch_epochs", f"'{value}' selects no checkpoint epoch before branch_end {cfg.branch_end}")
        return tuple(epochs)
    if not isinstance(value, list) or not value:
        fail(where, "branch_epochs", f"must be a non-empty list of epochs or 'from E', got {value!r}")
    epochs = [check_value(EPOCH, e, where) for e in value]
    for e in epochs:
        if e not in kept:
            fail(where, "branch_epochs", f"epoch {e} is not a checkpoint (every {cfg.checkpoint_every} epochs up to "
                                          f"{cfg.epochs})")
        if e >= cfg.branch_end:
            fail(where, "branch_epochs", f"epoch {e} leaves nothing to train: branches train to branch_end "
                                          f"{cfg.branch_end}")
    if len(set(epochs)) != len(epochs):
        fail(where, "branch_epochs", f"lists an epoch twice: {value!r}")
    return tuple(sorted(epochs))


def derive_seed(seed: int, *parts) -> int:
    """A 31-bit seed, a fixed function of the study seed and what it is for ("stock", epoch) / ("branch", ...)."""
    text = json.dumps([seed, *parts])
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def global_cosine(optimizer, total_steps: int, *, offset: int, length: int):
    """The study's schedule for one call of the training loop: step i of this call is global step offset + i of
    one cosine over `length` steps (0 at its end), scaling the lr the optimiser was built with."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: 0.5 * (1.0 + math.cos(math.pi * (offset + i) / length)))


def steps_per_epoch(cfg: BranchConfig, train_size: int) -> int:
    return -(-train_size // cfg.batch_size)


# ---- the stock -------------------------------------------------------------------------------------------------


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)


def _identity(cfg: BranchConfig, spec, fingerprints) -> dict:
    """What makes a stock checkpoint the one this config would write (JSON-normalised, as manifests hold it)."""
    keys = ("lr", "momentum", "nesterov", "weight_decay", "batch_size", "label_smoothing", "shift", "bn", "seed",
            "schedule_epochs", "checkpoint_every")
    return json.loads(json.dumps({"model": spec.spec, "num_classes": spec.num_classes, "data": list(fingerprints),
                                  **{k: getattr(cfg, k) for k in keys}}))


def _setup(cfg: BranchConfig):
    from ladle.models import model_spec

    train, heldout = (_load(f"{cfg.data}:{split}", cfg.image_size, cfg.data_seed) for split in ("train", "heldout"))
    spec = model_spec(cfg.model, cfg.num_classes or train.num_classes)
    return spec, train, heldout


def stock_path(out: Path, epoch: int) -> Path:
    return Path(out) / "stock" / f"stock-e{epoch:03d}.safetensors"


def optimiser_path(checkpoint: Path) -> Path:
    return checkpoint.with_name(checkpoint.name.replace(".safetensors", ".optim.safetensors"))


def _kept_stock(path: Path, epoch: int, identity: dict, parent_sha: str | None) -> dict | None:
    """The record of a complete stock checkpoint this config would write at `epoch` after `parent_sha`, or None."""
    from ladle.io.hashing import sha256_file
    from ladle.training.sweep import read_record

    record = read_record(path)
    if record is None or record.get("role") != "stock" or record.get("study") != STUDY:
        return None
    if record.get("epoch") != epoch or record.get("identity") != identity or record.get("parent_sha256") != parent_sha:
        return None
    side = optimiser_path(path)
    state = record.get("optimiser_state") or {}
    if not side.is_file() or sha256_file(side) != state.get("sha256"):
        return None
    sidecar = path.with_name(path.name + ".json")
    if not sidecar.is_file():  # killed between the checkpoint's rename and its manifest copy's: write the copy
        from ladle.io.atomic import write_text_atomic
        from ladle.io.checkpoints import SafetensorsFile
        from ladle.io.writer import MANIFEST_KEY

        write_text_atomic(sidecar, SafetensorsFile(path).metadata[MANIFEST_KEY] + "\n")
    return _stock_result(record, path, sha256_file(path))


def _stock_result(record: dict, path: Path, sha: str) -> dict:
    return {"epoch": record["epoch"], "path": str(path), "sha256": sha,
            "optimiser_state": str(optimiser_path(path)), "optimiser_sha256": record["optimiser_state"]["sha256"],
            "heldout_accuracy": record["heldout_accuracy"], "train_loss": record.get("train_loss"),
            "seed": record.get("segment_seed")}


def _read_tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def _momentum_optimiser(model, buffers: dict | None, holder: dict, *, lr: float, momentum: float,
                        weight_decay: float, nesterov: bool):
    """params -> SGD with the given momentum buffers (by parameter name) put back; keeps the optimiser in
    `holder` so its buffers can be saved after the loop. Only the buffers are restored, never the hyper-parameters
    a saved optimiser state would bring with it."""
    import torch

    def make(params):
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
        if buffers:
            names = {id(p): n for n, p in model.named_parameters()}
            for p in params:
                buf = buffers.get(names.get(id(p)))
                if buf is not None:
                    opt.state[p]["momentum_buffer"] = torch.empty_like(p).copy_(buf)
        holder["optimiser"] = opt
        holder["names"] = {id(p): n for n, p in model.named_parameters()}
        return opt

    return make


def _buffers(holder: dict) -> dict:
    opt, names = holder["optimiser"], holder["names"]
    out = {}
    for group in opt.param_groups:
        for p in group["params"]:
            buf = opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                out[names[id(p)]] = buf.detach().cpu().contiguous()
    return out


def _train_span(cfg: BranchConfig, spec, model, train, buffers, *, start: int, end: int, lr: float, momentum: float,
                weight_decay: float, seed: int, device, progress: bool, desc: str):
    """Train `model` from epoch `start` to `end` on the global cosine: (step losses, momentum buffers)."""
    from ladle.training.loop import train as train_loop
    from ladle.training.objectives import CrossEntropy

    spe = steps_per_epoch(cfg, len(train))
    holder: dict = {}
    opt = _momentum_optimiser(model, buffers, holder, lr=lr, momentum=momentum, weight_decay=weight_decay,
                              nesterov=cfg.nesterov)
    sched = functools.partial(global_cosine, offset=start * spe, length=cfg.schedule_epochs * spe)
    losses = train_loop(model, CrossEntropy(label_smoothing=cfg.label_smoothing, shift=cfg.shift), train,
                        optimiser=opt, schedule=sched, bn=cfg.bn, epochs=end - start, batch_size=cfg.batch_size,
                        seed=seed, mean=spec.mean, std=spec.std, device=device, progress=progress, desc=desc)
    return losses, _buffers(holder)


def train_stock(cfg: BranchConfig, out: Path, *, device=None, progress: bool = False) -> list[dict]:
    """Train (or resume) the stock from scratch; return one record per kept checkpoint, in epoch order:
    {"epoch", "path", "sha256", "optimiser_state", "optimiser_sha256", "heldout_accuracy", "train_loss", "seed"}
    (accuracies are fractions in [0, 1], as the sweep's records and the store's ingredients hold them).

    progress: a plain line per segment on stderr (epoch, loss, held-out accuracy), and bars at a terminal."""
    import torch

    from ladle.evaluation.evaluator import check_num_classes
    from ladle.evaluation.tasting import default_device
    from ladle.models import load_weights
    from ladle.training.loop import accuracy, torch_threads
    from ladle.training.sweep import _write, save_checkpoint

    device = str(device or default_device())
    out = Path(out)
    spec, train, heldout = _setup(cfg)
    fingerprints = (train.source["fingerprint"], heldout.source["fingerprint"])
    identity = _identity(cfg, spec, fingerprints)
    records: list[dict] = []
    parent = None
    for epoch in cfg.checkpoint_epochs():  # the complete chain of checkpoints already written
        kept = _kept_stock(stock_path(out, epoch), epoch, identity, parent)
        if kept is None:
            break
        records.append(kept)
        parent = kept["sha256"]
    todo = cfg.checkpoint_epochs()[len(records):]
    if not todo:
        _say(progress, f"stock: {len(records)} checkpoints kept (epoch {records[-1]['epoch']})")
        return records
    bars = progress and sys.stderr.isatty()
    with torch_threads(cfg.threads):
        with torch.random.fork_rng(devices=[] if device == "cpu" else None):
            torch.manual_seed(cfg.seed)  # from scratch: the initial weights are the seed's
            model = spec.build()
        check_num_classes(model, train)
        buffers = None
        start = 0
        if records:
            load_weights(model, _read_tensors(Path(records[-1]["path"])), records[-1]["path"])
            buffers = _read_tensors(Path(records[-1]["optimiser_state"]))
            start = records[-1]["epoch"]
            _say(progress, f"stock: resuming after epoch {start} ({len(records)} checkpoints kept)")
        for end in todo:
            t0 = time.perf_counter()
            seed = derive_seed(cfg.seed, "stock", start)
            losses, buffers = _train_span(cfg, spec, model, train, buffers, start=start, end=end, lr=cfg.lr,
                                          momentum=cfg.momentum, weight_decay=cfg.weight_decay, seed=seed,
                                          device=device, progress=bars, desc=f"stock epochs {start + 1}-{end}")
            acc = accuracy(model, heldout, spec.mean, spec.std, device)
            path = stock_path(out, end)
            path.parent.mkdir(parents=True, exist_ok=True)
            side = optimiser_path(path)
            side_sha = _write(side, buffers, {"role": "optimiser_state", "study": STUDY, "epoch": end,
                                              "state": "sgd momentum buffers by parameter name"})
            loss = sum(losses) / len(losses) if losses else None
            record = {"role": "stock", "study": STUDY, "model": spec.spec, "num_classes": spec.num_classes,
                      "epoch": end, "identity": identity, "parent_sha256": parent, "segment_seed": seed,
                      "train_loss": loss, "heldout_accuracy": acc, "threads": cfg.threads, "device": device,
                      "optimiser_state": {"path": side.name, "sha256": side_sha},
                      "data": {"train": train.source, "heldout": heldout.source}}
            sha = save_checkpoint(path, model, record)
            records.append(_stock_result(record, path, sha))
            parent, start = sha, end
            _say(progress, f"stock: epoch {end:>3}/{cfg.epochs}  loss {loss:.3f}  held-out {100 * acc:.1f}%  "
                           f"({time.perf_counter() - t0:.1f} s)")
    return records


# ---- the branches ----------------------------------------------------------------------------------------------


def branch_name(epoch: int, variant: str) -> str:
    return f"e{epoch:03d}-{variant}"


def branch_path(out: Path, name: str) -> Path:
    return Path(out) / "branches" / f"{name}.safetensors"


def branch_tasks(cfg: BranchConfig, out: Path, stock_records: list[dict], *, device=None) -> list[dict]:
    """One task (plain data) per branch point × variant, in that order; `train_branch` runs one anywhere and keeps
    a finished one. The stock checkpoints come from `train_stock`'s records."""
    from ladle.evaluation.tasting import default_device

    device = str(device or default_device())
    spec, train, heldout = _setup(cfg)
    by_epoch = {r["epoch"]: r for r in stock_records}
    tasks = []
    for epoch in cfg.branch_epochs:
        if epoch not in by_epoch:
            raise LadleError(f"branch point {epoch}: no stock checkpoint at that epoch (train the stock first)",
                             file=Path(out) / "stock")
        stock = by_epoch[epoch]
        for i, (name, scales) in enumerate(zip(cfg.variant_names(), cfg.variants)):
            hp = {"lr": cfg.lr * scales[0], "momentum": cfg.momentum * scales[1],
                  "weight_decay": cfg.weight_decay * scales[2], "nesterov": cfg.nesterov,
                  "batch_size": cfg.batch_size, "label_smoothing": cfg.label_smoothing, "shift": cfg.shift,
                  "bn": cfg.bn, "seed": derive_seed(cfg.seed, "branch", epoch, i)}
            full = branch_name(epoch, name)
            tasks.append({"name": full, "model": spec.spec, "num_classes": spec.num_classes,
                          "train": train.source["spec"], "heldout": heldout.source["spec"],
                          "image_size": cfg.image_size, "data_seed": cfg.data_seed,
                          "fingerprints": [train.source["fingerprint"], heldout.source["fingerprint"]],
                          "stock": stock["path"], "stock_sha256": stock["sha256"],
                          "optimiser_state": stock["optimiser_state"], "optimiser_sha256": stock["optimiser_sha256"],
                          "branch_epoch": epoch, "branch_end": cfg.branch_end, "schedule_epochs": cfg.schedule_epochs,
                          "variant": name, "scales": list(scales), "hyperparameters": hp,
                          "out": str(branch_path(out, full)), "device": device, "threads": cfg.threads,
                          "progress": False})
    return tasks


def _branch_identity(task: dict) -> dict:
    keys = ("model", "num_classes", "fingerprints", "stock_sha256", "optimiser_sha256", "branch_epoch", "branch_end",
            "schedule_epochs", "variant", "scales", "hyperparameters")
    return json.loads(json.dumps({k: task[k] for k in keys}))


def _branch_result(record: dict, path: Path, sha: str) -> dict:
    return {"name": record["name"], "path": str(path), "sha256": sha, "branch_epoch": record["branch_epoch"],
            "variant": record["variant"], "seed": record["hyperparameters"]["seed"],
            "heldout_accuracy": record["heldout_accuracy"], "scales": record["scales"],
            "hyperparameters": record["hyperparameters"], "trained": True}


def kept_branch(task: dict) -> dict | None:
    """The result of a finished branch whose manifest matches the task, or None (then it is trained)."""
    from ladle.io.hashing import sha256_file
    from ladle.training.sweep import read_record

    out = Path(task["out"])
    record = read_record(out)
    if record is None or record.get("role") != "branch" or record.get("identity") != _branch_identity(task):
        return None
    return dict(_branch_result(record, out, sha256_file(out)), trained=False)


def train_branch(task: dict) -> dict:
    """Continue one branch from its stock checkpoint (the executor's task function; importable, top level).

    Returns {"name", "path", "sha256", "branch_epoch", "variant", "seed", "heldout_accuracy", "scales",
    "hyperparameters", "trained"} (heldout_accuracy a fraction in [0, 1]); "trained" is False when a finished
    checkpoint was kept, "seconds" (training time) is there when it was trained."""
    import torch

    from ladle.io.hashing import sha256_file
    from ladle.models import load_weights, model_spec
    from ladle.training.loop import accuracy, torch_threads
    from ladle.training.sweep import save_checkpoint

    kept = kept_branch(task)
    if kept is not None:
        return kept
    out = Path(task["out"])
    identity = _branch_identity(task)
    with torch_threads(task["threads"]):
        spec = model_spec(task["model"], task["num_classes"])
        train, heldout = (_load(s, task["image_size"], task["data_seed"]) for s in (task["train"], task["heldout"]))
        got = [train.source["fingerprint"], heldout.source["fingerprint"]]
        if got != list(task["fingerprints"]):
            raise LadleError(f"branch {task['name']}: the data loaded here ({got[0]}, {got[1]}) differ from the "
                             f"study's ({task['fingerprints'][0]}, {task['fingerprints'][1]})", file=task["train"])
        for key, path in (("stock_sha256", task["stock"]), ("optimiser_sha256", task["optimiser_state"])):
            if sha256_file(Path(path)) != task[key]:
                raise LadleError("the stock checkpoint changed after the study started; run it again", file=path)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(task["hyperparameters"]["seed"])
            model = spec.build()
        load_weights(model, _read_tensors(Path(task["stock"])), task["stock"])
        buffers = _read_tensors(Path(task["optimiser_state"]))
        hp = task["hyperparameters"]
        cfg = _BranchRun(hp["batch_size"], task["schedule_epochs"], hp["nesterov"], hp["label_smoothing"], hp["shift"],
                         hp["bn"])
        t0 = time.perf_counter()
        losses, _ = _train_span(cfg, spec, model, train, buffers, start=task["branch_epoch"], end=task["branch_end"],
                                lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"],
                                seed=hp["seed"], device=task["device"], progress=task["progress"],
                                desc=f"branch {task['name']}")
        record = {"role": "branch", "study": STUDY, "name": task["name"], "model": task["model"],
                  "num_classes": task["num_classes"], "branch_epoch": task["branch_epoch"],
                  "branch_end": task["branch_end"], "variant": task["variant"], "scales": task["scales"],
                  "hyperparameters": hp, "stock_sha256": task["stock_sha256"], "identity": identity,
                  "final_train_loss": losses[-1] if losses else None,
                  "heldout_accuracy": accuracy(model, heldout, spec.mean, spec.std, task["device"]),
                  "threads": task["threads"], "device": task["device"],
                  "data": {"train": train.source, "heldout": heldout.source}}
        out.parent.mkdir(parents=True, exist_ok=True)
        sha = save_checkpoint(out, model, record)  # no timings in it: the bytes are the run's, not the machine's
    return dict(_branch_result(record, out, sha), seconds=time.perf_counter() - t0)


@dataclass(frozen=True)
class _BranchRun:
    """The config fields _train_span reads, as a branch task carries them."""

    batch_size: int
    schedule_epochs: int
    nesterov: bool
    label_smoothing: float
    shift: int
    bn: str


def train_branch_points(cfg: BranchConfig | str | Path | None, out: Path, *, executor=None, device=None,
                        progress: bool = False) -> list[dict]:
    """The stock, then every branch (through `make_executor(executor)`, default: local, one worker per
    `threads` cores); returns the branch records in task order (branch epoch, then variant)."""
    from ladle.evaluation.tasting import default_device
    from ladle.execution import make_executor
    from ladle.training.sweep import default_executor

    cfg = cfg if isinstance(cfg, BranchConfig) else load_branch_config(cfg)
    device = str(device or default_device())
    out = Path(out)
    stock = train_stock(cfg, out, device=device, progress=progress)
    tasks = branch_tasks(cfg, out, stock, device=device)
    results = {t["name"]: kept for t in tasks if (kept := kept_branch(t)) is not None}
    pending = [t for t in tasks if t["name"] not in results]
    _say(progress, f"branches: {len(cfg.branch_epochs)} branch points × {len(cfg.variants)} variants, to epoch "
                   f"{cfg.branch_end}: {len(pending)} to train, {len(results)} kept")
    if pending:
        own = executor is None or isinstance(executor, str)
        executor = default_executor(len(pending), cfg.threads, device) if executor is None else make_executor(executor)
        inner = progress and sys.stderr.isatty() and getattr(executor, "name", "") == "local:1"
        pending = [dict(t, progress=inner) for t in pending]  # per-branch bars only where they can be seen
        try:
            for result in executor.map(train_branch, pending, desc="branches" if progress else ""):
                results[result["name"]] = result
                _say(progress, f"branch {result['name']}: held-out {100 * result['heldout_accuracy']:.1f}%")
        finally:
            if own:
                executor.close()
    return [results[t["name"]] for t in tasks]


_DATA: dict[tuple, object] = {}  # (spec, image_size, seed) -> ImageSet: a worker loads the study's data once


def _load(spec: str, image_size: int, seed: int):
    from ladle.data import load_data

    key = (spec, image_size, seed)
    if key not in _DATA:
        while len(_DATA) >= 2:  # the study's train and heldout
            _DATA.pop(next(iter(_DATA)))
        _DATA[key] = load_data(spec, image_size=image_size, seed=seed)
    return _DATA[key]


def study_branch_points(out: Path, *, config=None, executor=None, db=None, device=None, progress: bool = False) -> dict:
    """The whole study, resumable through the store: train the stock and its branches, grid every pair at
    α = 0.5 (clean and corrupted), analyse, and write the report to OUT/report. Returns the analysis."""
    from ladle.analysis.report import write_analysis_report
    from ladle.analysis.stats import analyze
    from ladle.execution import make_executor
    from ladle.results.store import ResultStore
    from ladle.analysis.predict import pairs_from_store
    from ladle.studies.grid import GridSettings, run_grid

    cfg = config if isinstance(config, BranchConfig) else load_branch_config(config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    db = Path(db or out / "results.sqlite")
    own = executor is None or isinstance(executor, str)
    executor = make_executor(executor)
    try:
        records = train_branch_points(cfg, out, executor=executor, device=device, progress=True)
        settings = GridSettings(model=cfg.model, data=f"{cfg.data}:test", num_classes=cfg.num_classes,
                                image_size=cfg.image_size, seed=cfg.data_seed, corruptions=cfg.corruptions,
                                severities=cfg.severities, device=device, batch_size=2048, soups_per_pass=1,
                                threads=cfg.threads)
        result = run_grid([r["path"] for r in records], settings, alphas=[0.5], db=db, executor=executor,
                          names=[r["name"] for r in records],
                          info={r["path"]: {"branch_epoch": r["branch_epoch"], "variant": r["variant"]} for r in records},
                          progress=progress)
    finally:
        if own:
            executor.close()
    with ResultStore(db) as store:
        table = pairs_from_store(store, grid=result.grid)
    analysis = analyze(table)
    write_analysis_report(analysis, table, out / "report")
    return analysis
