"""Every recipe on the demo's ingredients: the soup gain of each merge, measured on one table.

    .venv/bin/python bench/recipes.py                       # seed 0 of the demo's sweep (8 digits ingredients)
    .venv/bin/python bench/recipes.py --seeds 0,1,2         # mean ± sd of the gain over the demo's sweep seeds
    .venv/bin/python bench/recipes.py --text                # one seed of the text study's ingredients (MiniLM, RT)
    .venv/bin/python bench/recipes.py --only greedy,ties --work /tmp/r   # a few recipes, another work folder

Ingredients come from the library's own training, not from code here. Digits: `ladle.training.sweep` called with
the arguments `ladle demo` gives it (ladle.studies.soups: EfficientNet-Lite0, 64 px digits, 8 runs of 6 epochs,
the sweep seed as the data seed), written as the demo writes them, `WORK/ingredients-seedS/` with `stock.safetensors`
(the linear-probed start of every run) and `ingredient-NN.safetensors`; `--work` pointing at a `ladle demo --out`
folder reuses its ingredients. Text (`--text`): `ladle.training.text.run_text_sweep` on the text study's config
(`rotten-tomatoes.yaml`: 6 MiniLM classifiers, `WORK/text/ingredients-seedS/stock/` and `ingredient-NN/`), tasted
on the study's 200-snippet held-out and 400-snippet test slices. A finished ingredient is never trained again.

Every recipe of `ladle recipes` is cooked with `ladle.cook` on those files (soups under `WORK/soups-seedS/`): the
fixed-weight ones with the parameters below (λ = 1/N where a recipe sums task vectors, so the sum is a mean, as
mergekit's normalised `linear`/`dare_linear`; λ = 1 where TIES' disjoint mean already averages), the data-driven
ones on the held-out split with a fresh evaluator each, so each cook time includes its own evaluations; recipes that
need `--base` get the stock. Every soup, every ingredient and the stock are then tasted on held-out and test; soup
gain = acc(soup) − max acc(ingredients) on that split, in points. The table goes to stdout (markdown), the figures
to `bench/results/recipes.json` (`recipes-text.json` with `--text`; git-ignored). A failed recipe is one table row
saying so, with the `ladle cook` command that remakes it and its error; the run goes on.

Threads: torch uses `--threads` (default 2). A heartbeat line every 10 s says which step is running.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
HEARTBEAT = 10.0  # seconds between two "still running" lines


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


@contextlib.contextmanager
def heartbeat(label: str, every: float = HEARTBEAT):
    """A line every `every` seconds while the block runs, so no step is silent for long in a log."""
    stop = threading.Event()
    start = time.monotonic()

    def beat():
        while not stop.wait(every):
            say(f"  … {label}: {time.monotonic() - start:.0f} s")

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# --------------------------------------------------------------------------------------------------- the recipes
@dataclass
class Dish:
    label: str  # the table's row
    recipe: str
    params: dict = field(default_factory=dict)
    base: bool = False  # give it the stock as --base
    tastes: bool = False  # needs a scorer (--model, --data)
    pick: str = "all"  # "all" ingredients, or "top2" (the two best by held-out accuracy)

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() or c in "-." else "_" for c in self.label.split(" (")[0]).strip("_")


def menu(n: int, seed: int, fisher_examples: int = 16, learned: tuple[str, dict] = ("per layer, 5 epochs", {"per": "layer"})
         ) -> list[Dish]:
    """Every recipe in `ladle recipes`, with the parameters this comparison uses (all defaults but λ where a recipe
    sums task vectors, learned per layer as the demo cooks it, and Fisher's examples: its exact diagonal costs one
    backward pass per class and example: 16 examples × 8 digits ingredients took 64 s, so the default 256 would
    take ~17 min of a run that is otherwise a few minutes)."""
    mean = 1.0 / n
    frac = f"1/{n}"
    tasting_seed = {"seed": seed}  # the CLI's --seed is the data's and the recipe's
    return [
        Dish("uniform", "uniform"),
        Dish("weighted (equal weights)", "weighted", {"weights": [1.0] * n}),
        Dish("interpolate (α=0.5, stock base: WiSE-FT of the mean)", "interpolate", {"alpha": 0.5}, base=True),
        Dish("model-stock", "model-stock", base=True),
        Dish(f"task-arithmetic (λ={frac})", "task-arithmetic", {"lambda": mean}, base=True),
        Dish("task-arithmetic (λ=1, the default)", "task-arithmetic", {}, base=True),
        Dish("ties (density 0.2, λ=1)", "ties", {}, base=True),
        Dish(f"dare (p=0.9, λ={frac})", "dare", {"lambda": mean}, base=True),
        Dish("dare-ties (p=0.9, λ=1)", "dare-ties", {}, base=True),
        # DARE's 1/(1−p) rescale preserves a task vector's expectation in a sum, but TIES' disjoint mean averages only
        # the entries kept: the merged vector is ~1/(1−p) times the mean (mergekit's normalised dare_ties alike);
        # λ = 1 − p undoes it (and DELLA's ~1/density likewise)
        Dish("dare-ties (p=0.9, λ=0.1 = 1−p)", "dare-ties", {"lambda": 0.1}, base=True),
        Dish(f"breadcrumbs (density 0.9, γ=0.01, λ={frac})", "breadcrumbs", {"lambda": mean}, base=True),
        Dish("breadcrumbs-ties (density 0.9, γ=0.01, λ=1)", "breadcrumbs-ties", {}, base=True),
        Dish("della (density 0.5, ε=0.1, λ=1)", "della", {}, base=True),
        Dish("della (density 0.5, ε=0.1, λ=0.5 = density)", "della", {"lambda": 0.5}, base=True),
        Dish(f"della-linear (density 0.5, ε=0.1, λ={frac})", "della-linear", {"lambda": mean}, base=True),
        Dish("karcher (equal weights)", "karcher"),
        Dish("slerp (t=0.5, the two best by held-out)", "slerp", pick="top2"),
        Dish("greedy", "greedy", tastes=True),
        Dish(f"learned ({learned[0]})", "learned", {**learned[1], **tasting_seed}, tastes=True),
        Dish("season (20 held-out shots)", "season", dict(tasting_seed), tastes=True),
        Dish("self-season (label-free, held-out images)", "self-season", dict(tasting_seed), tastes=True),
        Dish("regmean (256 examples, α=0.9)", "regmean", tastes=True),
        Dish("adamerging (per layer, λ₀=0.3, stock base)", "adamerging", dict(tasting_seed), base=True, tastes=True),
        # the paper's λ₀ = 0.3 is for task vectors of different tasks; N of one task sum to 0.3·N times their mean
        Dish(f"adamerging (per layer, λ₀={frac}: starts at the uniform soup)", "adamerging",
             {"init": mean, **tasting_seed}, base=True, tastes=True),
        Dish(f"fisher ({fisher_examples} examples)", "fisher", {"examples": fisher_examples}, tastes=True),
    ]


# ------------------------------------------------------------------------------------------------ the ingredients
@dataclass
class Pantry:
    """One seed's ingredients and what tastes them."""

    kind: str  # "digits" or "text"
    seed: int
    stock: str
    paths: list[str]
    records: list[dict]
    tasting: object  # ladle.evaluation.tasting.Tasting (model spec, preprocessing)
    splits: dict  # "heldout", "test" -> data
    cli_spec: object  # the TastingSpec a `ladle cook … --model … --data …` command line says
    soup_suffix: str  # ".safetensors" (a file) or "" (an HF folder)
    weights_file: str  # what is hashed for the store key: "" (the path itself) or "model.safetensors"
    train_seconds: float
    note: str = ""
    learned: tuple = ("per layer, 5 epochs", {"per": "layer"})  # the learned soup as the demo / study cooks it

    def key(self, path: str) -> str:
        from ladle.io.hashing import sha256_file

        return sha256_file(Path(path) / self.weights_file if self.weights_file else Path(path))


def digits_pantry(work: Path, seed: int, quick: bool, device: str, ready: Path | None = None) -> Pantry:
    """The demo's ingredients for sweep seed `seed`: `ladle.training.sweep` with the arguments `ladle demo` gives it
    (ladle.studies.soups.study_seed → _train), so a demo folder's ingredients are found and kept; or, with `ready`,
    a folder's stock.safetensors and ingredient-*.safetensors as they are (nothing trained)."""
    from ladle.data import load_data
    from ladle.evaluation.tasting import resolve
    from ladle.models import BUILTIN_STOCK, model_spec
    from ladle.spec import TastingSpec
    from ladle.studies.soups import IMAGE_SIZE
    from ladle.training import sweep

    runs, epochs = (3, 2) if quick else (8, 6)  # study_seed's numbers (`ladle demo` / `ladle demo --quick`)
    spec = model_spec(BUILTIN_STOCK, 10)
    train, heldout = (load_data(f"digits:{s}", image_size=IMAGE_SIZE, seed=seed) for s in ("train", "heldout"))
    folder = work / f"ingredients-seed{seed}"
    start = time.time()
    if ready is not None:
        from ladle.training import read_record

        folder = ready
        records = [dict(read_record(p) or {}, path=str(p)) for p in sorted(folder.glob("ingredient-*.safetensors"))]
        say(f"seed {seed}: {len(records)} ingredients as they are in {folder} (nothing trained)")
    else:
        say(f"seed {seed}: the demo's sweep — {BUILTIN_STOCK} on digits at {IMAGE_SIZE} px, {runs} ingredients × "
            f"{epochs} epochs, into {folder} (kept ones are not retrained)")
        with heartbeat(f"seed {seed}: sweep"):
            records = sweep(spec, train, heldout, folder, runs=runs, epochs=epochs, seed=seed, device=device,
                            progress=True)
    seconds = time.time() - start
    stock = folder / "stock.safetensors"
    if not stock.is_file():
        raise SystemExit(f"the sweep wrote no stock at {stock}")
    paths = [r["path"] for r in records]
    say(f"seed {seed}: {len(paths)} ingredients ready in {seconds / 60:.1f} min (held-out, as trained: "
        + ", ".join(f"{100 * r.get('heldout_accuracy', math.nan):.1f}" for r in records) + ")")
    data = ["digits:heldout", "digits:test"]
    tspec = TastingSpec(model=BUILTIN_STOCK, data=data, image_size=IMAGE_SIZE, seed=seed, device=device)
    tasting = resolve(tspec, "heldout")
    held, test = tasting.splits.values()
    cli = TastingSpec(model=BUILTIN_STOCK, data=["digits:heldout"], image_size=IMAGE_SIZE, seed=seed)
    return Pantry("digits", seed, str(stock), paths, records, tasting, {"heldout": held, "test": test}, cli,
                  ".safetensors", "", seconds)


def text_pantry(work: Path, seed: int, quick: bool, device: str) -> Pantry:
    """The text study's ingredients for seed `seed` (ladle.studies.text_soups.study_text_seed's sweep and slices)."""
    from ladle.data import stratified_split
    from ladle.evaluation.tasting import resolve
    from ladle.execution import make_executor
    from ladle.spec import TastingSpec
    from ladle.studies.text_soups import load_text_study
    from ladle.training.config import load_text_config
    from ladle.training.text import run_text_sweep

    cfg = load_text_study("rotten-tomatoes.yaml")
    study = cfg["study"]
    overrides = {"seed": seed} | ({"runs": 3} if quick else {})
    sweep = load_text_config(cfg["sweep"], overrides)
    folder = work / "text" / f"ingredients-seed{seed}"
    say(f"seed {seed}: the text study's sweep — {sweep.runs} classifiers of {cfg['sweep'].get('model', 'minilm')} "
        f"on {sweep.data}, into {folder} (kept ones are not retrained)")
    start = time.time()
    with heartbeat(f"seed {seed}: text sweep"), make_executor("local:1") as here:
        records = run_text_sweep(sweep, folder, executor=here, device=device, progress=True)
    seconds = time.time() - start
    paths = [r["path"] for r in records]
    stock = folder / "stock"
    say(f"seed {seed}: {len(paths)} ingredients ready in {seconds / 60:.1f} min")
    tspec = TastingSpec(model=paths[0], data=[f"{sweep.data}:heldout", f"{sweep.data}:test"], seed=sweep.data_seed,
                        max_length=sweep.longest, workers=0, device=device,
                        eval_batch_size=study.get("eval_batch_size", 32))
    tasting = resolve(tspec, "test")
    held, test = tasting.splits.values()
    if study.get("heldout_examples", len(held)) < len(held):  # the study's slices, as study_text_seed cuts them
        held = held.subset(stratified_split(held.y.numpy(), [study["heldout_examples"]], seed)[0], "heldout slice")
    test = test.subset(stratified_split(test.y.numpy(), [study.get("test_examples", 600)], seed)[0], "test slice")
    cli = TastingSpec(model=paths[0], data=[f"{sweep.data}:heldout"], seed=sweep.data_seed, max_length=sweep.longest)
    return Pantry("text", seed, str(stock), paths, records, tasting, {"heldout": held, "test": test}, cli, "",
                  "model.safetensors", seconds,
                  note=f"held-out slice {len(held)}, test slice {len(test)} (the CLI command tastes the whole held-out "
                       "split; this run the study's slice)",
                  learned=(f"per model, {study.get('learned_epochs', 3)} epochs, batch 32",
                           {"epochs": study.get("learned_epochs", 3), "batch_size": 32}))


# ------------------------------------------------------------------------------------------------------ one seed
def cook_one(dish: Dish, pantry: Pantry, ingredients: list[str], out: Path) -> dict:
    """Cook one dish; the row says what it was, how long it took, and the command that remakes it."""
    import ladle
    from ladle.evaluation.scorer import Taster
    from ladle.soup.options import cook_options
    from ladle.soup.record import reproduce_command
    from ladle.soup.recipes import RECIPES

    params = dict(dish.params)
    options = {"base": pantry.stock} if dish.base else {}
    row = {"label": dish.label, "recipe": dish.recipe, "parameters": params, "base": options.get("base"),
           "ingredients": ingredients, "output": str(out)}
    scorer = None
    start = time.time()
    try:
        if dish.tastes:  # a fresh evaluator: this cook pays for its own evaluations, as a `ladle cook` would
            evaluator = pantry.tasting.evaluator(splits={"heldout": pantry.splits["heldout"]}, progress=True)
            scorer = Taster(evaluator, "heldout")
            scorer.spec = pantry.cli_spec  # what the manifest's command line says
        with heartbeat(f"cook {dish.recipe}"):
            soup = ladle.cook(dish.recipe, ingredients, out=out, force=True, progress=True, scorer=scorer,
                              **options, **params)
        row["cook_seconds"] = time.time() - start
        row["sha256"] = next(iter(soup.sha256.values()))
        row["weights"] = soup.manifest.get("weights")
        row["notes"] = list(soup.notes)
        row["manifest_parameters"] = soup.manifest.get("parameters")
        row["ok"] = True
    except Exception as e:  # noqa: BLE001 — a failing recipe is a result, not the end of the run
        row["cook_seconds"] = time.time() - start
        row["ok"] = False
        row["error"] = f"{type(e).__name__}: {e}"
        row["traceback"] = traceback.format_exc(limit=6)
    try:
        spec = RECIPES[dish.recipe]
        holder = scorer if scorer is not None else _SpecOnly(pantry.cli_spec) if dish.tastes else None
        words = reproduce_command(dish.recipe, ingredients, out, cook_options(**options), spec.validate(dict(params)),
                                  holder)
        row["command"] = " ".join(_quote(w) for w in words) if words else None
    except Exception as e:  # noqa: BLE001
        row["command"] = f"(could not form the command: {e})"
    return row


class _SpecOnly:
    """What reproduce_command reads of a scorer (its tasting spec), when the scorer could not be made."""

    def __init__(self, spec):
        self.spec = spec


def _quote(word: str) -> str:
    import shlex

    return shlex.quote(str(word))


def run_seed(kind: str, work: Path, seed: int, quick: bool, only: set[str] | None, device: str,
             ready: Path | None = None, fisher_examples: int = 16) -> dict:
    from ladle.evaluation.gain import collapse_threshold, soup_gain
    from ladle.io.checkpoints import open_ingredient
    from ladle.results.store import ResultStore

    seed_start = time.time()
    pantry = (text_pantry(work, seed, quick, device) if kind == "text" else
              digits_pantry(work, seed, quick, device, ready))
    base_dir = work / ("text" if kind == "text" else "")
    soups_dir = base_dir / f"soups-seed{seed}"
    soups_dir.mkdir(parents=True, exist_ok=True)
    with ResultStore(base_dir / "results.sqlite") as store:  # the tasting's logits: a re-run tastes nothing twice
        ev = pantry.tasting.evaluator(splits=pantry.splits, store=store, progress=True)

        def taste(name: str, path: str, key: str | None = None, kind_: str = "model") -> dict[str, float]:
            key = key or pantry.key(path)
            with heartbeat(f"taste {Path(name).name if '/' in name else name}"):
                ev.logits_many(name, None if ev_has(name) else open_ingredient(path).state_dict(), ["heldout", "test"],
                               key=key, kind=kind_)
            return {s: ev.score(name, None, s).accuracy for s in ("heldout", "test")}

        def ev_has(name: str) -> bool:
            return all((name, s) in ev.cache for s in ("heldout", "test"))

        say(f"seed {seed}: tasting the stock and {len(pantry.paths)} ingredients on held-out "
            f"({len(pantry.splits['heldout'])}) and test ({len(pantry.splits['test'])})")
        taste_start = time.time()
        stock = taste("stock", pantry.stock, kind_="stock")
        ingredients = {}
        for p in pantry.paths:
            ingredients[p] = taste(p, p, kind_="ingredient")
            say(f"  {Path(p).name}: held-out {100 * ingredients[p]['heldout']:.2f}, test {100 * ingredients[p]['test']:.2f}")
        say(f"  stock: held-out {100 * stock['heldout']:.2f}, test {100 * stock['test']:.2f}")
        taste_seconds = time.time() - taste_start
        best_test = max(a["test"] for a in ingredients.values())
        best_held = max(a["heldout"] for a in ingredients.values())
        ranked = sorted(pantry.paths, key=lambda p: -ingredients[p]["heldout"])
        best = ranked[0]
        ensemble = {s: ev.ensemble(pantry.paths, s).accuracy for s in ("heldout", "test")}

        def gains(acc: dict[str, float]) -> dict[str, float]:
            return {s: soup_gain(acc[s], (a[s] for a in ingredients.values())) for s in ("heldout", "test")}

        dishes = [d for d in menu(len(pantry.paths), seed, fisher_examples, pantry.learned) if only is None or d.recipe in only or d.slug in only]
        rows = []
        for i, dish in enumerate(dishes, 1):
            chosen = ranked[:2] if dish.pick == "top2" else pantry.paths
            out = soups_dir / f"{i:02d}-{dish.slug}{pantry.soup_suffix}"
            say(f"seed {seed}: [{i}/{len(dishes)}] cook {dish.label}")
            row = cook_one(dish, pantry, chosen, out)
            if row["ok"]:
                acc = taste(f"soup {dish.label}", str(out), key=row["sha256"], kind_="soup")
                row |= {"accuracy": acc, "gain": gains(acc), "detail": detail(row, len(pantry.paths))}
                classes = pantry.tasting.model.num_classes
                collapsed = 100 * acc["test"] < collapse_threshold(classes)  # ladle's own rule (grids, studies)
                if collapsed:
                    row["suspicious"] = (f"collapsed: test accuracy {100 * acc['test']:.2f} % (below ladle's collapse "
                                         f"threshold {collapse_threshold(classes):.0f} %; chance {100 / classes:.0f} %)")
                say(f"seed {seed}: [{i}/{len(dishes)}] {dish.recipe}: held-out {100 * acc['heldout']:.2f}, "
                    f"test {100 * acc['test']:.2f} (gain {100 * row['gain']['test']:+.2f} pts), cooked in "
                    f"{row['cook_seconds']:.1f} s" + (f" — {row['suspicious']}" if collapsed else ""))
            else:
                say(f"seed {seed}: [{i}/{len(dishes)}] {dish.recipe} FAILED after {row['cook_seconds']:.1f} s: "
                    f"{row['error']}\n    command: {row['command']}")
            rows.append(row)
    _cross_checks(rows)
    return {"seed": seed, "kind": kind, "stock": pantry.stock, "stock_accuracy": stock,
            "ingredients": {p: a for p, a in ingredients.items()},
            "records": [{k: r.get(k) for k in ("path", "hyperparameters", "heldout_accuracy")} for r in pantry.records],
            "best_single": {"path": best, "accuracy": ingredients[best], "gain": gains(ingredients[best])},
            "best_test": best_test, "best_heldout": best_held,
            "ensemble": {"accuracy": ensemble, "gain": gains(ensemble)}, "stock_gain": gains(stock),
            "rows": rows, "train_seconds": pantry.train_seconds, "taste_ingredients_seconds": taste_seconds,
            "seconds": time.time() - seed_start, "note": pantry.note}


def _cross_checks(rows: list[dict]) -> None:
    """What must agree: weighted with equal weights is the uniform soup, and so is task arithmetic at λ = 1/N (up
    to rounding). Compared tensor by tensor (the files differ anyway: each carries its own manifest)."""
    import torch

    from ladle.io.checkpoints import open_ingredient

    uniform = next((r for r in rows if r.get("ok") and r["recipe"] == "uniform"), None)
    if uniform is None:
        return
    same_as_uniform = [r for r in rows if r.get("ok") and (r["recipe"] == "weighted" or (
        r["recipe"] == "task-arithmetic" and "λ=1/" in r["label"]))]
    if not same_as_uniform:
        return
    mine = open_ingredient(uniform["output"]).state_dict()
    for other in same_as_uniform:
        theirs = open_ingredient(other["output"]).state_dict()
        worst = max(float((mine[k].double() - theirs[k].double()).abs().max() / mine[k].double().abs().max().clamp_min(1e-12))
                    if mine[k].is_floating_point() else float(not torch.equal(mine[k], theirs[k])) for k in mine)
        diff = {s: other["accuracy"][s] - uniform["accuracy"][s] for s in ("heldout", "test")}
        other["vs_uniform"] = {"max_tensor_difference_relative_to_its_largest_entry": worst,
                               "accuracy_difference": diff}
        if worst > 1e-5 or any(abs(d) > 0.5 / 100 for d in diff.values()):
            other["suspicious"] = (f"should equal the uniform soup: tensors differ by up to {worst:.2e} of their largest "
                                   f"entry, test accuracy "
                                   f"by {100 * diff['test']:+.2f} pts")


def detail(row: dict, n: int) -> str:
    """What a data-driven recipe chose, in a few words (from the manifest's weights)."""
    w = row.get("weights") or []
    if row["recipe"] == "greedy":
        return f"kept {sum(1 for x in w if x > 0)} of {n}"
    if row["recipe"] in ("season", "self-season", "learned") and w and row.get("manifest_parameters", {}).get("per") != "layer":
        return "weights " + ", ".join(f"{x:.2f}" for x in w)
    return ""


# ------------------------------------------------------------------------------------------------------ the table
def table(results: list[dict]) -> str:
    """Markdown: one row per recipe; one seed: accuracies and gains; several: means and mean ± sd of the gain."""
    many = len(results) > 1
    labels = [r["label"] for r in results[0]["rows"]]
    n = len(results[0]["ingredients"])
    if many:
        head = ("| recipe | held-out % (mean) | test % (mean) | gain held-out (pts, mean ± sd) | gain test (pts, mean ± sd) "
                "| per-seed test gain | cook s (mean) |\n|---|---|---|---|---|---|---|")
    else:
        head = ("| recipe | held-out % | test % | gain held-out (pts) | gain test (pts) | cook s |\n"
                "|---|---|---|---|---|---|")
    lines = [head]

    def cells(name: str, accs: list[dict], gains: list[dict], seconds: list[float] | None, failed: list[str]):
        if failed and len(failed) == len(results):
            err = failed[0].replace("|", "\\|")
            lines.append(f"| {name} | failed: {err[:160]} |" + " |" * (5 if many else 4))
            return
        mean = lambda xs: statistics.fmean(xs) if xs else math.nan  # noqa: E731
        held, test = mean([a["heldout"] for a in accs]), mean([a["test"] for a in accs])
        sec = f"{mean(seconds):.1f}" if seconds else "—"
        if not many:
            g = gains[0]
            lines.append(f"| {name} | {100 * held:.2f} | {100 * test:.2f} | {100 * g['heldout']:+.2f} | "
                         f"{100 * g['test']:+.2f} | {sec} |")
            return
        gh, gt = [100 * g["heldout"] for g in gains], [100 * g["test"] for g in gains]
        sd = lambda xs: f"{statistics.stdev(xs):.2f}" if len(xs) > 1 else "—"  # noqa: E731
        per = " / ".join(f"{x:+.2f}" for x in gt)
        name += f" ({len(failed)} of {len(results)} seeds failed: {failed[0][:80]})".replace("|", "\\|") if failed else ""
        lines.append(f"| {name} | {100 * held:.2f} | {100 * test:.2f} | {mean(gh):+.2f} ± {sd(gh)} | "
                     f"{mean(gt):+.2f} ± {sd(gt)} | {per} | {sec} |")

    cells("stock (linear-probed start)", [r["stock_accuracy"] for r in results], [r["stock_gain"] for r in results],
          None, [])
    cells("best single (by held-out)", [r["best_single"]["accuracy"] for r in results],
          [r["best_single"]["gain"] for r in results], None, [])
    cells(f"ensemble of all {n} (not a soup: {n}× the cost)", [r["ensemble"]["accuracy"] for r in results],
          [r["ensemble"]["gain"] for r in results], None, [])
    for label in labels:
        rows = [next(x for x in r["rows"] if x["label"] == label) for r in results]
        ok = [x for x in rows if x["ok"]]
        chose = "; ".join(x["detail"] for x in ok if x.get("detail") and x["recipe"] == "greedy")
        name = f"`{rows[0]['recipe']}` {label[len(rows[0]['recipe']):].strip()}".strip() + (f" — {chose}" if chose else "")
        cells(name, [x["accuracy"] for x in ok],
              [x["gain"] for x in ok], [x["cook_seconds"] for x in ok], [x["error"] for x in rows if not x["ok"]])
    return "\n".join(lines)


def failures(results: list[dict]) -> list[dict]:
    out = []
    for r in results:
        for x in r["rows"]:
            if not x["ok"] or x.get("suspicious"):
                out.append({"seed": r["seed"], "recipe": x["recipe"], "label": x["label"], "command": x.get("command"),
                            "error": x.get("error"), "suspicious": x.get("suspicious"),
                            "traceback": x.get("traceback")})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--seeds", default="0", help="sweep seeds, e.g. 0 or 0,1,2 or 0-2 (default 0: one seed of "
                        "the demo's sweep; the demo trains 8 ingredients per seed)")
    parser.add_argument("--work", default=None, help="folder for ingredients, soups and the tasting store (default "
                        "/tmp/ladle-recipes; never inside the repository)")
    parser.add_argument("--text", action="store_true", help="the text study's ingredients (MiniLM on Rotten "
                        "Tomatoes) instead of the demo's digits")
    parser.add_argument("--only", default=None, help="comma-separated recipes (names as in `ladle recipes`)")
    parser.add_argument("--quick", action="store_true", help="the demo's --quick sweep (3 ingredients, 2 epochs): "
                        "a smoke test, not a measurement")
    parser.add_argument("--from", dest="ready", default=None, help="digits: a folder of stock.safetensors and "
                        "ingredient-*.safetensors to use as they are (e.g. a `ladle train sweep` output); nothing is "
                        "trained; its data seed must be the one given by --seeds")
    parser.add_argument("--fisher-examples", type=int, default=16, help="examples of Fisher merging's diagonal "
                        "(default 16; the recipe's own default, 256, takes ~17 min on the digits ingredients here)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--json", default=None, help="where the figures go (default bench/results/recipes.json, "
                        "recipes-text.json with --text)")
    args = parser.parse_args()

    from ladle.studies.soups import parse_seeds

    seeds = parse_seeds(args.seeds)
    work = Path(args.work or "/tmp/ladle-recipes").resolve()
    if work == ROOT or ROOT in work.parents:
        raise SystemExit(f"--work {work} is inside the repository; give a folder outside it")
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("LADLE_CACHE_DIR", str(work / "cache"))  # sha256 and image caches: private to the run
    os.environ["LADLE_LOGIT_CACHE"] = "0"  # every cook evaluates what it needs: comparable cook times

    import torch

    torch.set_num_threads(args.threads)
    kind = "text" if args.text else "digits"
    only = set(args.only.split(",")) if args.only else None
    command = "python bench/recipes.py " + " ".join(_quote(a) for a in sys.argv[1:])
    say(f"{kind}: every recipe on seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}; work folder "
        f"{work}; torch threads {args.threads}; {os.cpu_count()} cores")
    start = time.time()
    load_before = os.getloadavg()
    results = []
    for seed in seeds:
        result = run_seed(kind, work, seed, args.quick, only, "cpu", Path(args.ready) if args.ready else None,
                          args.fisher_examples)
        results.append(result)
        say(f"seed {seed} done in {result['seconds'] / 60:.1f} min (training {result['train_seconds'] / 60:.1f} min)")
    minutes = (time.time() - start) / 60
    text = table(results)
    n = len(results[0]["ingredients"])
    what = ("the demo's digits ingredients (EfficientNet-Lite0, 64 px)" if kind == "digits" else
            "the text study's ingredients (all-MiniLM-L6-v2 on Rotten Tomatoes)")
    print()
    print(f"{n} ingredients of {what}, sweep seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}; "
          f"gain = accuracy − the best ingredient's accuracy on that split, in points")
    print()
    print(text)
    print()
    bad = failures(results)
    for f in bad:
        print(f"seed {f['seed']}: {f['label']}: " + (f"FAILED: {f['error']}" if f["error"] else f"suspicious: {f['suspicious']}"))
        if f["command"]:
            print(f"    {f['command']}")
    print(f"\n{command}: {minutes:.1f} min on {os.cpu_count()} cores ({args.threads} torch threads; load average "
          f"{load_before[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end)")
    out = Path(args.json) if args.json else RESULTS / ("recipes-text.json" if args.text else "recipes.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"command": command, "kind": kind, "seeds": seeds, "quick": args.quick, "minutes": minutes,
               "threads": args.threads, "cores": os.cpu_count(), "machine": platform.machine(),
               "load_average_before": load_before, "load_average_after": os.getloadavg(),
               "python": platform.python_version(), "table_markdown": text, "failures": bad, "results": results}
    out.write_text(json.dumps(payload, indent=2, default=_plain, allow_nan=True) + "\n")
    print(f"figures: {out}")
    return 0


def _plain(value):
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
