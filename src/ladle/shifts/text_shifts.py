"""Text corruption suite "text-typos": seeded typos and word noise at 5 severities, like the image suites.

Six corruptions in the style of nlpaug's character/word augmenters and the typo transformations of the
TextFlint and Robustness Gym benchmarks: adjacent characters swapped, characters deleted, random lowercase
letters inserted, letters replaced by a QWERTY neighbour (case kept), whole words dropped (one always kept)
and letters' case flipped. Character-level corruptions touch only letters and digits inside words, never
whitespace, so the text keeps its layout and word count; only word_dropout removes words.

Determinism: every text gets its own seed from (seed, corruption, severity, index), as every image does in
corruptions.py, so a text never depends on the other texts and a prefix of a list is corrupted the same way.
"""

from __future__ import annotations

import hashlib
import random
import re

from ladle.errors import LadleError

SUITE = "text-typos"
TEXT_TYPOS: tuple[str, ...] = ("char_swap", "char_delete", "char_insert", "keyboard", "word_dropout", "case")
SEVERITIES = (1, 2, 3, 4, 5)

# Rates for severities 1..5. Character-level: the probability per letter/digit inside a word (per letter for
# "case") that it is deleted, followed by an inserted letter, replaced by a keyboard neighbour or case-flipped;
# 0.02-0.25 spans nlpaug-like light noise (1 typo in 50 characters) to heavy (1 in 4). char_swap: the probability
# per character that it is swapped with the next one; a swap moves two characters, so its rates are half the
# others and about the same share of characters changes. word_dropout: the probability per word that it is removed.
_CHAR_RATES = (0.02, 0.05, 0.10, 0.15, 0.25)
SEVERITY_RATES: dict[str, tuple[float, ...]] = {
    "char_swap": tuple(r / 2 for r in _CHAR_RATES),
    "char_delete": _CHAR_RATES,
    "char_insert": _CHAR_RATES,
    "keyboard": _CHAR_RATES,
    "word_dropout": (0.05, 0.10, 0.20, 0.30, 0.40),
    "case": (0.05, 0.10, 0.20, 0.30, 0.40),
}

_KEY_ROWS = ("1234567890", "qwertyuiop", "asdfghjkl", "zxcvbnm")


def _keyboard_neighbours() -> dict[str, str]:
    """QWERTY keys touching each key: left and right, and the two touching keys of the rows above and below
    (each row sits half a key right of the one above, so key c touches c and c+1 above, c-1 and c below).
    Letters keep letter neighbours only and digits digit ones, so a typo never turns a word into a number."""
    out = {}
    for r, row in enumerate(_KEY_ROWS):
        for c, key in enumerate(row):
            near = [(r, c - 1), (r, c + 1), (r - 1, c), (r - 1, c + 1), (r + 1, c - 1), (r + 1, c)]
            out[key] = "".join(_KEY_ROWS[i][j] for i, j in near if 0 <= i < len(_KEY_ROWS)
                               and 0 <= j < len(_KEY_ROWS[i]) and _KEY_ROWS[i][j].isdigit() == key.isdigit())
    return out


KEYBOARD_NEIGHBOURS = _keyboard_neighbours()  # e.g. 's' -> 'adwezx', 'q' -> 'wa', '5' -> '46'
_LOWERCASE = "abcdefghijklmnopqrstuvwxyz"


def _check(name: str, severity: int) -> float:
    """The rate of (name, severity), or the same errors as the image suites for an unknown name or severity."""
    if name not in TEXT_TYPOS:
        raise LadleError(f"corruptions: '{name}' is not in suite {SUITE} (it has: {', '.join(TEXT_TYPOS)})")
    if severity not in SEVERITIES:
        raise LadleError(f"severity: must be 1-5, got {severity}")
    return SEVERITY_RATES[name][severity - 1]


def text_seed(seed: int, name: str, severity: int, index: int) -> int:
    """One 32-bit seed per text, from its index only: stable whatever else is in the list."""
    digest = hashlib.sha256(f"{seed}|{SUITE}|{name}|{severity}|{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _swap(word: str, p: float, rng: random.Random) -> str:
    """Swap a letter/digit with the next one (also a letter/digit) with probability p; a swapped pair is done."""
    chars, i = list(word), 0
    while i < len(chars) - 1:
        if chars[i].isalnum() and chars[i + 1].isalnum() and rng.random() < p:
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
            i += 2
        else:
            i += 1
    return "".join(chars)


def _delete(word: str, p: float, rng: random.Random) -> str:
    """Delete each letter/digit with probability p; a word that would vanish is kept whole (word count kept)."""
    out = "".join(ch for ch in word if not (ch.isalnum() and rng.random() < p))
    return out or word


def _insert(word: str, p: float, rng: random.Random) -> str:
    """After each letter/digit, with probability p, insert a random lowercase letter."""
    out = []
    for ch in word:
        out.append(ch)
        if ch.isalnum() and rng.random() < p:
            out.append(rng.choice(_LOWERCASE))
    return "".join(out)


def _keyboard(word: str, p: float, rng: random.Random) -> str:
    """Replace each QWERTY letter/digit with probability p by a neighbouring key, in the replaced letter's case."""
    out = []
    for ch in word:
        near = KEYBOARD_NEIGHBOURS.get(ch.lower())
        if near and rng.random() < p:
            new = rng.choice(near)
            ch = new.upper() if ch.isupper() else new
        out.append(ch)
    return "".join(out)


def _case(word: str, p: float, rng: random.Random) -> str:
    """Flip the case of each letter with probability p (only letters whose flip is one character and reverts)."""
    out = []
    for ch in word:
        flipped = ch.swapcase()
        if len(flipped) == 1 and flipped != ch and flipped.swapcase() == ch and rng.random() < p:
            ch = flipped
        out.append(ch)
    return "".join(out)


_PER_WORD = {"char_swap": _swap, "char_delete": _delete, "char_insert": _insert, "keyboard": _keyboard,
             "case": _case}


def _word_dropout(text: str, p: float, rng: random.Random) -> str:
    """Remove each word with probability p, with the whitespace before it; if all would go, one random word stays.
    The kept words keep the whitespace that preceded them (the first kept word gets the text's leading space)."""
    words = list(re.finditer(r"\S+", text))
    if not words:
        return text
    keep = [rng.random() >= p for _ in words]
    if not any(keep):
        keep[rng.randrange(len(words))] = True
    out, previous_end = [], 0
    for match, kept in zip(words, keep):
        if kept:
            separator = text[previous_end : match.start()]
            out.append((text[: words[0].start()] if not out else separator) + match.group())
        previous_end = match.end()
    return "".join(out) + text[words[-1].end() :]


def corrupt_text(text: str, name: str, severity: int, seed: int) -> str:
    """One corrupted text, from its own `random.Random(seed)` (never the global RNG): same arguments, same string."""
    p = _check(name, severity)
    if not text:
        return text
    rng = random.Random(seed)
    if name == "word_dropout":
        return _word_dropout(text, p, rng)
    fn = _PER_WORD[name]
    parts = re.split(r"(\s+)", text)  # words at even positions, the whitespace between them at odd ones
    return "".join(part if i % 2 else fn(part, p, rng) for i, part in enumerate(parts))


def corrupt_texts(texts: list[str], name: str, severity: int, seed: int = 0) -> list[str]:
    """Corrupted copies of texts, text i with text_seed(seed, name, severity, i)."""
    _check(name, severity)
    return [corrupt_text(t, name, severity, text_seed(seed, name, severity, i)) for i, t in enumerate(texts)]
