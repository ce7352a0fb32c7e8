"""Preflight: can these ingredients be souped, and how far apart are they?

`find_mismatches` looks only at headers (cheap; `cook` runs it before mixing). `check` reads
every tensor once, key by key, for non-finite values, content hashes and distances.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
from collections import Counter
from dataclasses import asdict, dataclass, field

import torch
from ladle.progress import progress_bar

from ladle.io.checkpoints import DTYPE_NAMES, Ingredient, is_float, open_ingredient, open_ingredients
from ladle.soup.mixing import pairwise_cosine

CHUNK = 1 << 22  # elements per ingredient per step of the distance pass


def select_keys(keys: list[str], include: list[str] | tuple = (), exclude: list[str] | tuple = ()) -> list[str]:
    """Keys matching any include glob (all if none) and no exclude glob, in their stored order."""
    return [
        k
        for k in keys
        if (not include or any(fnmatch.fnmatchcase(k, p) for p in include))
        and not any(fnmatch.fnmatchcase(k, p) for p in exclude)
    ]


@dataclass
class Mismatch:
    kind: str  # missing | extra | shape | dtype
    file: str
    key: str
    message: str


def find_mismatches(ingredients: list[Ingredient], keys: list[str], include=(), exclude=()) -> list[Mismatch]:
    """Every key/shape/dtype disagreement with the first ingredient, over the selected keys."""
    ref = ingredients[0]
    wanted = set(keys)
    out: list[Mismatch] = []
    for ing in ingredients[1:]:
        have = set(select_keys(ing.keys(), include, exclude))
        for key in keys:
            if key not in have:
                out.append(Mismatch("missing", ing.name, key, f"missing (present in {ref.name})"))
                continue
            a, b = ref.info(key), ing.info(key)
            if a.shape != b.shape:
                out.append(Mismatch("shape", ing.name, key, f"shape {list(b.shape)} differs from {list(a.shape)} in {ref.name}"))
            elif a.dtype != b.dtype:
                out.append(
                    Mismatch("dtype", ing.name, key, f"dtype {DTYPE_NAMES[b.dtype]} differs from {DTYPE_NAMES[a.dtype]} in {ref.name}")
                )
        for key in sorted(have - wanted):
            out.append(Mismatch("extra", ing.name, key, f"not present in {ref.name}"))
    return out


@dataclass
class CheckReport:
    ingredients: list[dict]
    base: dict | None
    selected_tensors: int
    problems: list[dict] = field(default_factory=list)  # block souping: exit 2
    warnings: list[dict] = field(default_factory=list)
    integer_buffers: list[dict] = field(default_factory=list)
    identical_groups: list[list[str]] = field(default_factory=list)
    task_vector_norms: list[float] | None = None
    task_vector_cosine: list[list[float]] | None = None
    relative_l2: list[list[float]] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"ok": self.ok, **asdict(self)}


def _describe(ing: Ingredient, keys: list[str]) -> dict:
    infos = [ing.info(k) for k in keys]
    return {
        "name": ing.name,
        "tensors": len(keys),
        "parameters": sum(i.numel for i in infos),
        "bytes": sum(i.nbytes for i in infos),
        "dtypes": dict(Counter(DTYPE_NAMES[i.dtype] for i in infos)),
        "notes": ing.notes,
    }


def _hash_tensor(h, key: str, t: torch.Tensor) -> None:
    """Feed a tensor's name, dtype, shape and bytes to a content hash."""
    h.update(f"{key}|{DTYPE_NAMES[t.dtype]}|{list(t.shape)}|".encode())
    h.update(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy())


def check(ingredients, base=None, include=(), exclude=(), progress: bool = False) -> CheckReport:
    """Preflight report over ingredients (paths, state dicts, modules or opened `Ingredient`s)."""
    return check_opened(open_ingredients(list(ingredients)), open_ingredient(base) if base is not None else None,
                        include, exclude, progress)


def check_opened(
    ingredients: list[Ingredient], base: Ingredient | None = None, include=(), exclude=(), progress: bool = False
) -> CheckReport:
    """Read every selected tensor once and report what would stop or spoil a soup."""
    keys = select_keys(ingredients[0].keys(), include, exclude)
    everyone = ingredients + ([base] if base is not None else [])
    report = CheckReport([_describe(i, select_keys(i.keys(), include, exclude)) for i in ingredients],
                         _describe(base, select_keys(base.keys(), include, exclude)) if base else None, len(keys))
    if not keys:
        report.problems.append({"kind": "empty", "file": ingredients[0].name, "key": None,
                                "message": "no tensors selected (check --include/--exclude)"})
    mismatches = find_mismatches(everyone, keys, include, exclude)
    report.problems += [asdict(m) for m in mismatches]
    bad = {m.key for m in mismatches}
    shared = [k for k in keys if k not in bad]

    n = len(ingredients)
    hashers = [hashlib.sha256() for _ in ingredients]
    gram = torch.zeros(n, n, dtype=torch.float64)  # of task vectors (with base) or of raw weights
    sqdist = torch.zeros(n, n, dtype=torch.float64)
    nonfinite: set[int] = set()  # their distances are unknown, not zero
    for key in progress_bar(shared, desc="check", unit="tensor", enabled=progress):
        info = ingredients[0].info(key)
        tensors = [ing.get(key) for ing in ingredients]
        for h, t in zip(hashers, tensors):
            _hash_tensor(h, key, t)
        if not is_float(info.dtype):
            differs = any(not torch.equal(tensors[0], t) for t in tensors[1:])
            report.integer_buffers.append({"key": key, "dtype": DTYPE_NAMES[info.dtype], "agree": not differs})
            continue
        for i, (ing, t) in enumerate(zip(ingredients, tensors)):
            if not torch.isfinite(t).all():
                nonfinite.add(i)
                report.warnings.append({"kind": "nonfinite", "file": ing.name, "key": key,
                                        "message": "holds NaN or Inf values"})
        base_t = base.get(key).reshape(-1) if base is not None else None
        flat = [t.reshape(-1) for t in tensors]
        for start in range(0, info.numel, CHUNK):
            block = torch.stack([f[start : start + CHUNK].double() for f in flat])
            if base_t is not None:
                block -= base_t[start : start + CHUNK].double()
            gram += block @ block.T
            sqdist += torch.cdist(block, block, compute_mode="donot_use_mm_for_euclid_dist") ** 2
        for ing in everyone:
            ing.release(key)
    # Keys with a problem take no part in distances, but they do in identity: without this, ingredients
    # that differ only where they mismatch (say, one tensor's dtype) would be reported identical.
    selected = [set(select_keys(ing.keys(), include, exclude)) for ing in ingredients]
    for key in sorted(bad):
        for h, ing, have in zip(hashers, ingredients, selected):
            if key not in have:
                h.update(f"{key}|absent|".encode())
                continue
            _hash_tensor(h, key, ing.get(key))
            ing.release(key)

    digests = [h.hexdigest() for h in hashers]
    for i, d in enumerate(digests):
        report.ingredients[i]["content_sha256"] = d
    groups: dict[str, list[str]] = {}
    for ing, d in zip(ingredients, digests):
        groups.setdefault(d, []).append(ing.name)
    report.identical_groups = [g for g in groups.values() if len(g) > 1]
    for g in report.identical_groups:
        report.warnings.append({"kind": "identical", "file": g[1], "key": None,
                                "message": f"identical in content to {g[0]} (counts twice in a soup)"})
    for b in report.integer_buffers:
        if not b["agree"]:
            report.warnings.append({"kind": "integer", "file": None, "key": b["key"],
                                    "message": "integer buffer differs between ingredients: never averaged, the first ingredient's is kept"})
    unknown = sorted(nonfinite)
    norms = gram.diagonal().clamp_min(0).sqrt()
    if base is not None:
        norms[unknown] = math.nan
        report.task_vector_norms = [round(float(v), 6) for v in norms]
        report.task_vector_cosine = _rounded(_mark_unknown(pairwise_cosine(gram), unknown))
    else:
        mean_norm = (norms[:, None] + norms[None, :]) / 2
        rel = torch.where(mean_norm > 0, sqdist.sqrt() / mean_norm.clamp_min(1e-300), torch.zeros_like(sqdist))
        report.relative_l2 = _rounded(_mark_unknown(rel, unknown))
    return report


def _mark_unknown(m: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """NaN (null in JSON) for ingredients with non-finite values, whose distances mean nothing."""
    m = m.clone()
    m[rows, :] = math.nan
    m[:, rows] = math.nan
    return m


def _rounded(m: torch.Tensor) -> list[list[float]]:
    return [[round(float(v), 6) for v in row] for row in m]


def format_report(report: CheckReport) -> str:
    """The human-readable check report."""
    lines = []
    rows = report.ingredients + ([dict(report.base, name=report.base["name"] + "  (base)")] if report.base else [])
    for i, r in enumerate(rows):
        dtypes = ", ".join(f"{k}×{v}" for k, v in r["dtypes"].items())
        tag = f"[{i}]" if i < len(report.ingredients) else "[base]"
        lines.append(f"{tag} {r['name']}: {r['tensors']} tensors, {r['parameters']:,} parameters, "
                     f"{r['bytes'] / 1e6:.1f} MB ({dtypes})")
        lines += [f"      note: {note}" for note in r["notes"]]
    lines.append(f"selected tensors: {report.selected_tensors}")
    if report.integer_buffers:
        agree = sum(b["agree"] for b in report.integer_buffers)
        lines.append(f"integer buffers: {len(report.integer_buffers)} (never averaged; {agree} agree across ingredients)")
    if report.task_vector_norms is not None:
        lines.append("task-vector norms ‖θᵢ − θ_base‖: " + ", ".join(f"[{i}] {v:.4g}" for i, v in enumerate(report.task_vector_norms)))
        lines.append("task-vector cosine similarity:")
        lines += _matrix(report.task_vector_cosine)
    if report.relative_l2 is not None and len(report.ingredients) > 1:
        lines.append("relative L2 distance ‖θᵢ − θⱼ‖ / mean(‖θᵢ‖, ‖θⱼ‖):")
        lines += _matrix(report.relative_l2)
    for w in report.warnings:
        lines.append("warning: " + _where(w) + w["message"])
    for p in report.problems:
        lines.append("problem: " + _where(p) + p["message"])
    lines.append("OK: these ingredients can be souped" if report.ok else
                 f"NOT SOUPABLE: {len(report.problems)} problem(s)")
    return "\n".join(lines)


def _where(item: dict) -> str:
    parts = [p for p in (item.get("file"), f"tensor '{item['key']}'" if item.get("key") else None) if p]
    return ": ".join(parts) + ": " if parts else ""


def _matrix(m: list[list[float]]) -> list[str]:
    head = "       " + "".join(f"{f'[{j}]':>9}" for j in range(len(m)))
    return [head] + [f"  [{i}]  " + "".join(f"{v:9.4f}" for v in row) for i, row in enumerate(m)]
