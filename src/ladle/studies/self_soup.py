"""`ladle study self-soup`: Self-Soupervision's self-souping, end to end, resumable.

stock → self-supervised inter-training on unlabelled target images (corrupted copies of one half of the test
images, labels blanked) → fine-tuning back on the labelled clean train split (LP-FT, each run as its supervised
twin of the control sweep) → uniform, greedy and self-seasoned soups → evaluation on the other half of the test
images, clean, ImageNet-C and LAION-C-style. Controls in the same table: the supervised soup without
inter-training, the best single ingredient, and the stock with BatchNorm statistics re-estimated on the target
pool (so BN adaptation is not credited to souping).

Every artefact is a file with its record (kept when its identity matches, so a rerun trains nothing twice) and
every evaluation goes through the results store (`OUT/results.sqlite`).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ladle.config import SELF_SOUP_FIELDS, check_fields, fail, read_layers
from ladle.errors import LadleError

DEFAULT_CONFIG = "self-soup.yaml"
PAPER_GAINS = {"imagenet-c": 3.5, "laion-c": 7.0}  # published gains of self-souping over the best single ingredient


@dataclass(frozen=True)
class SelfSoupConfig:
    model: str
    data: str
    image_size: int
    seed: int
    pool_fraction: float
    target: tuple[str, ...]
    severity: int
    ssl: tuple[dict, ...]
    ssl_steps: int
    ssl_lr: float
    ssl_batch_size: int
    ft_epochs: int
    lp_steps: int
    season_epochs: int
    threads: int
    origin: str = "config"


def load_self_soup_config(path: str | Path | None = None, overrides: dict | None = None) -> SelfSoupConfig:
    """The shipped default, a file on top (a bare shipped name such as `paper-in-c.yaml` works), then overrides.
    Errors name the file, the line and the field in one line."""
    from ladle.studies.branch_points import default_config_path

    layered = read_layers(SELF_SOUP_FIELDS, default_config_path(DEFAULT_CONFIG), path, overrides)
    v = check_fields(SELF_SOUP_FIELDS, layered)
    v["target"] = _targets(v["target"], v["severity"], layered.where)
    v["ssl"] = _ssl_runs(v["ssl"], layered.where)
    return SelfSoupConfig(**v, origin=layered.origin)


def _targets(value, severity: int, where: dict) -> tuple[str, ...]:
    from ladle.shifts.corruptions import parse_suite

    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(t, str) for t in value):
        fail(where, "target", f"must be a list of suites such as [imagenet-c:fog, laion-c], got {value!r}")
    try:
        for text in value:
            parse_suite(text, (severity,))
    except LadleError as e:
        fail(where, "target", str(e).partition(": ")[2])
    return tuple(value)


def _ssl_runs(value, where: dict) -> tuple[dict, ...]:
    from ladle.training.objectives import knobs_of, make_objective, objective_class

    if not isinstance(value, list) or not value:
        fail(where, "ssl", f"must be a list of {{objective: NAME, knob: value, …}}, got {value!r}")
    runs = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("objective"), str):
            fail(where, "ssl", f"item {i + 1} must be a mapping with an objective, got {item!r}")
        knobs = {k: v for k, v in item.items() if k != "objective"}
        try:
            cls = objective_class(item["objective"])
            unknown = sorted(set(knobs) - set(knobs_of(cls)))
            if unknown:
                raise LadleError(f"objective: {item['objective']} has no knob '{unknown[0]}' (it has: "
                                 f"{', '.join(knobs_of(cls))})")
            if not make_objective(item["objective"], **knobs).encoder_only:
                raise LadleError(f"objective: {item['objective']} is not self-supervised")
        except (LadleError, ValueError, TypeError) as e:
            fail(where, "ssl", f"item {i + 1}: {str(e).partition(': ')[2] or e}")
        runs.append(dict(item))
    return tuple(runs)


_START = time.monotonic()


def _say(text: str) -> None:
    """A plain line on stderr with the minutes since the study began (readable in a log file)."""
    print(f"self-soup [{(time.monotonic() - _START) / 60:4.1f} min]: {text}", file=sys.stderr, flush=True)


def make_target_data(cfg: SelfSoupConfig, out: Path) -> dict:
    """The two disjoint halves of the test images: `pool.npz` (the corrupted copies of one half, labels blanked)
    and `eval.npz` (the other half, clean and labelled). Kept when the record matches."""
    import numpy as np
    import torch

    from ladle.data import load_data, stratified_split
    from ladle.io.hashing import sha256_file
    from ladle.shifts.corruptions import corrupt_images, parse_suite

    folder = out / "data"
    record_path = folder / "halves.json"
    test = load_data(f"{cfg.data}:test", image_size=cfg.image_size, seed=cfg.seed)
    wanted = {"test": test.source["fingerprint"], "pool_fraction": cfg.pool_fraction, "seed": cfg.seed,
              "target": list(cfg.target), "severity": cfg.severity}
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("identity") == wanted and "num_classes" in record and all((folder / f).is_file() and sha256_file(folder / f) == record[f]
                                                    for f in ("pool.npz", "eval.npz")):
            return record
    folder.mkdir(parents=True, exist_ok=True)
    pool_idx, eval_idx = stratified_split(test.y.numpy(), [round(cfg.pool_fraction * len(test))], cfg.seed)
    if set(pool_idx.tolist()) & set(eval_idx.tolist()):
        raise LadleError("the target pool and the evaluation half overlap")  # stratified_split never does this
    pool_clean = test.x[torch.as_tensor(pool_idx)]
    copies = []
    for text in cfg.target:
        suite = parse_suite(text, (cfg.severity,))
        for name in suite.names:
            _say(f"target pool: {suite.suite} {name} at severity {cfg.severity} on {len(pool_idx)} images")
            copies.append(corrupt_images(pool_clean, suite.suite, name, cfg.severity, seed=cfg.seed).numpy())
    pool = np.concatenate(copies)
    evaluation = (test.x[torch.as_tensor(eval_idx)] * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    _save_npz(folder / "pool.npz", pool, np.zeros(len(pool), dtype=np.int64))  # labels blanked: one class
    _save_npz(folder / "eval.npz", evaluation, test.y[torch.as_tensor(eval_idx)].numpy())
    record = {"identity": wanted, "num_classes": test.num_classes,  # what every model's head is sized to
              "pool_indices": sorted(int(i) for i in pool_idx),
              "eval_indices": sorted(int(i) for i in eval_idx), "pool_images": len(pool),
              "pool.npz": sha256_file(folder / "pool.npz"), "eval.npz": sha256_file(folder / "eval.npz")}
    _atomic_text(record_path, json.dumps(record))
    return record


def _save_npz(path: Path, x, y) -> None:
    import numpy as np

    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, x=x, y=y)
    tmp.replace(path)


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def supervised_config(cfg: SelfSoupConfig) -> dict:
    """The control sweep: the demo's regime, one run per SSL run, on the labelled clean data."""
    return {"model": cfg.model, "data": cfg.data, "image_size": cfg.image_size, "seed": cfg.seed,
            "runs": len(cfg.ssl), "epochs": cfg.ft_epochs, "lp_steps": cfg.lp_steps, "threads": cfg.threads}


def ssl_config(cfg: SelfSoupConfig, run: dict, pool: Path, num_classes: int) -> dict:
    """One inter-training run: a one-run sweep on the pool, whose single blank class must not size the head."""
    return {"model": cfg.model, "num_classes": num_classes, "data": str(pool),
            "image_size": cfg.image_size, "seed": cfg.seed, "runs": 1, "lp_steps": 0, "steps": cfg.ssl_steps,
            "epochs": 1, "batch_size": cfg.ssl_batch_size, "lr": cfg.ssl_lr, "weight_decay": 0.05,
            "optimiser": "adamw", "schedule": "cosine", "bn": "frozen", "threads": cfg.threads, **run}


def inter_train(task: dict) -> dict:
    """One self-supervised run on the pool (the executor's task): a one-run sweep, kept if already trained."""
    from ladle.execution import make_executor
    from ladle.training.sweep import run_sweep

    serial = make_executor("local:1")  # in this worker's process
    try:
        (record,) = run_sweep(task["config"], Path(task["out"]), executor=serial, device=task["device"])
    finally:
        serial.close()
    return record


def finetune_back(task: dict) -> dict:
    """One inter-trained encoder fine-tuned back on labelled clean data (the executor's task): the control sweep's
    stock with this encoder in place of its own, its head linear-probed again, then run `run` of the control
    sweep's plan. Kept when a file with this identity exists."""
    import torch

    from ladle.data import load_data
    from ladle.io.checkpoints import open_ingredient
    from ladle.io.hashing import sha256_file
    from ladle.models import load_weights, model_spec
    from ladle.training.config import Run
    from ladle.training.loop import accuracy, finetune, linear_probe, torch_threads
    from ladle.training.sweep import read_record, save_checkpoint

    out = Path(task["out"])
    identity = {k: task[k] for k in ("model", "num_classes", "stock_sha256", "encoder_sha256", "plan", "lp_steps",
                                     "data", "image_size", "seed")}
    record = read_record(out)
    if record is not None and record.get("identity") == json.loads(json.dumps(identity)):
        return dict(record, path=str(out), sha256=sha256_file(out))
    with torch_threads(task["threads"]):
        spec = model_spec(task["model"], task["num_classes"])
        train = load_data(f"{task['data']}:train", image_size=task["image_size"], seed=task["seed"])
        heldout = load_data(f"{task['data']}:heldout", image_size=task["image_size"], seed=task["seed"])
        plan = Run(**task["plan"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(plan.hyperparameters["seed"])
            model = spec.build()
        state = open_ingredient(task["stock"]).state_dict()
        state.update(open_ingredient(task["encoder"]).state_dict())  # the encoder replaced, the probed head kept
        load_weights(model, state, task["encoder"])
        model.to(task["device"])
        if task["lp_steps"]:
            linear_probe(model, train, spec.mean, spec.std, steps=task["lp_steps"], seed=plan.hyperparameters["seed"],
                         device=task["device"])
        finetune(model, train, plan, spec.mean, spec.std, task["device"])
        record = {"role": "ingredient", "identity": identity, "model": task["model"], "run": task["run"],
                  "objective": "cross_entropy (fine-tuned back)", "inter_trained": task["inter_trained"],
                  "heldout_accuracy": accuracy(model, heldout, spec.mean, spec.std, task["device"]),
                  "data": {"train": train.source, "heldout": heldout.source}}
        sha = save_checkpoint(out, model, record)
    return dict(record, path=str(out), sha256=sha)


def bn_adapted_stock(stock: Path, pool: Path, cfg: SelfSoupConfig, num_classes: int, out: Path, device) -> Path:
    """The control stock with BatchNorm statistics re-estimated on the unlabelled target pool."""
    import torch

    from ladle.data import load_data
    from ladle.evaluation.evaluator import update_bn
    from ladle.io.checkpoints import open_ingredient
    from ladle.io.hashing import sha256_file
    from ladle.models import load_weights, model_spec
    from ladle.training.sweep import read_record, save_checkpoint

    identity = {"stock": sha256_file(stock), "pool": sha256_file(pool)}
    record = read_record(out)
    if record is not None and record.get("identity") == identity:
        return out
    spec = model_spec(cfg.model, num_classes)
    model = spec.build()
    load_weights(model, open_ingredient(stock).state_dict(), stock)
    data = load_data(f"{pool}:all", image_size=cfg.image_size, seed=cfg.seed)
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.no_grad():
        update_bn((((data.x[i : i + 256] - mean) / std) for i in range(0, len(data), 256)), model.to(device), device)
    save_checkpoint(out, model, {"role": "control", "identity": identity, "bn": "re-estimated on the target pool"})
    return out


def study_self_soup(out: Path, *, config=None, executor=None, device=None, progress: bool = False) -> dict:
    """The whole pipeline; returns the results table (also written to OUT/results.md and results.json)."""
    from ladle import cook
    from ladle.evaluation.tasting import default_device, make_scorer
    from ladle.execution import make_executor
    from ladle.training.config import load_config, sample_run
    from ladle.training.sweep import run_sweep

    global _START
    _START = time.monotonic()
    cfg = config if isinstance(config, SelfSoupConfig) else load_self_soup_config(config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = device or default_device()
    halves = make_target_data(cfg, out)
    pool, evaluation = out / "data" / "pool.npz", out / "data" / "eval.npz"
    own = executor is None or isinstance(executor, str)
    executor = make_executor(executor)
    try:
        _say(f"control sweep: {len(cfg.ssl)} supervised ingredients")
        supervised = run_sweep(supervised_config(cfg), out / "supervised", executor=executor, device=device,
                               progress=progress)
        stock = out / "supervised" / "stock.safetensors"
        _say(f"inter-training {len(cfg.ssl)} encoders for {cfg.ssl_steps} steps each on {halves['pool_images']} "
             "unlabelled target images")
        ssl_tasks = [{"config": ssl_config(cfg, run, pool, halves["num_classes"]), "out": str(out / "ssl" / f"run-{i:02d}"),
                      "device": str(device)} for i, run in enumerate(cfg.ssl)]
        encoders = []
        for record in executor.map(inter_train, ssl_tasks, desc="inter-train" if progress else ""):
            encoders.append(record)
            _say(f"inter-trained {len(encoders)}/{len(ssl_tasks)}: {record['objective']}, final loss "
                 f"{record['final_train_loss']:.4f}")
        plans = [sample_run(load_config(supervised_config(cfg)), i) for i in range(len(cfg.ssl))]
        from ladle.io.hashing import sha256_file

        tasks = [{"run": i, "model": cfg.model, "num_classes": halves["num_classes"],
                  "stock": str(stock), "stock_sha256": sha256_file(stock), "encoder": enc["path"],
                  "encoder_sha256": enc["sha256"], "plan": asdict(plan), "lp_steps": cfg.lp_steps, "data": cfg.data,
                  "image_size": cfg.image_size, "seed": cfg.seed, "threads": cfg.threads, "device": str(device),
                  "inter_trained": {"objective": enc["objective"], "hyperparameters": enc["hyperparameters"]},
                  "out": str(out / "back" / f"back-{i:02d}.safetensors")}
                 for i, (enc, plan) in enumerate(zip(encoders, plans))]
        (out / "back").mkdir(exist_ok=True)
        _say(f"fine-tuning back {len(tasks)} encoders on the labelled clean train split")
        back = []
        for record in executor.map(finetune_back, tasks, desc="fine-tune back" if progress else ""):
            back.append(record)
            _say(f"fine-tuned back {len(back)}/{len(tasks)}: held-out {100 * record['heldout_accuracy']:.1f}%")
    finally:
        if own:
            executor.close()
    soups = out / "soups"
    soups.mkdir(exist_ok=True)
    paths = [r["path"] for r in back]
    made = {}
    _say("cooking: uniform, greedy (clean held-out), self-seasoned (unlabelled pool), supervised uniform")
    made["uniform"] = _cook_once(cook, "uniform", paths, soups / "uniform.safetensors")
    made["greedy"] = _cook_once(cook, "greedy", paths, soups / "greedy.safetensors",
                                scorer=lambda: make_scorer(cfg.model, [f"{cfg.data}:heldout"], image_size=cfg.image_size,
                                                           device=device, split="heldout", progress=progress))
    on_pool = lambda: make_scorer(cfg.model, [f"{pool}:all"], image_size=cfg.image_size,  # noqa: E731
                                  num_classes=halves["num_classes"], device=device, split="all", progress=progress)
    # the paper's form mixes the stock in; the second row leaves it out, since a stock whose features were never
    # collapsed onto these classes scores a low neighbour entropy whatever its accuracy (see the README)
    for label, models, name in [("self-seasoned", [str(stock), *paths], "self-seasoned"),
                                ("self-seasoned, ingredients only", paths, "self-seasoned-ingredients")]:
        _say(f"self-seasoning {len(models)} models ({label}) for {cfg.season_epochs} epochs over the pool")
        made[label] = _cook_once(cook, "self-season", models, soups / f"{name}.safetensors", scorer=on_pool,
                                 epochs=cfg.season_epochs)
    made["supervised uniform (no inter-training)"] = _cook_once(cook, "uniform", [r["path"] for r in supervised],
                                                                soups / "supervised-uniform.safetensors")
    made["stock (linear-probed, as is)"] = stock
    made["stock, BN re-estimated on the pool"] = bn_adapted_stock(stock, pool, cfg, halves["num_classes"],
                                                                  soups / "stock-bn-target.safetensors",
                                                                  device)
    table = evaluate(cfg, paths, made, evaluation, halves["num_classes"], out, device)
    return table


def _cook_once(cook, recipe: str, paths, out: Path, scorer=None, **params) -> Path:
    """A soup file, cooked unless one from the same recipe, ingredients and parameters given here is there."""
    from ladle.io.hashing import sha256_file
    from ladle.io.manifest import read_manifest

    if out.is_file():
        try:
            manifest = read_manifest(out) or {}
            same = [i.get("sha256") for i in manifest.get("ingredients", [])] == [sha256_file(p) for p in paths]
            given = manifest.get("parameters") or {}
            if same and manifest.get("recipe") == recipe and all(given.get(k) == v for k, v in params.items()):
                return out
        except (LadleError, ValueError, OSError):
            pass
    cook(recipe, [str(p) for p in paths], out=out, force=True, scorer=scorer() if scorer else None, **params)
    return out


def evaluate(cfg: SelfSoupConfig, ingredients: list, made: dict, evaluation: Path, num_classes: int, out: Path,
             device) -> dict:
    """Every model on the evaluation half, clean and on the target suites (through the store), as one table."""
    from ladle.evaluation.gain import best_single
    from ladle.shifts.corruptions import family
    from ladle.studies.taste import taste_specs

    _say("evaluating on the held-back half: clean, " + ", ".join(cfg.target))
    db = out / "results.sqlite"
    models = [*ingredients, *(str(p) for p in made.values())]
    report = taste_specs(models, model=cfg.model, data=[f"{evaluation}:all"], image_size=cfg.image_size,
                         num_classes=num_classes, device=device, seed=cfg.seed, uniform=False,
                         corruptions=list(cfg.target), severities=str(cfg.severity), db=db, executor="local:1")
    columns = ["clean", *dict.fromkeys(family(t.partition(":")[0]) for t in cfg.target)]
    scores: dict[str, dict[str, float]] = {}
    for row in report.rows:
        clean = next(iter(row.metrics.values())).accuracy
        scores[row.name] = {"clean": 100 * clean}
    for shift in report.shifts:  # one per suite: its mean corrupted accuracy
        for m in shift.models:
            scores[m.name][family(shift.suite)] = 100 * m.corrupted
    singles = [scores[r.name] for r in report.rows if r.kind == "ingredient" and Path(r.name).resolve()
               in {Path(p).resolve() for p in ingredients}]
    best = {c: best_single(s[c] for s in singles) for c in columns}
    rows = [{"row": "best single ingredient", **best}]
    for label, path in made.items():
        name = next(r.name for r in report.rows if Path(r.name).resolve() == Path(path).resolve())
        rows.append({"row": label, **scores[name]})
    for r in rows:
        r["gain"] = {c: r[c] - best[c] for c in columns}
    table = {"columns": columns, "rows": rows, "paper_gains": PAPER_GAINS, "config": asdict(cfg),
             "eval_images": len(json.loads((out / "data" / "halves.json").read_text())["eval_indices"])}
    _atomic_text(out / "results.json", json.dumps(table, indent=2))
    _atomic_text(out / "results.md", format_table(table))
    return table


def format_table(table: dict) -> str:
    columns = table["columns"]
    head = "| | " + " | ".join(f"{c} acc %" for c in columns) + " | " + " | ".join(f"gain {c}" for c in columns) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(columns))]
    for r in table["rows"]:
        gains = ["" if r["row"] == "best single ingredient" else f"{r['gain'][c]:+.2f}" for c in columns]
        lines.append(f"| {r['row']} | " + " | ".join(f"{r[c]:.2f}" for c in columns) + " | " + " | ".join(gains) + " |")
    paper = ", ".join(f"{k} {v:+.1f}" for k, v in table["paper_gains"].items())
    lines.append(f"\npaper (Self-Soupervision, self-souping over the best single ingredient): {paper} points")
    return "\n".join(lines) + "\n"
