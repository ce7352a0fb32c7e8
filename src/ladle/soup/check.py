"""Preflight: can these ingredients be souped, and how far apart are they?

`find_mismatches` looks only at headers (cheap; `cook` runs it before mixing). `check` reads
every tensor once, key by key and block by block, for non-finite values, bitwise identity and distances.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np

from ladle.progress import progress_bar
from ladle.io.checkpoints import Ingredient, open_ingredient, open_ingredients
from ladle.io.dtypes import is_float
from ladle.soup.check_parts import describe, mark_unknown, matrix, rounded, select_keys, verdict_lines
from ladle.soup.mixing import pairwise_cosine

CHUNK = 1 << 17  # elements per ingredient per step of the distance pass: float64 blocks that stay in cache
WORKERS = min(2, os.cpu_count() or 1)  # threads of the distance pass (numpy lets go of the GIL): chunk i goes to i % 2


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
                    Mismatch("dtype", ing.name, key, f"dtype {b.dtype} differs from {a.dtype} in {ref.name}")
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


def check(ingredients, base=None, include=(), exclude=(), progress: bool = False):
    """Preflight report over ingredients (paths, state dicts, modules or opened `Ingredient`s), or over LoRA
    adapter folders (`adapter_check`: ranks, scalings, modules, cosines of the updates)."""
    from ladle.soup.adapter_check import all_adapters, check_adapters

    ingredients = list(ingredients)
    if all_adapters(ingredients, base):
        return check_adapters(ingredients, base, include, exclude, progress)
    return check_opened(open_ingredients(list(ingredients)), open_ingredient(base) if base is not None else None,
                        include, exclude, progress)


def check_opened(
    ingredients: list[Ingredient], base: Ingredient | None = None, include=(), exclude=(), progress: bool = False
) -> CheckReport:
    """Read every selected tensor once and report what would stop or spoil a soup."""
    keys = select_keys(ingredients[0].keys(), include, exclude)
    everyone = ingredients + ([base] if base is not None else [])
    report = CheckReport([describe(i, select_keys(i.keys(), include, exclude)) for i in ingredients],
                         describe(base, select_keys(base.keys(), include, exclude)) if base else None, len(keys))
    if not keys:
        report.problems.append({"kind": "empty", "file": ingredients[0].name, "key": None,
                                "message": "no tensors selected (check --include/--exclude)"})
    mismatches = find_mismatches(everyone, keys, include, exclude)
    report.problems += [asdict(m) for m in mismatches]
    bad = {m.key for m in mismatches}
    shared = [k for k in keys if k not in bad]

    n = len(ingredients)
    selected = [set(select_keys(ing.keys(), include, exclude)) for ing in ingredients]
    # equal[i][j]: ingredients i and j hold bit-identical selected tensors (so far); settled pairs stop comparing
    equal = [[i == j or selected[i] == selected[j] for j in range(n)] for i in range(n)]
    gram = np.zeros((n, n))  # float64, of task vectors (with base) or of raw weights
    sqdist = np.zeros((n, n))
    nonfinite: set[int] = set()  # their distances are unknown, not zero
    with ThreadPoolExecutor(max_workers=1) as pool, ThreadPoolExecutor(max_workers=WORKERS) as workers:
        digests = pool.submit(_file_digests, ingredients)  # from the hash cache, or hashed beside the pass
        # per worker: float64 blocks (one per ingredient) and its own sums, added up at the end in a fixed order,
        # so the figures do not depend on which thread finished first
        width = min(CHUNK, max((ingredients[0].info(k).numel for k in shared), default=1))
        sums = [(np.empty((n, width)), np.zeros((n, n)), np.zeros((n, n))) for _ in range(WORKERS)]
        for key in progress_bar(shared, desc="check", unit="tensor", enabled=progress):
            info = ingredients[0].info(key)
            flat = [ing.array(key).reshape(-1) for ing in ingredients]
            if not is_float(info.dtype):
                _compare_blocks(equal, flat)
                differs = any(not np.array_equal(flat[0], t) for t in flat[1:])
                report.integer_buffers.append({"key": key, "dtype": info.dtype, "agree": not differs})
            else:
                base_t = base.array(key).reshape(-1) if base is not None else None
                starts = range(0, info.numel, CHUNK)

                def share(w: int) -> set[int]:
                    buffers, gram_w, sqdist_w = sums[w]
                    flagged: set[int] = set()
                    for start in starts[w::WORKERS]:
                        blocks = [t[start : start + CHUNK] for t in flat]
                        _compare_blocks(equal, blocks)  # (pairs only ever turn unequal: threads agree)
                        _accumulate(blocks, base_t[start : start + CHUNK] if base_t is not None else None, buffers,
                                    gram_w, sqdist_w, flagged)
                    return flagged

                for i in sorted(set().union(*workers.map(share, range(WORKERS)))):
                    nonfinite.add(i)
                    report.warnings.append({"kind": "nonfinite", "file": ingredients[i].name, "key": key,
                                            "message": "holds NaN or Inf values"})
            for ing in everyone:
                ing.release(key)
        for _, gram_w, sqdist_w in sums:
            gram += gram_w
            sqdist += sqdist_w
        # Keys with a problem take no part in distances, but they do in identity: without this, ingredients
        # that differ only where they mismatch (say, one tensor's dtype) would be reported identical.
        for key in sorted(bad):
            holders = [i for i in range(n) if key in selected[i]]
            for i in holders:
                for j in holders:
                    if i < j and equal[i][j]:
                        a, b = ingredients[i], ingredients[j]
                        equal[i][j] = equal[j][i] = a.info(key) == b.info(key) and _same_bits(a.array(key), b.array(key))
            for i in holders:
                ingredients[i].release(key)
        for i, d in enumerate(digests.result()):
            report.ingredients[i]["sha256"] = d

    groups: list[list[int]] = []
    for i in range(n):
        home = next((g for g in groups if equal[g[0]][i]), None)
        home.append(i) if home is not None else groups.append([i])
    report.identical_groups = [[ingredients[i].name for i in g] for g in groups if len(g) > 1]
    for g in report.identical_groups:
        report.warnings.append({"kind": "identical", "file": g[1], "key": None,
                                "message": f"identical in content to {g[0]} (counts twice in a soup)"})
    for b in report.integer_buffers:
        if not b["agree"]:
            report.warnings.append({"kind": "integer", "file": None, "key": b["key"],
                                    "message": "integer buffer differs between ingredients: never averaged, the first ingredient's is kept"})
    unknown = sorted(nonfinite)
    norms = np.sqrt(np.maximum(np.diagonal(gram), 0))
    if base is not None:
        norms[unknown] = math.nan
        report.task_vector_norms = [round(float(v), 6) for v in norms]
        report.task_vector_cosine = rounded(mark_unknown(pairwise_cosine(gram), unknown))
    else:
        mean_norm = (norms[:, None] + norms[None, :]) / 2
        with np.errstate(invalid="ignore"):  # non-finite ingredients: marked unknown below
            rel = np.where(mean_norm > 0, np.sqrt(sqdist) / np.maximum(mean_norm, 1e-300), 0.0)
        report.relative_l2 = rounded(mark_unknown(rel, unknown))
    return report


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise identity (NaN equals the same NaN, 0.0 differs from -0.0): the bytes, not the values."""
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a.reshape(-1).view(np.uint8),
                                                                        b.reshape(-1).view(np.uint8))


def _compare_blocks(equal: list[list[bool]], blocks: list[np.ndarray]) -> None:
    """Settle pairs that differ in these blocks (a pair found different is never compared again)."""
    n = len(blocks)
    for i in range(n):
        for j in range(i + 1, n):
            if equal[i][j] and not _same_bits(blocks[i], blocks[j]):
                equal[i][j] = equal[j][i] = False


def _accumulate(blocks: list[np.ndarray], base: np.ndarray | None, buffers: np.ndarray, gram: np.ndarray,
                sqdist: np.ndarray, flagged: set[int]) -> None:
    """One pass over one block of every ingredient, each converted once into a reused float64 buffer, then one matrix
    product (BLAS; dots pair by pair took 13 s for 4 × 512 MiB). With a base: the Gram matrix of the task vectors
    (their norms and cosines). Without: squared norms and every pair's squared distance, from the Gram matrix of
    each ingredient less a finite reference one (the large shared part taken out as it is converted, so nothing
    cancels). A non-finite self-product flags NaN or Inf; only the pairs of a flagged ingredient are then unknown."""
    n, size = len(blocks), len(blocks[0])
    rows = buffers[:n, :size]
    with np.errstate(all="ignore"):  # NaN and Inf are flagged below, not warned about
        if base is not None:
            for i, b in enumerate(blocks):
                np.subtract(b, base, out=rows[i], dtype=np.float64)
            products = rows @ rows.T
            own = np.diagonal(products)
            gram += products
        else:
            own, distances = _norms_and_distances(blocks, 0, rows)
            if not np.isfinite(own[0]):  # the reference holds NaN or Inf: take a finite one
                ref = next((i for i, b in enumerate(blocks) if np.isfinite(b).all()), 0)
                own, distances = _norms_and_distances(blocks, ref, rows)
            gram[np.diag_indices(n)] += own
            sqdist += distances
    flagged.update(i for i in range(n) if not np.isfinite(own[i]) and not np.isfinite(blocks[i]).all())


def _norms_and_distances(blocks: list[np.ndarray], ref: int, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared norms and pairwise squared distances of the blocks: rows hold dᵢ = xᵢ − x_ref (float64) and x_ref, so
    ‖xᵢ − xⱼ‖² = ‖dᵢ − dⱼ‖² and ‖xᵢ‖² = ‖dᵢ‖² + 2dᵢ·x_ref + ‖x_ref‖², from one Gram matrix."""
    for i, b in enumerate(blocks):
        if i == ref:
            rows[i] = b
        else:
            np.subtract(b, blocks[ref], out=rows[i], dtype=np.float64)
    g = rows @ rows.T
    d = g.copy()  # Gram of the dᵢ (d_ref = 0)
    d[ref, :] = d[:, ref] = 0.0
    spread = np.diagonal(d)
    distances = np.maximum(spread[:, None] + spread[None, :] - 2 * d, 0.0)
    np.fill_diagonal(distances, 0.0)
    own = spread + 2 * g[:, ref] + g[ref, ref]
    own[ref] = g[ref, ref]
    return own, distances


def _file_digests(ingredients: list[Ingredient]) -> list[str | None]:
    """Each ingredient's sha256 (of its file; of its files' hashes when sharded), as cook records it; None in memory."""
    from ladle.io.hashing import checkpoint_sha256

    return [checkpoint_sha256(ing.files) if ing.files else None for ing in ingredients]


def format_report(report) -> str:
    """The human-readable check report."""
    from ladle.soup.adapter_check import AdapterCheckReport, format_adapter_report

    if isinstance(report, AdapterCheckReport):
        return format_adapter_report(report)
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
        lines += matrix(report.task_vector_cosine)
    if report.relative_l2 is not None and len(report.ingredients) > 1:
        lines.append("relative L2 distance ‖θᵢ − θⱼ‖ / mean(‖θᵢ‖, ‖θⱼ‖):")
        lines += matrix(report.relative_l2)
    lines += verdict_lines(report, "ingredients")
    return "\n".join(lines)
