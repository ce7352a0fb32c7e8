"""`ladle taste`: soups beside their ingredients, the best single one and the output ensemble.

Every checkpoint is evaluated once per split (logits cached); a checkpoint with a ladle manifest is a
soup, the others are ingredients. The table reports accuracy / NLL / ECE per split and the soup gain,
acc(soup) − max acc(ingredients), with the BatchNorm policies side by side when asked. With corruption
suites, every clean split also gets its corrupted copies (built once, cached) and a robustness table:
mean corrupted accuracy, soup gain on it, mCE, relative mCE and the accuracy the shift costs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ladle.errors import LadleError
from ladle.io.checkpoints import open_ingredient
from ladle.shifts.corruptions import CorruptionCache, SuiteSpec, corrupted_sets, resize_note
from ladle.evaluation.evaluator import Metrics
from ladle.evaluation.tasting import Tasting
from ladle.models.specs import ModelSpec
from ladle.spec import BN_POLICIES, TastingSpec
from ladle.evaluation.gain import best_single, soup_gain
from ladle.evaluation.robustness import ModelShift, ShiftReport, alexnet_baseline


@dataclass
class Row:
    name: str
    kind: str  # ingredient | soup | ensemble | best single
    metrics: dict[str, Metrics] = field(default_factory=dict)
    bn: str = ""

    def accuracy(self, split: str) -> float:
        m = self.metrics.get(split)
        return m.accuracy if m is not None and m.accuracy is not None else math.nan

    def value(self, split: str) -> float:
        """The split's headline figure, higher is better: accuracy, or minus the NLL of a language model's corpus."""
        return self.metrics[split].value if split in self.metrics else math.nan


@dataclass
class TasteReport:
    splits: list[str]
    rows: list[Row]
    shifts: list[ShiftReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def ingredients(self) -> list[Row]:
        return [r for r in self.rows if r.kind == "ingredient"]

    def headline(self, split: str) -> str:
        """'accuracy'; 'score' for a user's --metric; 'nll' for a language model's corpus (lower is better)."""
        found = next((r.metrics[split] for r in self.rows if split in r.metrics), None)
        if found is not None and found.score is not None:
            return "score"
        return "nll" if found is not None and found.accuracy is None else "accuracy"

    def best_single(self, split: str) -> float:
        """The best ingredient's headline figure (its accuracy, or its NLL on a corpus)."""
        best = best_single(r.value(split) for r in self.ingredients())
        return -best if self.headline(split) == "nll" else best

    def gain(self, row: Row, split: str) -> float:
        """Soup gain: accuracy − the best ingredient's; on a corpus, the best ingredient's NLL − the row's."""
        return soup_gain(row.value(split), (r.value(split) for r in self.ingredients()))

    def to_dict(self) -> dict:
        return {"splits": self.splits, "best_single": {s: self.best_single(s) for s in self.splits},
                "headline": {s: self.headline(s) for s in self.splits},
                "rows": [{"name": r.name, "kind": r.kind, "bn": r.bn,
                          "metrics": {s: r.metrics[s].as_dict() for s in self.splits if s in r.metrics},
                          "soup_gain": {s: self.gain(r, s) for s in self.splits} if r.kind != "ingredient" else None}
                         for r in self.rows],
                "shifts": [shift.to_dict() for shift in self.shifts]}

    def format(self, digits: int = 2) -> str:
        headline = {s: self.headline(s) for s in self.splits}
        nll = {s: headline[s] == "nll" for s in self.splits}  # a corpus: NLL per token (nats), gain in nats
        raw = {s: headline[s] != "accuracy" for s in self.splits}  # NLLs and user scores are shown as they are
        width = {s: max(14, len(s) + 6) for s in self.splits}
        label = {"accuracy": " acc", "nll": " nll", "score": " score"}
        head = f"{'model':<34}{'kind':<12}" + "".join(f"{s + label[headline[s]]:>{width[s] + 2}}{'gain':>8}"
                                                       for s in self.splits)
        lines = [head, "-" * len(head)]
        for r in self.rows:
            cells = ""
            for s in self.splits:
                scale = 1 if raw[s] else 100
                figure = scale * (-r.value(s) if nll[s] else r.value(s))
                g = self.gain(r, s)
                gain = "" if r.kind == "ingredient" or g != g else f"{scale * g:+.{digits}f}"  # none without ingredients
                cells += (f"{figure:>{width[s] + 2}.{digits}f}" if figure == figure else f"{'-':>{width[s] + 2}}") + f"{gain:>8}"
            label = r.name if len(r.name) <= 33 else "…" + r.name[-32:]
            lines.append(f"{label:<34}{(r.kind + (' ' + r.bn if r.bn else ''))[:11]:<12}{cells}")
        if self.ingredients():
            lines.append(f"{'best single ingredient':<34}{'':<12}" +
                         "".join(f"{(1 if raw[s] else 100) * self.best_single(s):>{width[s] + 2}.{digits}f}{'':>8}"
                                 for s in self.splits))
        return "\n\n".join(["\n".join(lines)] + [shift.format() for shift in self.shifts])


def is_soup(path) -> bool:
    from ladle.io.manifest import read_manifest

    try:
        manifest = read_manifest(path)
    except Exception:  # noqa: BLE001  not a ladle file: an ingredient
        return False
    return bool(manifest and manifest.get("recipe"))


def taste(checkpoints: list, tasting: Tasting, *, bn: str | list[str] = "average", uniform: bool = True,
          progress: bool = False, corruptions: list[SuiteSpec] = (), corruption_seed: int = 0,
          cache: CorruptionCache | None = None, mce_baseline: str = "best", executor=None, store=None,
          knn_bank=None, base=None) -> TasteReport:
    """Evaluate checkpoints, the uniform soup of the ingredients and their ensemble on every split of a resolved
    tasting spec, and on the corrupted copies of every split that the corruption suites make. With `knn_bank`
    (labelled images), every model is read out by weighted kNN against its embeddings of the bank instead of its head.
    Every evaluation is stored under the key `cook` uses (ladle.results.store.evaluation_key), so logits computed by
    one are reused by the other."""
    from ladle.io.hashing import file_hashes
    from ladle.io.hf import compare_tokenizers, source_directory
    from ladle.results.store import evaluation_key
    from ladle.soup.cook import cook

    # models that read different token ids are refused before anything is evaluated
    compare_tokenizers([d for d in map(source_directory, [tasting.model.spec, *checkpoints]) if d is not None])
    policies = list(BN_POLICIES) if bn == "all" else ([bn] if isinstance(bn, str) else list(bn))
    if mce_baseline == "alexnet":  # fail before any work if the suites have no published AlexNet errors
        for suite in corruptions:
            alexnet_baseline(suite.cells())
    data = tasting.splits
    shifted, grids = shifted_splits(data, corruptions, seed=corruption_seed, cache=cache, progress=progress,
                                    executor=executor)
    every = dict(data) | shifted
    if knn_bank is not None:
        if policies != ["average"]:
            raise LadleError("taste: --readout knn reads soups with averaged BatchNorm statistics only (--bn average)")
        rows = knn_rows(checkpoints, tasting.model, every, knn_bank, uniform=uniform, device=tasting.device,
                        batch_size=tasting.spec.eval_batch_size)
        return _report(data, rows, grids, corruptions, shifted, mce_baseline)
    net = tasting.model.build()  # one model object for every BatchNorm policy
    evaluators = {p: tasting.evaluator(bn=p, progress=progress, store=store, splits=every, net=net) for p in policies}
    base_ev = evaluators[policies[0]]
    model_id = tasting.model_id

    def key(files: list[list[str]], weights: list[float], tensors: list[str]) -> str | None:
        return evaluation_key(model_id, tensors, list(zip(files, weights))) if all(files) else None

    # Memory: ingredients stay lazily opened files (their tensors are read while a model loads them, and their
    # pages dropped after), so at most the uniform soup and the model's own copy are held, whatever N.
    rows: list[Row] = []
    ingredients, keys, hashes = [], {}, {}
    soups = []
    from ladle.soup.adapters import open_on_base

    for ckpt in checkpoints:
        ing = open_on_base(ckpt, base)
        if is_soup(ckpt):
            soups.append((ing.name, ing))
            keys[ing.name] = key([file_hashes(ing.files)], [1.0], list(ing.keys()))
            continue
        hashes[ing.name] = file_hashes(ing.files)
        keys[ing.name] = key([hashes[ing.name]], [1.0], list(ing.keys()))
        base_ev.logits_many(ing.name, _lazy_state(ing), list(every), key=keys[ing.name], kind="ingredient")
        _release(ing)
        ingredients.append(ing)
        rows.append(Row(ing.name, "ingredient", {s: base_ev.score(ing.name, None, s) for s in every}))
    ingredient_names = [ing.name for ing in ingredients]
    first_state = _lazy_state(ingredients[0]) if ingredients else None  # only its BatchNorm tensors are read
    if uniform and len(ingredients) > 1:
        n = len(ingredients)
        keys["uniform soup"] = key([hashes[i] for i in ingredient_names], [1 / n] * n, list(ingredients[0].keys()))
        from ladle.soup.adapters import UpdatedModel, updated_soup_state

        adapted = [isinstance(i, UpdatedModel) for i in ingredients]
        if all(adapted):  # adapters: base + mean update, the base's other tensors as they are
            soups.insert(0, ("uniform soup", updated_soup_state(ingredients, [1 / n] * n, list(ingredients[0].keys()))))
        elif any(adapted):
            raise LadleError("taste: LoRA adapters and full checkpoints have no uniform soup together (cook one with "
                             "--base, or pass --no-uniform)")
        else:
            soups.insert(0, ("uniform soup", cook("uniform", ingredients).state_dict))  # streamed: one model in memory
    for name, soup in soups:
        state = soup if isinstance(soup, dict) else _lazy_state(soup)
        for p, ev in evaluators.items():
            ev.logits_many(f"{name}@{p}", state, list(every), first=first_state,
                           key=None if p == "first" else keys[name], kind="soup")
            rows.append(Row(name, "soup", {s: ev.score(f"{name}@{p}", None, s) for s in every}, bn=p if len(policies) > 1 else ""))
        if not isinstance(soup, dict):
            _release(soup)
        del state
    if len(ingredient_names) > 1 and base_ev.metric is None:  # a corpus has no output distribution: no ensemble there
        rows.append(Row(f"ensemble of {len(ingredient_names)}", "ensemble",
                        {s: base_ev.ensemble(ingredient_names, s) for s in every
                         if getattr(every[s], "task", None) != "lm"}))
    return _report(data, rows, grids, corruptions, shifted, mce_baseline)


def _report(data, rows, grids, corruptions, shifted, mce_baseline) -> TasteReport:
    shifts = [ShiftReport(clean, suite, [ModelShift(r.name + (f" (bn {r.bn})" if r.bn else ""), r.kind, r.accuracy(clean),
                                                    {cell: r.accuracy(split) for cell, split in cells.items()})
                                         for r in rows], mce_baseline)
              for (clean, suite), cells in grids.items()]
    for shift in shifts:
        shift.baseline_model()  # an unknown --mce-baseline fails here, before anything is written
    note = resize_note(shifted.values())
    return TasteReport(list(data), rows, shifts, [note] if note else [])


def knn_rows(checkpoints: list, spec: ModelSpec, splits: dict, bank, *, uniform: bool = True,
             device="cpu", batch_size: int | None = None) -> list[Row]:
    """Rows read out by weighted kNN (ladle.evaluation.knn): encoders need no head, so encoder-only ingredients
    and soups are tasted as they are; the ensemble averages the ingredients' kNN class probabilities."""
    import glob

    import torch

    from ladle.evaluation.evaluator import metrics_from_logits
    from ladle.evaluation.knn import embeddings, knn_scores
    from ladle.models.encoder import head_keys
    from ladle.models.specs import check_fit
    from ladle.soup.cook import cook

    model = spec.build().to(device)
    heads = set(head_keys(model))
    encoder = {k: tuple(v.shape) for k, v in model.state_dict().items() if k not in heads}

    def probabilities(name: str, state: dict) -> dict[str, torch.Tensor]:
        check_fit(encoder, {k: tuple(v.shape) for k, v in state.items()}, name)  # states hold no head keys
        model.load_state_dict(state, strict=False)
        bank_embeddings = embeddings(model, bank, spec.mean, spec.std, device=device, batch_size=batch_size)
        out = {}
        for split, data in splits.items():
            scores = knn_scores(bank_embeddings, bank.y, embeddings(model, data, spec.mean, spec.std, device=device,
                                                                    batch_size=batch_size), bank.num_classes)
            out[split] = scores / scores.sum(1, keepdim=True)
        return out

    def row(name: str, kind: str, probs: dict) -> Row:
        return Row(name, kind, {s: metrics_from_logits(p.clamp_min(1e-12).log(), splits[s].y) for s, p in probs.items()})

    def encoder_of(ing) -> dict:
        return {k: ing.get(k) for k in ing.keys() if k not in heads}  # lazily read; heads are not read

    rows, ingredients, ingredient_probs, soups = [], [], [], []
    for ckpt in checkpoints:
        ing = open_ingredient(ckpt)
        if is_soup(ckpt):
            soups.append((ing.name, ing))
            continue
        ingredients.append(ing)
        ingredient_probs.append(probabilities(ing.name, encoder_of(ing)))
        _release(ing)
        rows.append(row(ing.name, "ingredient", ingredient_probs[-1]))
    if uniform and len(ingredients) > 1:
        soup = cook("uniform", ingredients, exclude=[glob.escape(k) for k in sorted(heads)]).state_dict
        soups.insert(0, ("uniform soup", soup))
    for name, soup in soups:
        rows.append(row(name, "soup", probabilities(name, soup if isinstance(soup, dict) else encoder_of(soup))))
        if not isinstance(soup, dict):
            _release(soup)
    if len(ingredient_probs) > 1:
        rows.append(row(f"ensemble of {len(ingredient_probs)}", "ensemble",
                        {s: torch.stack([p[s] for p in ingredient_probs]).mean(0) for s in splits}))
    return rows


def _lazy_state(ing) -> dict:
    """The checkpoint's tensors as views of its file: nothing is read until a model loads them."""
    return {k: ing.get(k) for k in ing.keys()}


def _release(ing) -> None:
    """Drop the pages of a checkpoint that has been read, so tasting N of them holds none of them afterwards."""
    for k in ing.keys():
        ing.release(k)


def content_key(ing) -> str | None:
    """A checkpoint's content hash (None for an in-memory state)."""
    from ladle.io.hashing import checkpoint_sha256

    return checkpoint_sha256(ing.files) if ing.files else None


def shifted_splits(data: dict, corruptions: list[SuiteSpec], *, seed: int = 0,
                   cache: CorruptionCache | None = None, progress: bool = False, executor=None):
    """Corrupted copies of every split, named `SPLIT ~ FAMILY/CORRUPTION/SEVERITY`, and, per (split, suite),
    the map from each (corruption, severity) cell to its split name."""
    from ladle.data import StreamSet

    shifted, grids = {}, {}
    for clean, clean_data in data.items():
        if corruptions and isinstance(clean_data, StreamSet):  # corrupted from the uint8 images at the model's size
            clean_data = clean_data.cached(progress=progress)
        for spec in corruptions:
            cells = {}
            for (name, severity), part in corrupted_sets(clean_data, spec, seed=seed, cache=cache, progress=progress,
                                                           executor=executor).items():
                split = f"{clean} ~ {spec.family}/{name}/{severity}"
                shifted[split], cells[(name, severity)] = part, split
            grids[(clean, spec.suite)] = cells
    return shifted, grids


def write_report(report: TasteReport, folder: Path) -> None:
    """JSON and markdown of a taste report; per corruption suite, CSVs, a heatmap per model and severity curves."""
    import re

    from ladle.results.plots import plot_corruption_heatmaps, plot_severity_curves
    from ladle.results.text import strict_json
    from ladle.io.writer import write_text_atomic

    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "taste.json", strict_json(report.to_dict()) + "\n")
    write_text_atomic(folder / "taste.md", "```\n" + report.format() + "\n```\n")
    for shift in report.shifts:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{shift.suite}-{shift.data}").strip("_")
        summary, cells = shift.to_csv()
        write_text_atomic(folder / f"{stem}-summary.csv", summary)
        write_text_atomic(folder / f"{stem}-cells.csv", cells)
        write_text_atomic(folder / f"{stem}.json", strict_json(shift.to_dict()) + "\n")
        plot_corruption_heatmaps(shift.models, folder / f"{stem}-heatmaps.png", f"{shift.suite} on {shift.data}")
        plot_severity_curves(shift, folder / f"{stem}-severity.png")


def taste_specs(checkpoints: list, *, tasting: TastingSpec | None = None, bn: str = None, uniform: bool = True,
                corruptions: list[str] = (), severities: str = "1-5", corruption_seed: int = 0,
                corruption_cache: str | None = None, mce_baseline: str = "best", executor=None, store=None, db=None,
                progress: bool = False, readout: str = "head", knn_bank: str | None = None, base=None, **fields) -> TasteReport:
    """`taste` from a tasting spec (or its fields: model=…, data=[…], image_size=…) — what `ladle taste` calls:
    model and data built once, corruption suites parsed. `bn` may also be `all` (every policy side by side).
    Evaluations go to the results store (`store`, or the file `db`, opened once the input is known to be good; by
    default ladle's persistent logit cache, shared with `cook`)."""
    from ladle.evaluation.tasting import resolve
    from ladle.results.store import DeferredStore, opened
    from ladle.shifts.corruptions import default_cache_dir, parse_severities, parse_suite

    if tasting is None:
        tasting = TastingSpec.from_fields(fields | ({"bn": bn} if bn and bn != "all" else {}))
    bn = bn or tasting.bn
    tasting = tasting.with_default_model([base, *checkpoints] if base is not None else checkpoints)
    if not tasting.model:
        raise LadleError("taste: --model is required (it defaults to the first checkpoint only when that is a "
                         "Hugging Face folder)")
    if not tasting.data:
        raise LadleError("taste: --data is required")
    parsed = parse_severities(severities)
    suites = [parse_suite(text, parsed) for text in corruptions or ()]
    if mce_baseline == "alexnet":  # fail before any work if the suites have no published AlexNet errors
        for suite in suites:
            alexnet_baseline(suite.cells())
    resolved = resolve(tasting, "test", recalibrate=bn in ("recalibrate", "all"), progress=progress)
    bank = None
    if readout == "knn" and base is not None:
        raise LadleError("taste: --readout knn reads full checkpoints; LoRA adapters (--base) are read by their head")
    if readout == "knn":  # the bank: labelled images, by default the train split of the first data source
        from ladle.data import parse_spec

        bank_spec = knn_bank or f"{parse_spec(tasting.data[0])[0]}:train"
        bank = next(iter(resolve(tasting.replace(data=[bank_spec]), "train", cache_data=True).splits.values()))
    elif readout != "head":
        raise LadleError(f"taste: --readout must be head or knn, got '{readout}'")
    cache = CorruptionCache(Path(corruption_cache) if corruption_cache else default_cache_dir())
    if store is None and db is None:  # the persistent logit cache `cook` writes to: what it tasted is not redone
        from ladle.evaluation.tasting import logit_cache

        store = logit_cache()
    with opened(store) if db is None else DeferredStore(db) as store:  # no store file before there is a result
        report = taste(checkpoints, resolved, bn=bn, uniform=uniform, progress=progress, corruptions=suites,
                       corruption_seed=corruption_seed, cache=cache, mce_baseline=mce_baseline, executor=executor,
                       store=store, knn_bank=bank, base=base)
    if cache.damaged:
        report.notes.append(f"rebuilt {len(cache.damaged)} damaged corrupted set(s) in {cache.folder}")
    return report
