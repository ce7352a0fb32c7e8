"""`ladle check` on LoRA adapters: ranks, scalings and targets per adapter, what they disagree on, and how alike
their updates are.

The whole update of an adapter is every module's ΔW = s·B·A, concatenated. Its norm and the pairwise cosines come
from the factors, ⟨BᵢAᵢ, BⱼAⱼ⟩ = tr((BᵢᵀBⱼ)(AⱼAᵢᵀ)) summed over modules (r × r products, no ΔW formed); a module one
adapter lacks is a zero update there: it adds nothing to the inner products, its norm still counts.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ladle.errors import LadleError
from ladle.io.checkpoints import open_ingredient
from ladle.io.lora import ADAPTER_CONFIG, LoraAdapter, is_adapter
from ladle.progress import progress_bar
from ladle.soup import lowrank
from ladle.soup.check_parts import describe, mark_unknown, matrix, rounded, select_keys, verdict_lines
from ladle.soup.mixing import pairwise_cosine



@dataclass
class AdapterCheckReport:
    """`check`'s report for adapters, in `CheckReport`'s shape: `selected_tensors` counts the modules any adapter
    adapts, each ingredient has an `adapter` entry, `module_cosine[key]` is null where an adapter lacks the module."""

    ingredients: list[dict]
    base: dict | None
    selected_tensors: int
    problems: list[dict] = field(default_factory=list)  # block souping: exit 2
    warnings: list[dict] = field(default_factory=list)
    update_norms: list[float] | None = None
    update_cosine: list[list[float]] | None = None
    module_cosine: dict[str, list[list[float]]] = field(default_factory=dict)
    missing_modules: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"ok": self.ok, **asdict(self)}


def is_lora(source) -> bool:
    return isinstance(source, LoraAdapter) or is_adapter(source)


def all_adapters(ingredients: list, base=None) -> bool:
    """True when every ingredient is a LoRA adapter, False when none is; adapters among full checkpoints (or an
    adapter as the base) are refused in one line."""
    lora = [is_lora(s) for s in ingredients]
    if base is not None and is_lora(base):
        raise LadleError("--base is a LoRA adapter: the base is the full model the adapters apply to", file=_name(base))
    if any(lora) and not all(lora):
        full = _name(ingredients[lora.index(False)])
        raise LadleError(f"a LoRA adapter checked with a full checkpoint ({full}): check them separately, "
                         "`ladle check ADAPTER…` and `ladle check CKPT… --base BASE`",
                         file=_name(ingredients[lora.index(True)]))
    return bool(lora) and all(lora)


def check_adapters(sources, base=None, include=(), exclude=(), progress: bool = False) -> AdapterCheckReport:
    """Preflight of LoRA adapters (folders or `LoraAdapter`s), with the base they apply to if given."""
    from ladle.soup.adapters import open_updates

    adapters = [s if isinstance(s, LoraAdapter) else open_updates(s, base).adapter for s in sources]
    base = open_ingredient(base) if base is not None else None
    chosen = [select_keys(a.keys(), include, exclude) for a in adapters]
    keys = list(dict.fromkeys(k for c in chosen for k in c))
    modules = [k for k in keys if any(k in a.modules for a in adapters)]
    report = AdapterCheckReport([_describe_adapter(a, c) for a, c in zip(adapters, chosen)],
                                describe(base, select_keys(base.keys(), include, exclude)) if base else None,
                                len(modules))
    if not modules:
        report.problems.append({"kind": "empty", "file": adapters[0].name, "key": None,
                                "message": "no LoRA module selected (check --include/--exclude)"})
    bad = _shape_problems(adapters, keys, base, report.problems)
    names = dict.fromkeys(a.base_name for a in adapters)
    if len(names) > 1 and base is None:
        first = adapters[0]
        for a in adapters[1:]:
            if a.base_name != first.base_name:
                report.warnings.append({
                    "kind": "base", "file": str(a.path / ADAPTER_CONFIG), "key": None,
                    "message": f"base_model_name_or_path '{a.base_name}' differs from {first.name}'s "
                               f"'{first.base_name}': a soup of these adapters needs --base (the model they apply to)"})
    for a in adapters:
        lacking = [k for k in modules if k not in a.modules and k not in a.full]
        if lacking:
            report.missing_modules[a.name] = lacking
            report.warnings.append({"kind": "missing_modules", "file": a.name, "key": None,
                                    "message": f"does not adapt {len(lacking)} of the {len(modules)} modules the others "
                                               f"adapt (zero updates in a soup): {_compact(lacking)}"})

    n = len(adapters)
    gram, unknown = np.zeros((n, n)), set()
    for key in progress_bar([k for k in modules if k not in bad], desc="check", unit="module", enabled=progress):
        factors = [_oriented(a, key) if key in a.modules else None for a in adapters]
        g = lowrank.factor_gram(factors)
        gram += g
        absent = [i for i, f in enumerate(factors) if f is None]
        for i in range(n):
            if i not in absent and not np.isfinite(g[i, i]):
                unknown.add(i)
                report.warnings.append({"kind": "nonfinite", "file": adapters[i].name, "key": key,
                                        "message": "holds NaN or Inf values"})
        report.module_cosine[key] = rounded(mark_unknown(pairwise_cosine(g), absent))
    norms = np.sqrt(np.maximum(np.diagonal(gram), 0))
    norms[sorted(unknown)] = math.nan
    report.update_norms = [round(float(v), 6) for v in norms]
    report.update_cosine = rounded(mark_unknown(pairwise_cosine(gram), sorted(unknown)))
    return report


def _oriented(adapter: LoraAdapter, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(A, B) whose product is ΔW in the base's layout (a transposed module's (BA)ᵀ = AᵀBᵀ), flattened to 2-D."""
    a, b = adapter.factors(key)
    for stored in (adapter.modules[key].a_key, adapter.modules[key].b_key):
        adapter.weights.release(stored)
    return (b.T, a.T) if adapter.modules[key].transposed else (a, b)


def _shape_problems(adapters: list[LoraAdapter], keys: list[str], base, problems: list[dict]) -> set[str]:
    """Every module (or tensor saved whole) whose shape differs between adapters, or from the base's."""
    bad, seen = set(), {}
    in_base = set(base.keys()) if base is not None else set()
    for a in adapters:
        for key in keys:
            shape = a.modules[key].shape if key in a.modules else (
                tuple(a.weights.info(a.full[key]).shape) if key in a.full else None)
            if shape is None:
                continue
            if base is not None:
                if key not in in_base:
                    if key not in bad:
                        problems.append({"kind": "missing", "file": base.name, "key": key,
                                         "message": f"missing (adapted by {a.name})"})
                    bad.add(key)
                    continue
                ref, where = tuple(base.info(key).shape), base.name
            else:
                ref, where = seen.setdefault(key, (shape, a.name))
            if shape != ref:
                hint = " (transposed: fan_in_fan_out differs)" if shape == ref[::-1] else ""
                problems.append({"kind": "shape", "file": a.name, "key": key,
                                 "message": f"update shape {list(shape)} differs from {list(ref)} in {where}{hint}"})
                bad.add(key)
    return bad


def _describe_adapter(a: LoraAdapter, keys: list[str]) -> dict:
    entry = {**describe(a.weights, a.weights.keys()), "name": a.name, "notes": a.notes}
    mods = [a.modules[k] for k in keys if k in a.modules]
    r, alpha, rslora = a.config["r"], a.config["lora_alpha"], bool(a.config.get("use_rslora"))
    entry["adapter"] = {
        "modules": len(mods),
        "kinds": dict(Counter(m.kind for m in mods)),
        "ranks": sorted({m.rank for m in mods}),
        "scalings": sorted({round(m.scaling, 6) for m in mods}),
        "r": r, "lora_alpha": alpha, "use_rslora": rslora,
        "scaling": round(alpha / math.sqrt(r) if rslora else alpha / r, 6),
        "per_module": {m.weight_key: {"rank": m.rank, "alpha": m.alpha, "scaling": round(m.scaling, 6)}
                       for m in mods if (m.rank, m.alpha) != (r, alpha)},  # from rank_pattern / alpha_pattern
        "target_modules": _sorted(a.config.get("target_modules")),  # as configured (a list, a regex, all-linear)
        "adapted": sorted({m.name.rsplit(".", 1)[-1] for m in mods}),
        "base_model_name_or_path": a.base_name,
        "saved_whole": [k for k in keys if k in a.full],
    }
    return entry


def _compact(keys: list[str], limit: int = 6) -> str:
    """Keys with their layer numbers folded: `model.layers.*.self_attn.k_proj.weight (×2)`."""
    groups = Counter(_fold(k) for k in keys)
    shown = [f"{g} (×{c})" if c > 1 else g for g, c in list(groups.items())[:limit]]
    return ", ".join(shown) + (f", … ({len(groups) - limit} more)" if len(groups) > limit else "")


def _sorted(value):
    return sorted(value) if isinstance(value, list) else value


def _fold(key: str) -> str:
    return re.sub(r"\.\d+\.", ".*.", key)


def _name(source) -> str:
    return getattr(source, "name", None) or (str(source) if isinstance(source, (str, Path)) else type(source).__name__)


def format_adapter_report(report: AdapterCheckReport) -> str:
    lines = []
    for i, r in enumerate(report.ingredients):
        ad = r["adapter"]
        rule = "alpha/√r, rslora" if ad["use_rslora"] else "alpha/r"
        lines.append(f"[{i}] {r['name']}: LoRA adapter, {ad['modules']} modules, {r['parameters']:,} parameters, "
                     f"{r['bytes'] / 1e6:.1f} MB ({', '.join(f'{k}×{v}' for k, v in r['dtypes'].items())})")
        lines.append(f"      r {ad['r']}, lora_alpha {ad['lora_alpha']:g}, scaling {ad['scaling']:.4g} ({rule}); "
                     f"modules: {', '.join(ad['adapted'])}; base: {ad['base_model_name_or_path']}")
        if ad["per_module"]:
            patterns = Counter(f"{_fold(k)}: r {v['rank']}, alpha {v['alpha']:g}, "
                               f"scaling {v['scaling']:.4g}" for k, v in ad["per_module"].items())
            lines += [f"      rank/alpha pattern: {p}" + (f" (×{c})" if c > 1 else "") for p, c in patterns.items()]
        if ad["saved_whole"]:
            lines.append(f"      saved whole (modules_to_save): {_compact(ad['saved_whole'])}")
        lines += [f"      note: {note}" for note in r["notes"]]
    if report.base:
        b = report.base
        lines.append(f"[base] {b['name']}: {b['tensors']} tensors, {b['parameters']:,} parameters")
    lines.append(f"adapted modules: {report.selected_tensors} (by any adapter)")
    if report.selected_tensors:
        lines.append("update norms ‖ΔWᵢ‖_F (all modules): " +
                     ", ".join(f"[{i}] {v:.4g}" for i, v in enumerate(report.update_norms)))
        if len(report.ingredients) > 1:
            lines.append("update cosine similarity ⟨ΔWᵢ, ΔWⱼ⟩ / ‖ΔWᵢ‖‖ΔWⱼ‖ (all modules, from the factors):")
            lines += matrix(report.update_cosine)
    lines += verdict_lines(report, "adapters")
    return "\n".join(lines)
