"""Pieces both `ladle check` reports share (checkpoints and LoRA adapters): which keys are selected, what an input
holds, pairwise matrices with unknown rows, and where a problem is."""

from __future__ import annotations

import fnmatch
import math
from collections import Counter

import numpy as np


def select_keys(keys: list[str], include: list[str] | tuple = (), exclude: list[str] | tuple = ()) -> list[str]:
    """Keys matching any include glob (all if none) and no exclude glob, in their stored order."""
    return [
        k
        for k in keys
        if (not include or any(fnmatch.fnmatchcase(k, p) for p in include))
        and not any(fnmatch.fnmatchcase(k, p) for p in exclude)
    ]


def describe(ing, keys: list[str]) -> dict:
    infos = [ing.info(k) for k in keys]
    return {
        "name": ing.name,
        "tensors": len(keys),
        "parameters": sum(i.numel for i in infos),
        "bytes": sum(i.nbytes for i in infos),
        "dtypes": dict(Counter(i.dtype for i in infos)),
        "notes": ing.notes,
    }


def mark_unknown(m: np.ndarray, rows: list[int]) -> np.ndarray:
    """NaN (null in JSON) in the rows and columns of `rows`: inputs whose distances mean nothing."""
    m = m.copy()
    m[rows, :] = math.nan
    m[:, rows] = math.nan
    return m


def rounded(m: np.ndarray) -> list[list[float]]:
    return [[round(float(v), 6) for v in row] for row in m]


def where(item: dict) -> str:
    parts = [p for p in (item.get("file"), f"tensor '{item['key']}'" if item.get("key") else None) if p]
    return ": ".join(parts) + ": " if parts else ""


def matrix(m: list[list[float]]) -> list[str]:
    head = "       " + "".join(f"{f'[{j}]':>9}" for j in range(len(m)))
    return [head] + [f"  [{i}]  " + "".join(f"{v:9.4f}" for v in row) for i, row in enumerate(m)]


def verdict_lines(report, what: str) -> list[str]:
    """Warnings, problems and the verdict that end a check report ("these {what} can be souped")."""
    lines = ["warning: " + where(w) + w["message"] for w in report.warnings]
    lines += ["problem: " + where(p) + p["message"] for p in report.problems]
    lines.append(f"OK: these {what} can be souped" if report.ok else f"NOT SOUPABLE: {len(report.problems)} problem(s)")
    return lines
