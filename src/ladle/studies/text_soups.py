"""The text soups study: the model-soups experiment on text at CPU scale (`ladle study soups --config
rotten-tomatoes.yaml`). Per seed, a text sweep fine-tunes one encoder (MiniLM) into N classifiers (LP-FT, drawn
hyper-parameters); the uniform, greedy and learned soups are cooked on held-out data; every model and the output
ensembles are evaluated on held-out, a test slice and the test slice under the text-typos shift, and the soup gain
acc − max acc(ingredients) is recorded per column, beside the paper's text finding. Resumable through the store, as
the image study is (ladle.studies.soups, whose rows, summary and table this study shares).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ladle.errors import LadleError

STUDY = "soups-text"
STUDY_FIELDS = {  # the study's own fields (the `sweep:` section is a text sweep's config)
    "heldout_examples": (int, 1), "test_examples": (int, 1), "shift_examples": (int, 1), "severity": (int, 1), "corruptions": (str, None),
    "learned_epochs": (int, 1), "eval_batch_size": (int, 1)}
REFERENCE = [
    "for reference, Wortsman et al. 2022 (§ text classification): BERT and T5 fine-tuned on GLUE-style tasks with",
    "different hyper-parameters; greedy soups improved on the best single model in many but not all tasks, by less",
    "than on images; the uniform soup of text models can fall far below its ingredients (model-soups issue #5)."]


def load_text_study(path) -> dict:
    """The study config: `kind: text-soups`, a `sweep:` mapping (a text sweep's fields) and a `study:` mapping;
    every field checked, one line naming the file and the field."""
    from ladle.config import find_config
    from ladle.soup.recipe_file import read_yaml_mapping
    from ladle.training.config import load_text_config

    file = find_config(path, Path(__file__).parent / "configs")
    cfg = read_yaml_mapping(file)[0]
    if cfg.get("kind") != "text-soups":
        raise LadleError("kind: a text soups study says `kind: text-soups`", file=file)
    unknown = set(cfg) - {"kind", "sweep", "study"}
    if unknown:
        raise LadleError(f"unknown field '{sorted(unknown)[0]}' (fields: kind, sweep, study)", file=file)
    study = dict(cfg.get("study") or {})
    for name, value in study.items():
        if name not in STUDY_FIELDS:
            raise LadleError(f"study.{name}: unknown field (fields: {', '.join(STUDY_FIELDS)})", file=file)
        kind, low = STUDY_FIELDS[name]
        if not isinstance(value, kind) or isinstance(value, bool) or (low is not None and value < low):
            raise LadleError(f"study.{name}: expected {kind.__name__}" + (f" ≥ {low}" if low else "") +
                             f", got {value!r}", file=file)
    sweep = dict(cfg.get("sweep") or {})
    for key in ("model", "data"):  # paths in the file are relative to it
        if isinstance(sweep.get(key), str) and (file.parent / sweep[key]).exists():
            sweep[key] = str(file.parent / sweep[key])
    load_text_config(sweep)  # a bad sweep section fails now, in one line
    return {"file": str(file), "sweep": sweep, "study": study}


def study_text_seed(folder: Path, seed: int, cfg: dict, *, store=None, device: str = "cpu", progress: bool = True):
    """Sweep, soups and evaluation for one seed, recorded in the store."""
    from ladle.data import stratified_split
    from ladle.execution import make_executor
    from ladle.io.checkpoints import open_ingredient
    from ladle.io.hashing import sha256_file
    from ladle.evaluation.scorer import Taster
    from ladle.evaluation.tasting import resolve
    from ladle.shifts.corruptions import CorruptionCache, parse_suite
    from ladle.soup.cook import cook
    from ladle.spec import TastingSpec
    from ladle.studies.soups import SeedResult, record_seed
    from ladle.studies.taste import shifted_splits
    from ladle.training.config import load_text_config
    from ladle.training.text import run_text_sweep

    say = (lambda text: print(f"seed {seed}: {text}", flush=True)) if progress else (lambda text: None)
    study = cfg["study"]
    sweep = load_text_config(cfg["sweep"], {"seed": seed})
    say(f"text sweep: {sweep.runs} ingredients of {cfg['sweep'].get('model', 'minilm')} on {sweep.data}")
    with make_executor("local:1") as here:
        records = run_text_sweep(sweep, folder / f"ingredients-seed{seed}", executor=here, store=store, device=device,
                                 progress=progress)
    paths = [r["path"] for r in records]
    spec = TastingSpec(model=paths[0], data=[f"{sweep.data}:heldout", f"{sweep.data}:test"], seed=sweep.data_seed,
                       max_length=sweep.longest, workers=0, device=device,
                       eval_batch_size=study.get("eval_batch_size", 32))
    tasting = resolve(spec, "test")
    heldout, test = tasting.splits.values()
    if study.get("heldout_examples", len(heldout)) < len(heldout):  # what greedy and learned taste on
        heldout = heldout.subset(stratified_split(heldout.y.numpy(), [study["heldout_examples"]], seed)[0], "heldout slice")
    test = test.subset(stratified_split(test.y.numpy(), [study.get("test_examples", 600)], seed)[0], "test slice")
    part = test.subset(stratified_split(test.y.numpy(), [study.get("shift_examples", 200)], seed)[0], "shift slice")
    suite = parse_suite(study.get("corruptions", "text-typos"), (study.get("severity", 3),))
    shifted, grids = shifted_splits({"shift slice": part}, [suite], seed=seed, cache=CorruptionCache(folder / "corrupted"))
    cells = grids[("shift slice", suite.suite)]
    data = {"heldout": heldout, "test": test, **shifted}
    ev = tasting.evaluator(splits=data, store=store, progress=progress)
    say(f"evaluating {len(paths)} ingredients on {len(heldout)} held-out, {len(test)} test and "
        f"{len(cells)} × {len(part)} shifted texts")
    for p in paths:
        ev.logits_many(p, open_ingredient(p).state_dict(), list(data), key=sha256_file(Path(p) / "model.safetensors"),
                       kind="ingredient")
    say("cooking the uniform, greedy and learned soups")
    soups = folder / "soups" / f"seed{seed}"
    soups.mkdir(parents=True, exist_ok=True)
    made = {"uniform soup": cook("uniform", paths, out=soups / "uniform", force=True),
            "greedy soup": cook("greedy", paths, scorer=Taster(ev, "heldout"), out=soups / "greedy", force=True,
                                progress=progress),
            "learned soup": cook("learned", paths, scorer=Taster(ev, "heldout"), out=soups / "learned", force=True,
                                 epochs=study.get("learned_epochs", 3), batch_size=32, progress=progress)}
    for name, soup in made.items():
        ev.logits_many(name, open_ingredient(soup.path).state_dict(), list(data),
                       key=next(iter(soup.sha256.values())), kind="soup")
    greedy_set = [p for p, w in zip(paths, made["greedy soup"].manifest["weights"]) if w > 0]
    ensembles = {f"ensemble of all {len(paths)}": paths, f"ensemble of greedy set ({len(greedy_set)})": greedy_set}

    def accuracy(name: str, split: str) -> float:
        if name in ensembles:
            return ev.ensemble(ensembles[name], split).accuracy
        return ev.score(name, None, split).accuracy

    def columns(name: str) -> dict[str, float]:
        return {"heldout": accuracy(name, "heldout"), "test": accuracy(name, "test"),
                "corrupted": sum(accuracy(name, s) for s in cells.values()) / len(cells)}

    ingredients = {p: columns(p) for p in paths}
    best = max(paths, key=lambda p: ingredients[p]["heldout"])
    rows = [(f"best single (by held-out): {Path(best).name}", "best single", ingredients[best])]
    rows += [(name, "soup", columns(name)) for name in made]
    rows += [(name, "ensemble", columns(name)) for name in ensembles]
    result = SeedResult(seed, rows, ingredients, len(greedy_set))
    if store is not None:
        record_seed(store, result, False, study=STUDY)
    return result


def seed_task(task: dict) -> dict:
    """Executor task: one seed of the study, in a worker; returns its rows (plain data)."""
    import torch

    from ladle.progress import progress_enabled
    from ladle.results.store import ResultStore

    torch.set_num_threads(task["threads"])
    with ResultStore(task["db"]) as store:
        result = study_text_seed(Path(task["out"]), task["seed"], task["config"], store=store, device=task["device"],
                                 progress=progress_enabled())
    return {"seed": result.seed, "greedy_size": result.greedy_size}


def study_text_soups(seeds: list[int], out: Path, config, *, executor=None, db: Path | None = None,
                     device: str | None = None) -> dict:
    """Run the missing seeds through the executor (one task per seed), then summarise every seed from the store."""
    from ladle.execution import make_executor
    from ladle.results.store import ResultStore
    from ladle.studies.soups import summarise

    cfg = config if isinstance(config, dict) else load_text_study(config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    db = Path(db or out / "results.sqlite")
    executor = make_executor(executor) if executor is None or isinstance(executor, str) else executor
    workers = getattr(executor, "workers", os.cpu_count() or 1)

    def done(store, seed: int) -> bool:
        return any(r["row"] == "done" and r["seed"] == seed for r in store.study_rows(STUDY))

    with ResultStore(db) as store:
        todo = [s for s in seeds if not done(store, s)]
    if len(todo) < len(seeds):
        print(f"study: {len(seeds) - len(todo)} of {len(seeds)} seeds already in {db}; running {len(todo)}", flush=True)
    tasks = [{"seed": s, "out": str(out), "db": str(db), "config": cfg, "device": device or "cpu",
              "threads": max(1, (os.cpu_count() or 1) // max(1, min(workers, len(todo))))} for s in todo]
    start = time.time()
    for n, result in enumerate(executor.map(seed_task, tasks, desc="study seeds", tag=lambda t: f"seed {t['seed']}"), 1):
        print(f"study: seed {result['seed']} done ({n}/{len(tasks)}, {(time.time() - start) / 60:.1f} min); "
              f"greedy kept {result['greedy_size']}", flush=True)
    executor.close()
    with ResultStore(db) as store:
        rows = [r for r in store.study_rows(STUDY) if r["seed"] in set(seeds)]
    return summarise(rows, seeds) | {"study": STUDY, "config": cfg["file"]}


def is_text_study(config) -> bool:
    """Whether a `--config` names a text soups study (`kind: text-soups`) rather than an image sweep config."""
    from ladle.config import find_config
    from ladle.soup.recipe_file import read_yaml_mapping

    try:
        file = find_config(config, Path(__file__).parent / "configs")
        return read_yaml_mapping(file)[0].get("kind") == "text-soups"
    except (LadleError, OSError):
        return False
