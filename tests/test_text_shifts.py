"""The text-typos suite: determinism, per-text seeds (prefix property), rates that match the table and grow
with severity, and the property that defines each corruption."""

from __future__ import annotations

import random
import re

import pytest

from ladle.errors import LadleError
from ladle.shifts.text_shifts import (KEYBOARD_NEIGHBOURS, SEVERITY_RATES, TEXT_TYPOS, corrupt_text, corrupt_texts,
                                      text_seed)

CHAR_LEVEL = ("char_swap", "char_delete", "char_insert", "keyboard", "case")
SEVERITIES = (1, 2, 3, 4, 5)


def random_words(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))) for _ in range(n)]


LONG = " ".join(random_words(850))  # ~5,100 letters
LETTERS = sum(ch.isalpha() for ch in LONG)
MIXED = "  The Quick brown fox, 42 times!\n\tJumped over\u00a0the lazy dog... a b c I  \n"
TEXTS = ["Hello world", "", "A short one.", "Another text, with punctuation!", "x"]


def adjacent_pairs(text: str) -> int:
    return sum(len(w) - 1 for w in text.split())


def measured_rate(name: str, before: str, after: str) -> float:
    """The share of the corruption's unit that changed, in the same unit as SEVERITY_RATES."""
    if name == "char_delete":
        return (len(before) - len(after)) / LETTERS
    if name == "char_insert":
        return (len(after) - len(before)) / LETTERS
    changed = sum(a != b for a, b in zip(before, after))
    if name == "char_swap":  # swaps per adjacent pair of letters
        return changed / 2 / adjacent_pairs(before)
    return changed / LETTERS


def test_suite_and_table():
    assert TEXT_TYPOS == ("char_swap", "char_delete", "char_insert", "keyboard", "word_dropout", "case")
    assert set(SEVERITY_RATES) == set(TEXT_TYPOS)
    for rates in SEVERITY_RATES.values():
        assert len(rates) == 5 and list(rates) == sorted(rates) and 0 < rates[0] and rates[-1] < 1


def test_text_seed_is_sha256_of_the_key():
    import hashlib

    want = int.from_bytes(hashlib.sha256(b"7|text-typos|keyboard|3|12").digest()[:4], "little")
    assert text_seed(7, "keyboard", 3, 12) == want
    assert len({text_seed(0, n, s, i) for n in TEXT_TYPOS for s in SEVERITIES for i in range(4)}) == 6 * 5 * 4


@pytest.mark.parametrize("name", TEXT_TYPOS)
def test_deterministic_and_seed_dependent(name):
    assert corrupt_text(LONG, name, 3, 1) == corrupt_text(LONG, name, 3, 1)
    assert corrupt_text(LONG, name, 3, 1) != corrupt_text(LONG, name, 3, 2)
    assert corrupt_text(LONG, name, 3, 1) != LONG
    assert corrupt_texts(TEXTS, name, 4, seed=5) == corrupt_texts(TEXTS, name, 4, seed=5)


@pytest.mark.parametrize("name", TEXT_TYPOS)
def test_prefix_and_independence(name):
    full = corrupt_texts(TEXTS, name, 5, seed=3)
    assert corrupt_texts(TEXTS[:2], name, 5, seed=3) == full[:2]
    assert corrupt_texts(list(reversed(TEXTS)), name, 5, seed=3)[-1] == corrupt_text(TEXTS[0], name, 5,
                                                                                      text_seed(3, name, 5, 4))
    assert full == [corrupt_text(t, name, 5, text_seed(3, name, 5, i)) for i, t in enumerate(TEXTS)]


@pytest.mark.parametrize("name", TEXT_TYPOS)
def test_empty_and_whitespace_only_unchanged(name):
    for severity in SEVERITIES:
        assert corrupt_text("", name, severity, 0) == ""
        assert corrupt_text(" \n\t ", name, severity, 0) == " \n\t "
    assert corrupt_texts([], name, 1) == []


@pytest.mark.parametrize("name", CHAR_LEVEL)
def test_char_rates_match_the_table_and_grow(name):
    rates = [measured_rate(name, LONG, corrupt_text(LONG, name, s, 11)) for s in SEVERITIES]
    for measured, configured in zip(rates, SEVERITY_RATES[name]):
        # char_swap: a swapped pair is skipped (about p/(1+p) of pairs swap) and equal letters do not show
        assert abs(measured - configured) <= 0.2 * configured + 0.006, (rates, SEVERITY_RATES[name])
    assert rates == sorted(rates) and rates[0] < rates[-1]


@pytest.mark.parametrize("name", CHAR_LEVEL)
@pytest.mark.parametrize("text", [MIXED, LONG, " ".join("abcdefghij")])
def test_char_level_keeps_whitespace_and_word_count(name, text):
    for seed in range(5):
        out = corrupt_text(text, name, 5, seed)
        assert re.findall(r"\s+", out) == re.findall(r"\s+", text)
        assert len(out.split()) == len(text.split())
        # only letters and digits change: punctuation stays where it was in each word
        for before, after in zip(text.split(), out.split()):
            assert [c for c in after if not c.isalnum()] == [c for c in before if not c.isalnum()]


def test_char_swap_keeps_each_words_letters():
    out = corrupt_text(LONG, "char_swap", 5, 0)
    assert all(sorted(a) == sorted(b) for a, b in zip(LONG.split(), out.split()))
    assert out != LONG


def test_char_insert_adds_lowercase_letters_only():
    out = corrupt_text("ABC DEF GHI " * 50, "char_insert", 5, 0)
    assert out.upper() != out and re.sub(r"[a-z]", "", out) == "ABC DEF GHI " * 50


def test_char_delete_leaves_a_subsequence():
    out = corrupt_text(LONG, "char_delete", 5, 0)
    for before, after in zip(LONG.split(), out.split()):
        it = iter(before)
        assert all(ch in it for ch in after)


def test_keyboard_map():
    assert set(KEYBOARD_NEIGHBOURS["s"]) == set("weadzx")
    assert set(KEYBOARD_NEIGHBOURS["q"]) == set("wa")  # letters keep to letters, digits to digits
    assert set(KEYBOARD_NEIGHBOURS["t"]) == set("ryfg")
    assert set(KEYBOARD_NEIGHBOURS["m"]) == set("njk")
    assert set(KEYBOARD_NEIGHBOURS["5"]) == set("46")
    for key, near in KEYBOARD_NEIGHBOURS.items():  # touching is symmetric
        assert near and key not in near and all(key in KEYBOARD_NEIGHBOURS[n] for n in near)
        assert all(n.isdigit() == key.isdigit() for n in near)


def test_keyboard_replaces_with_neighbours_in_the_same_case():
    text = LONG.upper() + " " + LONG + " 0123456789"
    out = corrupt_text(text, "keyboard", 5, 0)
    assert len(out) == len(text)
    changed = [(a, b) for a, b in zip(text, out) if a != b]
    assert len(changed) > 1000
    for a, b in changed:
        assert b.lower() in KEYBOARD_NEIGHBOURS[a.lower()]
        assert a.isupper() == b.isupper() and a.islower() == b.islower()


def test_case_only_changes_case():
    for text in (LONG, MIXED, "Straße İstanbul ÉCOLE"):
        out = corrupt_text(text, "case", 5, 0)
        assert out.lower() == text.lower() and len(out) == len(text)
    assert corrupt_text(LONG, "case", 5, 0) != LONG


def test_word_dropout_rate_order_and_whitespace():
    words = LONG.split()
    fractions = []
    for severity, rate in zip(SEVERITIES, SEVERITY_RATES["word_dropout"]):
        kept = corrupt_text(LONG, "word_dropout", severity, 4).split()
        it = iter(words)
        assert all(w in it for w in kept)  # the kept words, in order, unchanged
        fractions.append(1 - len(kept) / len(words))
        assert abs(fractions[-1] - rate) <= 0.2 * rate + 0.02, fractions
    assert fractions == sorted(fractions)
    out = corrupt_text(MIXED, "word_dropout", 5, 1)
    assert out.startswith("  ") and out.endswith("  \n") and "  " not in out.strip()


def test_word_dropout_keeps_at_least_one_word():
    for seed in range(200):
        assert corrupt_text("only", "word_dropout", 5, seed) == "only"
        out = corrupt_text(" a b ", "word_dropout", 5, seed)
        assert out in (" a b ", " a ", " b ")


def test_errors():
    with pytest.raises(LadleError) as e:
        corrupt_text("hi", "blur", 1, 0)
    assert str(e.value) == ("corruptions: 'blur' is not in suite text-typos (it has: char_swap, char_delete, "
                            "char_insert, keyboard, word_dropout, case)")
    for severity in (0, 6, -1):
        with pytest.raises(LadleError, match=rf"^severity: must be 1-5, got {severity}$"):
            corrupt_texts(["hi"], "case", severity)
    with pytest.raises(LadleError, match="not in suite text-typos"):
        corrupt_texts([], "nope", 1)
