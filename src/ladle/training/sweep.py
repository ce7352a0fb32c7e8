"""Sweeps: fine-tune one stock model into N ingredients, one executor task per run; resumable.

The recipe follows the model-soups setup at small scale: a shared head initialised once (seeded) and briefly
linear-probed (LP-FT) makes the stock, in the parent; then each run fine-tunes every weight with its own drawn
objective, optimiser, schedule and hyper-parameters (ladle.training.config) and its own data order. A run is
a task of plain data (specs, paths, hyper-parameters), run by `train_run` in whatever process the executor
picks; the task fixes torch's thread count and seeds, so the bytes a run writes do not depend on the executor.
A finished, undamaged ingredient whose record matches the run it would be is kept, never retrained.
A config that names a Hugging Face text folder is a text sweep's, run by ladle.training.text the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ladle.errors import LadleError
from ladle.training.config import Run, SweepConfig, TextSweepConfig, load_config, sample_run, sweep_id
from ladle.training.loop import accuracy, classifier_of, finetune, linear_probe, torch_threads
from ladle.training.runs import default_executor, put_ingredient, read_record  # noqa: F401  (importable from here too)

# What a record written before objectives, optimisers, schedules and BN policies were pluggable trained with.
LEGACY_PARTS = {"objective": "cross_entropy", "optimiser": "adamw", "schedule": "one_cycle", "bn": "frozen"}
_DATA: dict[tuple, object] = {}  # (spec, image_size, seed) -> ImageSet: a worker loads a sweep's data once


@dataclass(frozen=True)
class RunTask:
    """One run of a sweep, as plain data that can cross a process or a machine."""

    run: int
    model: str  # model spec
    num_classes: int | None
    train: str  # data specs (SOURCE:split) and how they are loaded
    heldout: str
    image_size: int
    data_seed: int
    fingerprints: tuple[str, str]  # of train and heldout as the parent loaded them
    objective: str
    optimiser: str
    schedule: str
    bn: str
    hyperparameters: dict
    stock: str  # path
    stock_sha256: str
    out: str  # the ingredient's path
    device: str = "cpu"
    threads: int = 1
    progress: bool = False

    @property
    def plan(self) -> Run:
        return Run(self.objective, self.optimiser, self.schedule, self.bn, self.hyperparameters)


def run_sweep(config: SweepConfig | TextSweepConfig | dict | str | Path | None, out: Path, *,
              overrides: dict | None = None, executor=None, store=None, device: str | None = None,
              progress: bool = False) -> list[dict]:
    """A sweep from a config (file, dict, or None: the default config) plus overrides, into `out/`.

    executor: from ladle.execution.make_executor (default: local, one worker per `threads` cores);
    store: a ResultStore, which gets one ingredient row per run. Returns the records, in run order, each with
    its `path` and `sha256`. A text sweep's config (one naming a text model, or setting a text-only field:
    ladle.training.config.text_sweep_layers) runs as ladle.training.text.run_text_sweep."""
    from ladle.data import load_data
    from ladle.evaluation.tasting import default_device
    from ladle.models import model_spec
    from ladle.training.config import load_text_config, text_sweep_layers

    text = config if isinstance(config, TextSweepConfig) else None if isinstance(config, SweepConfig) else \
        text_sweep_layers(config, overrides)
    if text is not None:
        from ladle.training.text import run_text_sweep

        return run_text_sweep(load_text_config(text), Path(out), executor=executor, store=store, device=device,
                              progress=progress)
    cfg = config if isinstance(config, SweepConfig) else load_config(config, overrides)
    train, heldout = (load_data(f"{cfg.data}:{split}", image_size=cfg.image_size, seed=cfg.data_seed)
                      for split in ("train", "heldout"))
    spec = model_spec(cfg.model, cfg.num_classes or train.num_classes)
    return _sweep(cfg, spec, train, heldout, Path(out), executor=executor, store=store,
                  device=device or default_device(), progress=progress)


def sweep(model_spec, train, heldout, out: Path, *, runs: int = 8, epochs: int = 6, seed: int = 0, lp_steps: int = 10,
          lp_lr: float = 1e-2, batch_size: int = 32, device="cpu", progress=True, threads: int | None = None,
          executor=None, store=None) -> list[dict]:
    """The default config's sweep on data already loaded with ladle.data.load_data (run_sweep takes a config).

    Runs in this process unless an executor is given; threads defaults to torch's current thread count, so
    a caller that set it (a study task) keeps it."""
    from ladle.data import parse_spec

    for name, data in (("train", train), ("heldout", heldout)):
        if "spec" not in data.source or "subset" in data.source:
            raise LadleError(f"sweep: the {name} data must be a split loaded by ladle.data.load_data (each run loads "
                             "it again from its spec)")
    if (heldout.source["image_size"], heldout.source["seed"]) != (train.source["image_size"], train.source["seed"]):
        raise LadleError("sweep: train and heldout data must be loaded with the same image_size and seed")
    overrides = {"model": model_spec.spec, "num_classes": model_spec.num_classes, "data": parse_spec(train.source["spec"])[0],
                 "image_size": train.source["image_size"], "data_seed": train.source["seed"], "seed": seed, "runs": runs,
                 "epochs": epochs, "batch_size": batch_size, "lp_steps": lp_steps, "lp_lr": lp_lr,
                 "threads": threads or torch.get_num_threads()}
    cfg = load_config(None, overrides)
    if executor is None:
        from ladle.execution import make_executor

        executor = make_executor("local:1")
    return _sweep(cfg, model_spec, train, heldout, Path(out), executor=executor, store=store, device=device,
                  progress=progress)


def _sweep(cfg: SweepConfig, spec, train, heldout, out: Path, *, executor, store, device, progress) -> list[dict]:
    from ladle.io.hashing import sha256_file

    stock_path = make_stock(cfg, spec, train, heldout, out, device=device, progress=progress)
    stock_sha = sha256_file(stock_path)
    name = sweep_id(cfg, stock_sha)
    fingerprints = (train.source["fingerprint"], heldout.source["fingerprint"])
    records: dict[int, dict] = {}
    tasks = []
    for run in range(cfg.runs):
        plan = sample_run(cfg, run)
        path = out / f"ingredient-{run:02d}.safetensors"
        record = read_record(path)
        if record is not None and identity(record) == _planned_identity(spec.spec, plan, stock_sha, fingerprints):
            records[run] = dict(record, path=str(path), sha256=sha256_file(path))
            _put(store, records[run], name)
            continue
        tasks.append(RunTask(run, spec.spec, spec.num_classes, train.source["spec"], heldout.source["spec"],
                             train.source["image_size"], train.source["seed"], fingerprints, plan.objective,
                             plan.optimiser, plan.schedule, plan.bn, plan.hyperparameters, str(stock_path), stock_sha,
                             str(path), str(device), cfg.threads))
    own = executor is None
    if own:
        executor = default_executor(len(tasks), cfg.threads, device)
    tasks = [replace(t, progress=progress) for t in tasks]  # per-run bars: a worker's reach the caller, relayed
    keys = [(d.source["spec"], d.source["image_size"], d.source["seed"]) for d in (train, heldout)]
    try:
        for key, data in zip(keys, (train, heldout)):  # runs in this process reuse them; workers load their own
            _remember(key, data)
        # the executor's bar over runs; each run's lines tagged with it
        for result in executor.map(train_run, tasks, desc="sweep" if progress else "", tag=lambda t: f"run {t.run}"):
            records[result["run"]] = result
            _put(store, result, name)
    finally:
        if own:
            executor.close()
        for key in keys:
            _DATA.pop(key, None)
    return [records[run] for run in range(cfg.runs)]


def make_stock(cfg: SweepConfig, spec, train, heldout, out: Path, *, device="cpu", progress=False) -> Path:
    """The shared start of every run: a seeded fresh head, linear-probed; kept if one with this record exists."""
    from ladle.evaluation.evaluator import check_num_classes

    path = out / "stock.safetensors"
    wanted_lp = {"steps": cfg.lp_steps, "lr": cfg.lp_lr, "seed": cfg.seed}
    stock = read_record(path)
    fingerprints = (train.source["fingerprint"], heldout.source["fingerprint"])
    if stock is not None and (stock.get("model") != spec.spec or stock.get("linear_probe") != wanted_lp
                              or stock.get("num_classes", spec.num_classes) != spec.num_classes
                              or _fingerprints(stock) != fingerprints):
        stock = None  # made by another sweep (seed, model, probe or data differ): start again
    if stock is not None:
        return path
    with torch_threads(cfg.threads), torch.random.fork_rng(devices=[] if str(device) == "cpu" else None):
        torch.manual_seed(cfg.seed)  # a stock without pretrained weights is initialised from the seed: reproducible
        model = spec.build().to(device)
        check_num_classes(model, train)  # one line now, not an IndexError mid-training (and no folder made)
        out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)  # one shared head, initialised once
        for m in classifier_of(model).modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        if cfg.lp_steps > 0:  # LP-FT; 0: fine-tune straight from the fresh head
            linear_probe(model, train, spec.mean, spec.std, steps=cfg.lp_steps, lr=cfg.lp_lr, seed=cfg.seed,
                         device=device, progress=progress)
        stock = {"role": "stock", "model": spec.spec, "num_classes": spec.num_classes, "linear_probe": wanted_lp,
                 "heldout_accuracy": accuracy(model, heldout, spec.mean, spec.std, device),
                 "data": {"train": train.source, "heldout": heldout.source}}
        save_checkpoint(path, model, stock)
    return path


def train_run(task: RunTask) -> dict:
    """Train one run and write its ingredient atomically; the executor's task function (importable, top level)."""
    from ladle.io.checkpoints import open_ingredient
    from ladle.io.hashing import sha256_file
    from ladle.models import load_weights, model_spec
    from ladle.models.encoder import head_keys
    from ladle.training.objectives import knobs_of, make_objective, objective_class

    with torch_threads(task.threads):
        spec = model_spec(task.model, task.num_classes)
        train, heldout = (_load(s, task.image_size, task.data_seed) for s in (task.train, task.heldout))
        got = (train.source["fingerprint"], heldout.source["fingerprint"])
        if got != tuple(task.fingerprints):
            raise LadleError(f"run {task.run}: the data loaded here ({got[0]}, {got[1]}) differ from the sweep's "
                             f"({task.fingerprints[0]}, {task.fingerprints[1]})", file=task.train)
        stock = Path(task.stock)
        if sha256_file(stock) != task.stock_sha256:
            raise LadleError("the stock changed after the sweep started; run the sweep again", file=stock)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(task.hyperparameters["seed"])
            model = spec.build()
        load_weights(model, open_ingredient(stock).state_dict(), stock)
        plan = task.plan
        hp = plan.hyperparameters
        objective = make_objective(plan.objective, **{k: hp[k] for k in knobs_of(objective_class(plan.objective))})
        losses = finetune(model, train, plan, spec.mean, spec.std, task.device, task.progress, objective=objective)
        out = Path(task.out)
        record = {"role": "ingredient", "model": task.model, "run": task.run, **plan.parts(), "hyperparameters": hp,
                  "stock_sha256": task.stock_sha256, "threads": task.threads,
                  "final_train_loss": losses[-1] if losses else None,
                  "data": {"train": train.source, "heldout": heldout.source}}
        if objective.encoder_only:  # labels unused in training; the encoder is read out by kNN on the train split
            from ladle.evaluation.knn import K, TEMPERATURE, knn_accuracy

            labelled = train.num_classes >= 2  # unlabelled data (one blank class) have nothing to read out
            record |= {"encoder_only": True, "head_keys": head_keys(model), "readout": {"knn": K, "T": TEMPERATURE},
                       "heldout_accuracy": knn_accuracy(model, train, heldout, spec.mean, spec.std, device=task.device)
                       if labelled else None}
        else:
            record["heldout_accuracy"] = accuracy(model, heldout, spec.mean, spec.std, task.device)
        extra = objective.extra_state()
        if extra:  # the objective's heads, beside the ingredient (which holds the model's tensors only)
            side = out.with_name(f"objective-{task.run:02d}.safetensors")
            sha = _write(side, extra, {"role": "objective_state", "objective": plan.objective, "run": task.run})
            record["objective_state"] = {"path": side.name, "sha256": sha}
        sha = save_checkpoint(out, model, record, encoder_only=objective.encoder_only)
    return dict(record, path=str(out), sha256=sha)


def identity(record: dict) -> dict:
    """What makes a finished run the run a sweep wants (not its results, not the threads it ran with)."""
    return {"model": record.get("model"), **{k: record.get(k, v) for k, v in LEGACY_PARTS.items()},
            "hyperparameters": record.get("hyperparameters"), "stock_sha256": record.get("stock_sha256"),
            "data": _fingerprints(record)}


def _planned_identity(model: str, plan: Run, stock_sha: str, fingerprints) -> dict:
    return {"model": model, **plan.parts(), "hyperparameters": plan.hyperparameters, "stock_sha256": stock_sha,
            "data": tuple(fingerprints)}


def _fingerprints(record: dict) -> tuple:
    data = record.get("data") or {}
    return tuple((data.get(split) or {}).get("fingerprint") for split in ("train", "heldout"))


def _put(store, record: dict, sweep: str) -> None:
    put_ingredient(store, record, sweep, {k: record.get(k, v) for k, v in LEGACY_PARTS.items()})


def _remember(key: tuple, data) -> None:
    _DATA.pop(key, None)
    _DATA[key] = data
    while len(_DATA) > 2:  # one sweep's train and heldout
        _DATA.pop(next(iter(_DATA)))


def _load(spec: str, image_size: int, seed: int):
    from ladle.data import load_data

    key = (spec, image_size, seed)
    if key not in _DATA:
        _remember(key, load_data(spec, image_size=image_size, seed=seed))
    return _DATA[key]


def _write(path: Path, tensors: dict[str, torch.Tensor], manifest: dict) -> str:
    from ladle.io.checkpoints import TensorInfo
    from ladle.io.writer import SoupWriter

    with SoupWriter(path, {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in tensors.items()}, force=True) as w:
        for k, v in tensors.items():
            w.add(k, v)
        return w.finish(manifest)[path.name]


def save_checkpoint(path: Path, model, manifest: dict, encoder_only: bool = False) -> str:
    """Atomically, with the run's record in the metadata (the encoder alone, without the head, with
    `encoder_only`); returns the file's sha256."""
    from ladle.models.encoder import encoder_state

    tensors = encoder_state(model) if encoder_only else model.state_dict()
    return _write(Path(path), {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, manifest)
