"""`ladle grid`: every pair of models souped in memory, evaluated clean and corrupted, stored row by row.

Phases, each asking the store first: (1) each model's own accuracy and loss, clean and on the corruption suite
(stored once; logits cached in `evaluations`); (2) the similarity of every pair, from each model's weights (one
streaming Gram matrix) and its cached predictions; (3) the soups: (1 − α)·a + α·b of every float tensor (BatchNorm
running statistics included, as the paper does), in tasks of a few pairs that an executor runs; a task's rows land
in one transaction, so a killed grid resumes without recomputing a finished soup. Models are named by the sha256
of their weights: a store holds several grids (one per model spec, data, suite and BN policy), keyed by content.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ladle.errors import LadleError
from ladle.spec import TastingSpec

SOUPS_PER_TASK = 24


@dataclass(frozen=True)
class GridSettings:
    """What defines a grid's figures: plain data, so a task can carry it to another process or machine."""

    model: str
    data: str  # SOURCE[:split] the soups are scored on (default split: test)
    num_classes: int | None = None
    image_size: int | None = None  # default: the model's own preprocessing
    seed: int = 0  # the data split's seed
    corruptions: tuple[str, ...] = ()  # suite specs (imagenet-c, imagenet-c:fog,snow, laion-c, …)
    severities: str = "3"
    corruption_seed: int = 0
    corruption_cache: str | None = None
    bn: str = "average"  # average | recalibrate (on bn_data, default the data's train split)
    bn_data: str | None = None
    device: str | None = None
    batch_size: int = 256
    soups_per_pass: int = 8  # soups evaluated in one batched (vmap) forward pass
    threads: int = 1  # torch threads per task: part of the settings, so every executor gives the same bytes
    precision: str = "fp32"
    workers: int | None = None  # processes decoding photos the first time (later passes read the preprocessed cache)
    max_length: int | None = None  # text: the tasting spec's truncation and columns
    text_column: str | None = None
    text_pair_column: str | None = None
    label_column: str | None = None

    def scored(self) -> dict:
        """The fields the figures depend on (not device, batch sizes, threads or workers)."""
        return {k: v for k, v in asdict(self).items()
                if k not in ("device", "batch_size", "soups_per_pass", "threads", "corruption_cache", "workers")}

    def tasting(self) -> TastingSpec:
        """The tasting spec of the grid's evaluations: the same model, data and store keys as `taste` and `cook`;
        photos always come from the preprocessed cache, since every soup reads them again."""
        return TastingSpec(model=self.model, data=[self.data], num_classes=self.num_classes, image_size=self.image_size,
                           bn=self.bn, bn_data=self.bn_data, device=self.device, precision=self.precision,
                           eval_batch_size=self.batch_size, workers=self.workers, cache_data=True, seed=self.seed,
                           max_length=self.max_length, text_column=self.text_column,
                           text_pair_column=self.text_pair_column, label_column=self.label_column)


@dataclass
class Context:
    """A worker's built parts: the model, the evaluator over clean and corrupted splits, the suite's split names."""

    settings: GridSettings
    evaluator: object
    clean: str
    corrupted: list[str]
    num_classes: int
    notes: list[str] = field(default_factory=list)


_CONTEXTS: dict[GridSettings, Context] = {}


def build_context(settings: GridSettings, *, executor=None, progress: bool = False) -> Context:
    """Model, data and corrupted splits (built once, cached on disk), kept per process for the next task."""
    if settings in _CONTEXTS:
        return _CONTEXTS[settings]
    from ladle.evaluation.tasting import resolve
    from ladle.shifts.corruptions import CorruptionCache, default_cache_dir, parse_severities, parse_suite, resize_note
    from ladle.studies.taste import shifted_splits

    if settings.bn not in ("average", "recalibrate"):
        raise LadleError(f"bn: a grid averages BatchNorm statistics or recalibrates them (average, recalibrate), "
                         f"got '{settings.bn}'")
    tasting = resolve(settings.tasting(), "test", cache_data=True, progress=progress)
    splits = tasting.splits
    (clean, data), = splits.items()
    if getattr(data, "task", "classify") == "lm":
        raise LadleError(f"grid: scores soups by accuracy and NLL per example; {clean} is a language model's corpus "
                         "(taste or cook greedy score it by its token NLL)")
    severities = parse_severities(settings.severities)
    suites = [parse_suite(text, severities) for text in settings.corruptions]
    cache = CorruptionCache(Path(settings.corruption_cache) if settings.corruption_cache else default_cache_dir())
    shifted, _ = shifted_splits(splits, suites, seed=settings.corruption_seed, cache=cache, progress=progress,
                                executor=executor)
    evaluator = tasting.evaluator(splits=dict(splits) | shifted)
    spec = tasting.model
    note = resize_note(shifted.values())
    context = Context(settings, evaluator, clean, list(shifted), spec.num_classes or data.num_classes,
                      [note] if note else [])
    _CONTEXTS[settings] = context
    return context


def grid_key(context: Context) -> str:
    """The content key of a grid: its scored settings with the data's and corrupted sets' fingerprints."""
    from ladle.results.store import soup_key

    ev = context.evaluator
    fingerprints = {name: ev._fingerprint(name) for name in [context.clean, *context.corrupted]}
    return soup_key("grid", {"settings": context.settings.scored(), "bn": ev.bn_key, "data": fingerprints}, [])


# -- batched evaluation of soups -------------------------------------------------------------------------


def mix_pair(a: dict, b: dict, alpha: float) -> dict:
    """(1 − α)·a + α·b for every float tensor (BatchNorm statistics too); integer buffers are a's."""
    from ladle.io.dtypes import to_numpy, to_torch
    from ladle.soup.mixing import weighted_sum

    def mix(x, y):
        return to_torch(weighted_sum([to_numpy(x), to_numpy(y)], [1.0 - alpha, alpha])).to(x.device)

    return {k: mix(a[k], b[k]) if a[k].is_floating_point() else a[k] for k in a}


def split_scores(context: Context, states: list[dict]) -> list[dict[str, tuple[float, float]]]:
    """{split: (accuracy %, mean NLL)} of each state on the clean and corrupted splits.

    With BatchNorm statistics averaged, `soups_per_pass` states go through the model in one batched forward
    (torch.func.functional_call under vmap over the stacked weights); recalibration needs one state at a time."""
    ev = context.evaluator
    splits = [context.clean, *context.corrupted]
    out = []
    text = hasattr(ev.splits[context.clean], "tokenization")  # HF text models: one state at a time, not vmapped
    step = 1 if ev.bn == "recalibrate" or text else max(1, context.settings.soups_per_pass)
    for start in range(0, len(states), step):
        group = states[start : start + step]
        if len(group) == 1:
            ev.prepare(group[0])
            out.extend([{s: _scores(ev.run(s)[None], ev.labels(s))[0] for s in splits}])
            continue
        logits = {s: _batched_logits(ev, group, s) for s in splits}
        out.extend({s: _scores(logits[s], ev.labels(s))[i] for s in splits} for i in range(len(group)))
    return out


def _batched_logits(ev, states: list[dict], split: str):
    """Logits (K, n, classes) of K states on a split, in one vmapped pass per batch of images."""
    import torch
    from ladle.models.hf_names import call_with_state

    model = ev.model.eval()
    stacked = {k: torch.stack([s[k] for s in states]).to(ev.device) for k in states[0]}

    def forward(weights, x):
        return call_with_state(model, weights, (x,))

    batched = torch.vmap(forward, in_dims=(0, None))
    parts = []
    with torch.inference_mode(), warnings.catch_warnings():
        # an op without a batching rule (e.g. adaptive pooling) falls back to a loop: slower, still right
        warnings.filterwarnings("ignore", message="There is a performance drop")
        for batch in ev.batches(ev.splits[split]):
            parts.append(batched(stacked, batch).float().cpu())
    ev.forward_passes += len(ev.splits[split]) * len(states)
    return torch.cat(parts, dim=1)


def _scores(logits, labels) -> list[tuple[float, float]]:
    """(accuracy %, mean NLL) per row of stacked logits (K, n, classes)."""
    import torch.nn.functional as F

    logits = logits.double()
    acc = (logits.argmax(-1) == labels).double().mean(-1) * 100
    nll = F.cross_entropy(logits.transpose(1, 2), labels.expand(len(logits), -1), reduction="none").mean(-1)
    return [(float(a), float(n)) for a, n in zip(acc, nll)]


def soup_task(task: dict) -> list[dict]:
    """Executor task: the soups (a, b, α) of a few pairs; returns their figures (plain data, in task order)."""
    import torch

    from ladle.soup.adapters import open_on_base
    from ladle.training.loop import torch_threads

    settings = GridSettings(**task["settings"])
    with torch_threads(settings.threads):
        context = build_context(settings)
        states: dict[str, dict] = {}
        for sha, path in task["paths"].items():
            ing = open_on_base(path, task.get("base"))
            states[sha] = {k: ing.get(k).clone() for k in ing.keys()}
        soups = [mix_pair(states[a], states[b], alpha) for a, b, alpha in task["soups"]]
        with torch.random.fork_rng(devices=[]):
            scores = split_scores(context, soups)
    rows = []
    for (a, b, alpha), score in zip(task["soups"], scores):
        clean = score[context.clean]
        corrupted = [score[s] for s in context.corrupted]
        rows.append({"a": a, "b": b, "alpha": alpha, "accuracy": clean[0], "loss": clean[1],
                     "corrupted_accuracy": _mean(c[0] for c in corrupted),
                     "corrupted_loss": _mean(c[1] for c in corrupted),
                     "extra": {"corrupted": {s: list(v) for s, v in zip(context.corrupted, corrupted)}} if corrupted else None})
    return rows


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else math.nan


# -- the grid ----------------------------------------------------------------------------------------------


@dataclass
class GridResult:
    grid: str
    models: int
    pairs: int
    soups: int  # soup rows in the store for this grid's alphas
    computed: int  # soups computed in this run (the rest were in the store)
    seconds: float
    notes: list[str] = field(default_factory=list)


def parse_alphas(text: str | None, alpha: float | None = None) -> list[float]:
    """`0.5`, `0.25,0.5,0.75` or START:STOP:STEP (inclusive of STOP), each in [0, 1]."""
    if text is None:
        values = [0.5 if alpha is None else float(alpha)]
    elif text.count(":") == 2:
        try:
            start, stop, step = (float(v) for v in text.split(":"))
        except ValueError:
            raise LadleError(f"alphas: expected START:STOP:STEP or a comma list, got '{text}'") from None
        if step <= 0 or stop < start:
            raise LadleError(f"alphas: '{text}' needs STEP > 0 and STOP ≥ START")
        count = int(math.floor((stop - start) / step + 1e-9)) + 1
        values = [round(start + i * step, 10) for i in range(count)]
    else:
        try:
            values = [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise LadleError(f"alphas: expected START:STOP:STEP or a comma list, got '{text}'") from None
    bad = [v for v in values if not 0.0 <= v <= 1.0]
    if not values or bad:
        raise LadleError(f"alphas: every α must lie in [0, 1], got {bad[0] if bad else 'none'}")
    return sorted(set(values))


def _log(message: str) -> None:
    print(f"grid: {message}", file=sys.stderr, flush=True)


def run_grid(checkpoints: list, settings: GridSettings, *, alphas: Iterable[float] = (0.5,), store=None, db=None,
             executor=None, names: list[str] | None = None, info: dict[str, dict] | None = None, base=None,
             collapse: float | None = None, similarity_examples: int = 2000, soups_per_task: int = SOUPS_PER_TASK,
             progress: bool = False) -> GridResult:
    """Soup every pair of `checkpoints` at every α, evaluate, and store it all (see the module docstring).

    names: labels for the models (default: the paths as given); info: per path, e.g. {"branch_epoch": 50,
    "variant": "v1"}, stored with the model; base: the stock, for the cosine of task vectors; collapse: the
    accuracy (%) below which a soup collapsed (default 5 × chance: 500 / classes)."""
    from ladle.evaluation.gain import collapse_threshold
    from ladle.execution import make_executor
    from ladle.results.store import opened

    started = time.time()
    alphas = sorted(set(float(a) for a in alphas))
    if len(checkpoints) < 2:
        raise LadleError("grid: needs at least two checkpoints")
    paths = [str(c) for c in checkpoints]
    names = list(names) if names else paths
    if len(set(paths)) != len(paths):
        raise LadleError("grid: given twice", file=next(p for p in paths if paths.count(p) > 1))
    if len(set(names)) != len(names):
        raise LadleError(f"grid: two models are named '{next(n for n in names if names.count(n) > 1)}'")
    own_executor = executor is None or isinstance(executor, str)
    executor = make_executor(executor)
    try:
        shas = _hashes(paths, base)
        _log(f"loading the model, {settings.data} and the corrupted sets")
        context = build_context(settings, executor=executor, progress=progress)
        _check_fit(paths, context, base)
        key = grid_key(context)
        threshold = collapse_threshold(context.num_classes) if collapse is None else float(collapse)
        with opened(store, db) as store:
            if store is None:
                raise LadleError("grid: a results store is needed (--db FILE)")
            store.put_grid(key, {"settings": context.settings.scored(), "alphas_asked": alphas, "collapse": threshold,
                                 "num_classes": context.num_classes, "splits": [context.clean, *context.corrupted]})
            own = evaluate_models(context, key, paths, names, shas, info or {}, store, progress, base=base)
            measure_pairs(context, key, paths, shas, store, base=base, examples=similarity_examples, progress=progress)
            computed = soup_pairs(context, key, paths, shas, own, alphas, threshold, store, executor,
                                  soups_per_task=soups_per_task, base=base)
            rows = [r for r in store.grid_soups(key) if r["alpha"] in set(alphas)]
    finally:
        if own_executor:
            executor.close()
    pairs = len(paths) * (len(paths) - 1) // 2
    return GridResult(key, len(paths), pairs, len(rows), computed, time.time() - started, list(context.notes))


def _check_fit(paths: list[str], context: Context, base=None) -> None:
    """Every checkpoint fits the model, from its header, before any work."""
    from ladle.models.specs import check_fit
    from ladle.soup.adapters import open_on_base

    own = {k: tuple(v.shape) for k, v in context.evaluator.model.state_dict().items()}
    for path in paths:
        ing = open_on_base(path, base)
        check_fit(own, {k: tuple(ing.info(k).shape) for k in ing.keys()}, path)


def _hashes(paths: list[str], base=None) -> list[str]:
    """Each checkpoint's content key; the same weights twice would be a pair of a model with itself."""
    from ladle.soup.adapters import open_on_base
    from ladle.studies.taste import content_key

    shas = []
    for path in paths:
        sha = content_key(open_on_base(path, base))
        if sha in shas:
            raise LadleError(f"grid: the same weights as {paths[shas.index(sha)]} (sha256 {sha[:12]}…)", file=path)
        shas.append(sha)
    return shas


def evaluate_models(context: Context, key: str, paths, names, shas, info: dict, store, progress: bool,
                    base=None) -> dict:
    """Each model's own figures, stored once per grid: {sha: row}. Logits come from (and go to) the store."""
    from ladle.evaluation.evaluator import metrics_from_logits
    from ladle.soup.adapters import open_on_base

    ev = context.evaluator
    ev.store = store
    stored = {r["model"]: r for r in store.grid_models(key)}
    splits = [context.clean, *context.corrupted]
    todo = [i for i, sha in enumerate(shas) if sha not in stored]
    if todo:
        _log(f"evaluating {len(todo)} model(s) on {len(splits)} split(s)")
    last = time.time()
    for done, i in enumerate(todo, 1):
        ing = open_on_base(paths[i], base)
        state = {k: ing.get(k) for k in ing.keys()}
        logits = ev.logits_many(paths[i], state, splits, key=shas[i], kind="grid model")
        figures = {s: metrics_from_logits(logits[s], ev.labels(s)) for s in splits}
        corrupted = [figures[s] for s in context.corrupted]
        extra = info.get(paths[i], {})
        store.put_grid_model(key, shas[i], name=names[i], path=paths[i], accuracy=figures[context.clean].accuracy * 100,
                             loss=figures[context.clean].nll,
                             corrupted_accuracy=_mean(m.accuracy * 100 for m in corrupted),
                             corrupted_loss=_mean(m.nll for m in corrupted), branch_epoch=extra.get("branch_epoch"),
                             variant=extra.get("variant"),
                             extra={k: v for k, v in extra.items() if k not in ("branch_epoch", "variant")} or None)
        if time.time() - last > 5 or done == len(todo):
            _log(f"models {done}/{len(todo)}")
            last = time.time()
    rows = {r["model"]: r for r in store.grid_models(key)}
    for i, sha in enumerate(shas):  # figures are the weights'; a rerun may give a model another name or label
        extra = info.get(paths[i], {})
        label = dict(name=names[i], path=paths[i], branch_epoch=extra.get("branch_epoch", rows[sha]["branch_epoch"]),
                     variant=extra.get("variant", rows[sha]["variant"]))
        if any(rows[sha][k] != v for k, v in label.items()):
            rows[sha].update(label)
            store.put_grid_model(key, sha, **{k: v for k, v in rows[sha].items() if k not in ("grid", "model", "created")})
    return rows


def measure_pairs(context: Context, key: str, paths, shas, store, *, base=None, examples: int = 2000,
                  progress: bool = False) -> None:
    """Similarity of every pair not yet measured: weights (L2, cosine; task-vector cosine with a base) and
    predictions on the clean split (symmetric KL, logit MSE, disagreement, linear CKA of logits and features)."""
    from ladle.analysis.predict import model_outputs, weight_grams
    from ladle.evaluation.similarity import pairwise_from_gram, prediction_measures

    have = {(r["a"], r["b"]) for r in store.grid_measures(key)}
    order = sorted(range(len(shas)), key=lambda i: shas[i])
    pending = [(i, j) for x, i in enumerate(order) for j in order[x + 1 :] if (shas[i], shas[j]) not in have]
    if not pending:
        return
    _log(f"measuring the similarity of {len(pending)} pair(s)")
    gram, task_gram = weight_grams(paths, context.evaluator.bn_keys, base=base)
    l2, cosine = pairwise_from_gram(gram)
    task_cosine = pairwise_from_gram(task_gram)[1] if task_gram is not None else None
    logits, features = model_outputs(context.evaluator, context.clean, paths, examples, base=base)
    rows, last = [], time.time()
    for n, (i, j) in enumerate(pending, 1):
        measures = {"l2": float(l2[i, j]), "cosine": float(cosine[i, j])}
        if task_cosine is not None:
            measures["task_cosine"] = float(task_cosine[i, j])
        measures.update(prediction_measures(logits[i], logits[j], features[i], features[j]))
        rows.append(dict(grid=key, a=shas[i], b=shas[j], measures=measures))
        if time.time() - last > 5:
            _log(f"similarity {n}/{len(pending)}")
            last = time.time()
    store.put_grid_measures(rows)


def soup_pairs(context: Context, key: str, paths, shas, own: dict, alphas, threshold: float, store, executor, *,
               soups_per_task: int = SOUPS_PER_TASK, base=None) -> int:
    """Soups not yet in the store, in tasks through the executor; gains and collapse added as rows land."""
    from ladle.evaluation.gain import accuracy_gain, loss_gain

    done = {(r["a"], r["b"], r["alpha"]) for r in store.grid_soups(key)}
    by_sha = dict(zip(shas, paths))
    ordered = sorted(shas)
    pending = [(a, b, alpha) for x, a in enumerate(ordered) for b in ordered[x + 1 :] for alpha in alphas
               if (a, b, alpha) not in done]
    if not pending:
        _log(f"all {len(done)} soups already in the store")
        return 0
    _log(f"souping {len(pending)} soup(s) ({len(done)} already in the store) on {getattr(executor, 'name', 'local')}")
    settings = asdict(context.settings)
    tasks = []
    for s in range(0, len(pending), soups_per_task):
        part = pending[s : s + soups_per_task]
        needed = sorted({sha for a, b, _ in part for sha in (a, b)})
        tasks.append({"settings": settings, "soups": part, "paths": {sha: by_sha[sha] for sha in needed},
                      "base": None if base is None else str(base)})
    started, last, finished = time.time(), time.time(), 0
    for result in executor.map(soup_task, tasks, desc="grid soups" if sys.stderr.isatty() else ""):
        rows = []
        for r in result:
            a, b = own[r["a"]], own[r["b"]]
            rows.append(dict(r, grid=key, gain=accuracy_gain(r["accuracy"], a["accuracy"], b["accuracy"]),
                             loss_gain=loss_gain(r["loss"], a["loss"], b["loss"]),
                             corrupted_gain=accuracy_gain(r["corrupted_accuracy"], a["corrupted_accuracy"],
                                                          b["corrupted_accuracy"]),
                             corrupted_loss_gain=loss_gain(r["corrupted_loss"], a["corrupted_loss"], b["corrupted_loss"]),
                             collapse=int(r["accuracy"] < threshold)))
        store.put_grid_soups(rows)
        finished += len(rows)
        if time.time() - last > 5 or finished == len(pending):
            rate = finished / max(time.time() - started, 1e-9)
            _log(f"soups {finished}/{len(pending)} ({rate:.1f}/s, {(len(pending) - finished) / max(rate, 1e-9):.0f} s left)")
            last = time.time()
    return len(pending)


def default_threads(executor) -> int:
    workers = getattr(executor, "workers", None) or os.cpu_count() or 1
    return max(1, (os.cpu_count() or 1) // workers)
