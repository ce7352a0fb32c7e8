"""`check`: exact figures on hand-made ingredients."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch

import ladle
from ladle.soup.check import format_report
from ladle.soup.check_parts import select_keys
from conftest import sha256_of, tensor

check_mod = importlib.import_module("ladle.soup.check")


def test_counts_per_ingredient(ckpt):
    state = {
        "w": torch.zeros(2, 3),
        "b": torch.zeros(3, dtype=torch.float16),
        "n": torch.tensor(5),
        "flag": torch.tensor([True, False, True, True]),
    }
    a = ckpt.st("a", state)
    r = ladle.check([a])
    assert r.ok and r.selected_tensors == 4 and r.base is None
    d = r.ingredients[0]
    assert d["name"] == str(a)
    assert d["tensors"] == 4
    assert d["parameters"] == 6 + 3 + 1 + 4
    assert d["bytes"] == 24 + 6 + 8 + 4
    assert d["dtypes"] == {"F32": 1, "F16": 1, "I64": 1, "BOOL": 1}
    assert d["notes"] == []
    assert r.problems == [] and r.identical_groups == []


def test_every_mismatch_is_named(ckpt):
    a = ckpt.st("a", {"w": torch.zeros(2, 2), "b": torch.zeros(2), "x": torch.zeros(1), "z": tensor([3.0, 4.0])})
    c = ckpt.st("c", {"w": torch.zeros(2, 3), "b": torch.zeros(2, dtype=torch.float16), "y": torch.zeros(1),
                      "z": tensor([0.0, 0.0])})
    d = ckpt.st("d", {"w": torch.zeros(2, 2), "b": torch.zeros(2), "x": torch.zeros(5), "z": tensor([6.0, 8.0])})
    r = ladle.check([a, c, d])
    assert not r.ok
    got = sorted((p["file"], p["key"], p["kind"], p["message"]) for p in r.problems)
    assert got == sorted([
        (str(c), "w", "shape", f"shape [2, 3] differs from [2, 2] in {a}"),
        (str(c), "b", "dtype", f"dtype F16 differs from F32 in {a}"),
        (str(c), "x", "missing", f"missing (present in {a})"),
        (str(c), "y", "extra", f"not present in {a}"),
        (str(d), "x", "shape", f"shape [5] differs from [1] in {a}"),
    ])
    # Distances use only the keys without problems: here 'z' alone ([3,4], [0,0], [6,8]).
    assert r.relative_l2 == [[0.0, 2.0, 0.666667], [2.0, 0.0, 2.0], [0.666667, 2.0, 0.0]]
    text = format_report(r)
    assert text.splitlines()[-1] == "NOT SOUPABLE: 5 problem(s)"
    assert f"problem: {c}: tensor 'y': not present in {a}" in text.splitlines()


def test_base_mismatch_is_named(ckpt):
    a = ckpt.st("a", {"w": torch.zeros(2)})
    base = ckpt.st("base", {"w": torch.zeros(3)})
    r = ladle.check([a, a], base=base)
    assert r.problems == [{"kind": "shape", "file": str(base), "key": "w",
                           "message": f"shape [3] differs from [2] in {a}"}]


def test_nonfinite_tensors_are_warnings(ckpt):
    a = ckpt.st("a", {"p": tensor([1.0, float("nan")]), "q": tensor([1.0, 2.0]), "n": torch.tensor([7])})
    b = ckpt.st("b", {"p": tensor([1.0, 2.0]), "q": tensor([float("-inf"), 2.0]), "n": torch.tensor([7])})
    c = ckpt.st("c", {"p": tensor([1.0, 2.0]), "q": tensor([1.0, float("inf")], torch.bfloat16).float(),
                      "n": torch.tensor([7])})
    r = ladle.check([a, b, c])
    assert r.ok and r.problems == []
    assert sorted((w["file"], w["key"]) for w in r.warnings if w["kind"] == "nonfinite") == [
        (str(a), "p"), (str(b), "q"), (str(c), "q")]
    assert all(w["message"] == "holds NaN or Inf values" for w in r.warnings)
    assert f"warning: {a}: tensor 'p': holds NaN or Inf values" in format_report(r).splitlines()


def test_integer_buffers_listed_and_disagreement_detected(ckpt):
    common = {"w": tensor([3.0, 4.0])}
    a = ckpt.st("a", {**common, "bn.num_batches_tracked": torch.tensor(10), "ids": torch.tensor([1, 2], dtype=torch.int32)})
    b = ckpt.st("b", {"w": tensor([0.0, 0.0]), "bn.num_batches_tracked": torch.tensor(12),
                      "ids": torch.tensor([1, 2], dtype=torch.int32)})
    r = ladle.check([a, b])
    assert r.ok
    assert sorted(r.integer_buffers, key=lambda x: x["key"]) == [
        {"key": "bn.num_batches_tracked", "dtype": "I64", "agree": False},
        {"key": "ids", "dtype": "I32", "agree": True},
    ]
    integer_warnings = [w for w in r.warnings if w["kind"] == "integer"]
    assert [w["key"] for w in integer_warnings] == ["bn.num_batches_tracked"]
    # Integers take no part in distances: [3,4] vs [0,0] is 5 / mean(5, 0) = 2.
    assert r.relative_l2 == [[0.0, 2.0], [2.0, 0.0]]
    assert "integer buffers: 2 (never averaged; 1 agree across ingredients)" in format_report(r)


def test_identical_ingredients_grouped_across_formats(ckpt):
    state = {"enc.weight": tensor([[1.0, 2.0], [3.0, 4.0]]), "enc.bias": tensor([0.5, -0.5]), "steps": torch.tensor(3)}
    other = {**state, "enc.bias": tensor([0.5, -0.25])}
    twin = {**other}
    st = ckpt.st("a", state)
    pt = ckpt.pt("a.pt", {"state_dict": {"module." + k: v for k, v in state.items()}})
    legacy = ckpt.pt("a_legacy.bin", state, legacy=True)
    hf = ckpt.hf("a_hf", state, shards=2)
    o1, o2 = ckpt.st("other", other), ckpt.pt("twin.pth", twin)
    r = ladle.check([st, o1, pt, legacy, hf, o2])
    assert r.identical_groups == [[str(st), str(pt), str(legacy), str(hf)], [str(o1), str(o2)]]
    assert [i["sha256"] for i in r.ingredients[:2]] == [sha256_of(st), sha256_of(o1)]  # the files' hashes, as cook records
    identical = [(w["file"], w["message"]) for w in r.warnings if w["kind"] == "identical"]
    assert identical == [(str(pt), f"identical in content to {st} (counts twice in a soup)"),
                         (str(o2), f"identical in content to {o1} (counts twice in a soup)")]
    assert r.relative_l2[0][2] == 0.0 and r.relative_l2[0][1] > 0


def test_ingredients_that_differ_only_where_they_mismatch_are_not_identical(ckpt):
    a = ckpt.st("a", {"w": tensor([1.0, 2.0]), "v": tensor([5.0])})
    b = ckpt.st("b", {"w": tensor([1.0, 2.0], torch.float64), "v": tensor([5.0])})  # dtype differs
    c = ckpt.st("c", {"w": tensor([1.0, 2.0, 3.0]), "v": tensor([5.0])})  # shape differs
    d = ckpt.st("d", {"v": tensor([5.0])})  # 'w' missing
    e = ckpt.st("e", {"w": tensor([1.0, 2.0]), "v": tensor([5.0]), "x": tensor([0.0])})  # extra 'x'
    r = ladle.check([a, b, c, d, e])
    assert [p["kind"] for p in r.problems] == ["dtype", "shape", "missing", "extra"]
    assert r.identical_groups == [] and not [w for w in r.warnings if w["kind"] == "identical"]


def test_ingredients_that_mismatch_the_first_alike_are_compared_where_they_mismatch(ckpt):
    a = ckpt.st("a", {"w": tensor([1.0, 2.0])})
    b = ckpt.st("b", {"w": tensor([1.0, 2.0, 3.0])})
    c = ckpt.st("c", {"w": tensor([1.0, 2.0, 4.0])})
    c2 = ckpt.pt("c2.pt", {"w": tensor([1.0, 2.0, 4.0])})
    r = ladle.check([a, b, c, c2])
    assert r.identical_groups == [[str(c), str(c2)]]


def test_task_vectors_with_a_base(ckpt):
    # The task vectors spread over two tensors: [3, 4], [4, -3], [6, 8] and [0, 0].
    base = ckpt.st("base", {"p": tensor([1.0]), "q": tensor([2.0])})
    f1 = ckpt.st("f1", {"p": tensor([4.0]), "q": tensor([6.0])})
    f2 = ckpt.st("f2", {"p": tensor([5.0]), "q": tensor([-1.0])})
    f3 = ckpt.st("f3", {"p": tensor([7.0]), "q": tensor([10.0])})
    f4 = ckpt.st("f4", {"p": tensor([1.0]), "q": tensor([2.0])})
    r = ladle.check([f1, f2], base=base)
    assert r.task_vector_norms == [5.0, 5.0]
    assert r.task_vector_cosine == [[1.0, 0.0], [0.0, 1.0]]
    assert r.relative_l2 is None
    assert r.base["name"] == str(base) and r.base["tensors"] == 2

    r = ladle.check([f1, f2, f3, f4], base=base)
    assert r.task_vector_norms == [5.0, 5.0, 10.0, 0.0]
    assert r.task_vector_cosine == [[1.0, 0.0, 1.0, 0.0],
                                    [0.0, 1.0, 0.0, 0.0],
                                    [1.0, 0.0, 1.0, 0.0],
                                    [0.0, 0.0, 0.0, 0.0]]  # a zero task vector has cosine 0 with everything
    text = format_report(r)
    assert "task-vector norms ‖θᵢ − θ_base‖: [0] 5, [1] 5, [2] 10, [3] 0" in text


def test_task_vector_cosine_hand_computed(ckpt):
    base = ckpt.st("base", {"w": tensor([0.0, 0.0, 0.0])})
    f1 = ckpt.st("f1", {"w": tensor([1.0, 0.0, 0.0])})
    f2 = ckpt.st("f2", {"w": tensor([1.0, 1.0, 0.0])})
    f3 = ckpt.st("f3", {"w": tensor([-2.0, 1.0, 2.0])})
    r = ladle.check([f1, f2, f3], base=base)
    assert r.task_vector_norms == [1.0, round(math.sqrt(2), 6), 3.0]
    c12, c13, c23 = 1 / math.sqrt(2), -2 / 3, -1 / (3 * math.sqrt(2))
    assert r.task_vector_cosine == [[1.0, round(c12, 6), round(c13, 6)],
                                    [round(c12, 6), 1.0, round(c23, 6)],
                                    [round(c13, 6), round(c23, 6), 1.0]]


def test_relative_l2_without_base_matches_the_formula(ckpt):
    # ‖θᵢ − θⱼ‖ / mean(‖θᵢ‖, ‖θⱼ‖), over all float tensors together.
    a = ckpt.st("a", {"p": tensor([3.0]), "q": tensor([4.0])})  # ‖a‖ = 5
    b = ckpt.st("b", {"p": tensor([0.0]), "q": tensor([0.0])})  # ‖b‖ = 0
    c = ckpt.st("c", {"p": tensor([6.0]), "q": tensor([8.0])})  # ‖c‖ = 10
    r = ladle.check([a, b, c])
    assert r.relative_l2 == [[0.0, 2.0, 0.666667], [2.0, 0.0, 2.0], [0.666667, 2.0, 0.0]]
    assert r.task_vector_norms is None and r.task_vector_cosine is None
    z = ladle.check([b, b])
    assert z.relative_l2 == [[0.0, 0.0], [0.0, 0.0]]  # both zero: defined as 0


def test_relative_l2_random_against_numpy(ckpt, monkeypatch):
    g = torch.Generator().manual_seed(0)
    states = [{"a": torch.randn(5, 7, generator=g), "b": torch.randn(11, generator=g, dtype=torch.float64),
               "c": torch.randn(3, generator=g).half()} for _ in range(3)]
    paths = [ckpt.st(f"r{i}", s) for i, s in enumerate(states)]
    flat = [np.concatenate([s[k].double().numpy().ravel() for k in ("a", "b", "c")]) for s in states]

    def expected():
        return [[round(float(np.linalg.norm(x - y) / ((np.linalg.norm(x) + np.linalg.norm(y)) / 2)), 6)
                 for y in flat] for x in flat]

    r = ladle.check(paths)
    want = expected()
    for i in range(3):
        assert r.relative_l2[i] == pytest.approx(want[i], abs=2e-6)
    monkeypatch.setattr(check_mod, "CHUNK", 4)  # tensors read in chunks of 4 elements: the same figures
    chunked = ladle.check(paths).relative_l2
    for i in range(3):
        assert chunked[i] == pytest.approx(r.relative_l2[i], abs=2e-6)


def test_include_exclude_restrict_everything(ckpt):
    a = ckpt.st("a", {"enc.w": tensor([3.0, 4.0]), "enc.n": torch.tensor(1),
                      "head.w": tensor([float("nan"), 1.0]), "head.only_a": tensor([1.0])})
    b = ckpt.st("b", {"enc.w": tensor([0.0, 0.0]), "enc.n": torch.tensor(2), "head.w": tensor([1.0, 1.0, 1.0])})
    a2 = ckpt.st("a2", {"enc.w": tensor([3.0, 4.0]), "enc.n": torch.tensor(1), "head.w": tensor([9.0, 9.0])})

    full = ladle.check([a, b, a2])
    assert not full.ok and {p["key"] for p in full.problems} == {"head.w", "head.only_a"}

    for sel in ({"include": ["enc.*"]}, {"exclude": ["head.*"]}, {"include": ["enc.*", "head.*"], "exclude": ["head.*"]}):
        r = ladle.check([a, b, a2], **sel)
        assert r.ok, sel
        assert r.selected_tensors == 2
        assert [(i["tensors"], i["parameters"], i["bytes"], i["dtypes"]) for i in r.ingredients] == \
            [(2, 3, 16, {"F32": 1, "I64": 1})] * 3
        assert r.warnings[0]["kind"] == "identical" and [w["kind"] for w in r.warnings] == ["identical", "integer"]
        assert r.integer_buffers == [{"key": "enc.n", "dtype": "I64", "agree": False}]
        assert r.identical_groups == [[str(a), str(a2)]]
        assert r.relative_l2 == [[0.0, 2.0, 0.0], [2.0, 0.0, 2.0], [0.0, 2.0, 0.0]]

    base = ckpt.st("base", {"enc.w": tensor([0.0, 0.0]), "enc.n": torch.tensor(1)})  # no head at all
    r = ladle.check([a, b], base=base, include=["enc.*"])
    assert r.ok and r.task_vector_norms == [5.0, 0.0]
    assert r.base["tensors"] == 2


def test_nothing_selected_is_a_problem(ckpt):
    a = ckpt.st("a", {"w": tensor([1.0])})
    r = ladle.check([a], include=["nothing*"])
    assert not r.ok and r.selected_tensors == 0
    assert r.problems == [{"kind": "empty", "file": str(a), "key": None,
                           "message": "no tensors selected (check --include/--exclude)"}]


def test_select_keys_globs():
    keys = ["enc.0.w", "enc.0.b", "enc.1.w", "head.w", "Head.x"]
    assert select_keys(keys) == keys
    assert select_keys(keys, include=["enc.*"]) == ["enc.0.w", "enc.0.b", "enc.1.w"]
    assert select_keys(keys, include=["*.w"], exclude=["enc.1.*"]) == ["enc.0.w", "head.w"]
    assert select_keys(keys, exclude=["head.*"]) == ["enc.0.w", "enc.0.b", "enc.1.w", "Head.x"]  # case-sensitive
    assert select_keys(keys, include=["enc.?.b", "Head.x"]) == ["enc.0.b", "Head.x"]


def test_report_to_dict_and_text(ckpt):
    a = ckpt.st("a", {"w": tensor([3.0, 4.0])})
    b = ckpt.st("b", {"w": tensor([0.0, 0.0])})
    r = ladle.check([a, b])
    d = r.to_dict()
    assert d["ok"] is True and d["relative_l2"] == [[0.0, 2.0], [2.0, 0.0]] and d["selected_tensors"] == 1
    lines = format_report(r).splitlines()
    assert lines == [
        f"[0] {a}: 1 tensors, 2 parameters, 0.0 MB (F32×1)",
        f"[1] {b}: 1 tensors, 2 parameters, 0.0 MB (F32×1)",
        "selected tensors: 1",
        "relative L2 distance ‖θᵢ − θⱼ‖ / mean(‖θᵢ‖, ‖θⱼ‖):",
        "             [0]      [1]",
        "  [0]     0.0000   2.0000",
        "  [1]     2.0000   0.0000",
        "OK: these ingredients can be souped",
    ]


def test_distances_of_a_nonfinite_ingredient_are_unknown_not_zero(ckpt):
    a = ckpt.st("a", {"w": tensor([1.0, float("nan")])})
    b = ckpt.st("b", {"w": tensor([1.0, 2.0])})
    c = ckpt.st("c", {"w": tensor([1.0, 2.0])})
    r = ladle.check([a, b, c])
    m = r.relative_l2
    assert all(math.isnan(v) for v in m[0]) and all(math.isnan(row[0]) for row in m)
    assert m[1][2] == 0.0
    r = ladle.check([a, b], base=c)
    assert math.isnan(r.task_vector_norms[0]) and r.task_vector_norms[1] == 0.0
    d = ckpt.st("d", {"w": tensor([4.0, 6.0])})  # the pairs without the NaN ingredient keep their distances
    m = ladle.check([a, b, d]).relative_l2
    assert math.isnan(m[0][2]) and m[1][2] == round(5.0 / ((5 ** 0.5 + 52 ** 0.5) / 2), 6)
