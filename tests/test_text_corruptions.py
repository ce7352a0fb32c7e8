"""The text-typos suite on text splits: corrupted TextSets (texts corrupted, labels, pairs and choices kept), cached as
JSONL files (hits, identical bytes, damaged files rebuilt), suites refused on the other kind of data, and
`ladle taste --corruptions text-typos` end to end with figures checked against the model run by hand."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch

from ladle.data import open_data
from ladle.data.text import TextSet
from ladle.errors import LadleError
from ladle.shifts.corruptions import (SUITES, CorruptionCache, corrupt_images, corrupted_set, corrupted_sets, family,
                                      parse_suite)
from ladle.shifts.text_shifts import TEXT_TYPOS, corrupt_texts

from text_fixtures import VOCAB, write_bert, write_jsonl, write_llama, write_reviews_csv

SPEC = "text-typos:char_swap,case"


def write_word_tokenizer(folder: Path) -> None:
    """The fixture's word-piece tokenizer saved from the vocabulary itself: text_fixtures.write_tokenizer passes
    `vocab_file=`, which BertTokenizerFast of transformers 5 ignores, leaving the 5 special tokens (every word
    [UNK]), and a typo would then change no token at all."""
    from transformers import BertTokenizerFast

    BertTokenizerFast(vocab={w: i for i, w in enumerate(VOCAB)}, model_max_length=64).save_pretrained(folder)


def spread_weights(folder: Path, seed: int) -> None:
    """Redraw the model's matrices at std 0.5: at BERT's initial 0.02 its logits barely depend on the input, so a
    corrupted split would score like the clean one whether or not the model read it."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(folder)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    model.save_pretrained(folder)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Two tiny BERT classifiers (the ingredients ft0, ft1) and 60 reviews."""
    root = tmp_path_factory.mktemp("text-corruptions")
    for seed in (0, 1):
        spread_weights(write_bert(root / f"ft{seed}", seed=seed), seed)
        write_word_tokenizer(root / f"ft{seed}")
    write_reviews_csv(root / "reviews.csv")
    return root


@pytest.fixture(scope="module")
def tokenization(folder):
    from ladle.models.text import tokenization

    return tokenization(str(folder / "ft0"))


@pytest.fixture(scope="module")
def clean(folder, tokenization) -> TextSet:
    return open_data(f"{folder / 'reviews.csv'}:test", preprocess=tokenization, seed=0)


def test_the_tokenizer_reads_words(tokenization):
    assert tokenization.load().tokenize("the movie was good") == ["the", "movie", "was", "good"]


def test_text_typos_is_a_registered_suite_of_its_own_family():
    assert SUITES.get("text-typos") == TEXT_TYPOS
    assert family("text-typos") == "text-typos" and family("imagenet-c-all") == "imagenet-c"
    spec = parse_suite(SPEC, (1, 5))
    assert spec.names == ("char_swap", "case") and spec.family == "text-typos"
    assert spec.cells() == [("char_swap", 1), ("char_swap", 5), ("case", 1), ("case", 5)]
    with pytest.raises(LadleError, match="'fog' is not in suite text-typos"):
        parse_suite("text-typos:fog")


def test_corrupted_text_sets_are_deterministic_cached_and_keep_the_labels(clean, tmp_path):
    spec = parse_suite(SPEC, (1, 5))
    cache = CorruptionCache(tmp_path)
    sets = corrupted_sets(clean, spec, seed=3, cache=cache)
    assert list(sets) == spec.cells() and (cache.misses, cache.hits, cache.damaged) == (4, 0, [])
    files = sorted(tmp_path.rglob("*.jsonl"))
    assert len(files) == 4 and not [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix != ".jsonl"]
    for (name, severity), part in sets.items():
        assert isinstance(part, TextSet) and len(part) == len(clean)
        assert part.examples.texts == corrupt_texts(clean.examples.texts, name, severity, 3)
        assert torch.equal(part.y, clean.y) and part.classes == clean.classes and part.task == clean.task
        assert part.tokenization == clean.tokenization
        src = part.source
        assert (src["corruption"], src["severity"], src["suite"], src["corruption_seed"]) == (name, severity,
                                                                                             "text-typos", 3)
        assert src["clean_fingerprint"] == clean.source["fingerprint"] and src["spec"] == clean.source["spec"]
        assert Path(src["cache"]).is_file() and Path(src["cache"]).parent.name == name
        assert f"severity{severity}-seed3" in Path(src["cache"]).name
    for name in ("char_swap", "case"):  # severity 5 changes texts, and so the set's fingerprint
        heavy = sets[(name, 5)]
        assert sum(a != b for a, b in zip(heavy.examples.texts, clean.examples.texts)) >= len(clean) // 2
        assert heavy.source["fingerprint"] != clean.source["fingerprint"]
        assert [t.split() != [] for t in heavy.examples.texts] == [True] * len(clean)
    assert len({part.source["fingerprint"] for part in sets.values()}) == 4

    # the same call again: every set read from its file, which is left as it was
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    again_cache = CorruptionCache(tmp_path)
    again = corrupted_sets(clean, spec, seed=3, cache=again_cache)
    assert (again_cache.misses, again_cache.hits, again_cache.damaged) == (0, 4, [])
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files} == before
    for cell, part in again.items():
        assert part.examples.texts == sets[cell].examples.texts
        assert part.source == sets[cell].source

    # without a cache: the same texts and fingerprints (no file); another seed: other texts, other files
    bare = corrupted_sets(clean, spec, seed=3)
    assert all(bare[c].source["fingerprint"] == sets[c].source["fingerprint"] and bare[c].source["cache"] is None
               for c in sets)
    one = corrupted_set(clean, "text-typos", "case", 5, seed=3, cache=CorruptionCache(tmp_path))
    assert one.examples.texts == sets[("case", 5)].examples.texts
    other = corrupted_sets(clean, parse_suite("text-typos:case", (5,)), seed=4, cache=CorruptionCache(tmp_path))
    assert other[("case", 5)].examples.texts != sets[("case", 5)].examples.texts
    assert len(list(tmp_path.rglob("*.jsonl"))) == 5


def test_a_batch_of_a_corrupted_set_is_tokenised_from_the_corrupted_texts(clean, tokenization):
    part = corrupted_set(clean, "text-typos", "char_insert", 5)
    tokenizer = tokenization.load()
    batch = next(iter(part.batches(len(part), workers=0)))
    texts = [part.examples.texts[i] for i in part.order]
    expected = tokenizer(texts, truncation=True, max_length=tokenization.max_length, padding="longest",
                         return_tensors="pt")
    assert torch.equal(batch["input_ids"], expected["input_ids"])
    assert not torch.equal(batch["input_ids"], next(iter(clean.batches(len(clean), workers=0)))["input_ids"])


def _damage(path: Path, how: str, tmp_path: Path) -> None:
    raw = path.read_bytes()
    if how == "truncated":
        path.write_bytes(raw[: len(raw) * 2 // 3])
    elif how == "text edited":  # the checksum no longer holds
        lines = raw.split(b"\n")
        row = json.loads(lines[1])
        lines[1] = json.dumps(dict(row, text=row["text"] + " x")).encode()
        path.write_bytes(b"\n".join(lines))
    elif how == "another key":  # an intact file of another cell, under this cell's name
        other = next(p for p in tmp_path.rglob("*.jsonl") if p != path)
        path.write_bytes(other.read_bytes())
    elif how == "garbage":
        path.write_bytes(b"\x00\xff not json")
    elif how == "labels changed":  # rows and checksum rewritten consistently, but the labels are not the clean ones
        from ladle.shifts.corruptions import _text_checksum

        lines = raw.split(b"\n")
        header = json.loads(lines[0])
        rows = [json.loads(line) for line in lines[1:-1]]
        body = b"".join(json.dumps(dict(r, label=1 - r["label"])).encode() + b"\n" for r in rows)
        header["checksum"] = _text_checksum(body)
        path.write_bytes(json.dumps(header, sort_keys=True).encode() + b"\n" + body)


@pytest.mark.parametrize("how", ["truncated", "text edited", "another key", "garbage", "labels changed"])
def test_a_damaged_text_cache_file_is_rebuilt(clean, tmp_path, how):
    spec = parse_suite(SPEC, (5,))
    sets = corrupted_sets(clean, spec, cache=CorruptionCache(tmp_path))
    path = Path(sets[("case", 5)].source["cache"])
    good = path.read_bytes()
    _damage(path, how, tmp_path)
    assert path.read_bytes() != good
    cache = CorruptionCache(tmp_path)
    again = corrupted_sets(clean, spec, cache=cache)
    assert cache.damaged == [str(path)] and (cache.hits, cache.misses) == (1, 1)
    assert path.read_bytes() == good  # rebuilt in place, byte for byte
    assert again[("case", 5)].examples.texts == sets[("case", 5)].examples.texts
    assert not [p for p in tmp_path.rglob("*") if ".ladle-tmp-" in p.name]


def test_pairs_are_kept_and_only_the_first_text_is_corrupted(tmp_path, tokenization):
    rows = [("the movie was good", "a great story", 0), ("bad film", "very dull plot", 1)] * 4
    path = tmp_path / "pairs.csv"
    path.write_text("sentence1,sentence2,label\n" + "".join(f"{a},{b},{y}\n" for a, b, y in rows))
    data = open_data(f"{path}:all", preprocess=tokenization)
    assert data.examples.pairs is not None
    part = corrupted_set(data, "text-typos", "keyboard", 5, cache=CorruptionCache(tmp_path / "cache"))
    assert part.examples.pairs == data.examples.pairs and part.examples.texts != data.examples.texts
    assert part.examples.texts == corrupt_texts(data.examples.texts, "keyboard", 5)
    assert part.source["columns"] == data.source["columns"] == {"text": "sentence1", "pair": "sentence2",
                                                                "label": "label"}


def test_multiple_choice_questions_are_corrupted_and_choices_kept(tmp_path):
    from ladle.models.text import tokenization

    lm = tokenization(str(write_llama(tmp_path / "lm")))
    items = [{"question": f"the movie was {w} and the plot", "choices": ["good", "bad", "dull"], "answer": i % 3}
             for i, w in enumerate(["very good", "quite bad", "not fun", "a great story"] * 2)]
    data = open_data(f"{write_jsonl(tmp_path / 'choices.jsonl', items)}:all", preprocess=lm)
    assert data.task == "choice"
    sets = corrupted_sets(data, parse_suite("text-typos:word_dropout,char_delete", (5,)),
                          cache=CorruptionCache(tmp_path / "cache"))
    for (name, _), part in sets.items():
        assert part.task == "choice" and part.examples.choices == data.examples.choices
        assert part.examples.texts == corrupt_texts(data.examples.texts, name, 5)
        assert part.examples.texts != data.examples.texts and torch.equal(part.y, data.y)


def test_a_suite_for_the_other_kind_of_data_is_one_line(clean, tmp_path):
    with pytest.raises(LadleError, match="^corruptions: imagenet-c corrupts images, the data are text$"):
        corrupted_sets(clean, parse_suite("imagenet-c:fog", (1,)), cache=CorruptionCache(tmp_path))
    with pytest.raises(LadleError, match="^corruptions: laion-c corrupts images, the data are text$"):
        corrupted_set(clean, "laion-c", "mosaic", 1)
    images = open_data("digits:test", image_size=8)
    with pytest.raises(LadleError, match="^corruptions: text-typos corrupts text, the data are images$"):
        corrupted_sets(images, parse_suite(SPEC, (1,)), cache=CorruptionCache(tmp_path))
    with pytest.raises(LadleError, match="^corruptions: text-typos corrupts text, the data are images$"):
        corrupt_images(images.x[:2], "text-typos", "case", 1)
    assert not list(tmp_path.rglob("*.*"))


def test_alexnet_mce_baseline_is_refused_for_text_typos():
    from ladle.evaluation.robustness import alexnet_baseline

    with pytest.raises(LadleError, match="AlexNet errors are published for the 15 ImageNet-C corruptions only, "
                                         "not 'char_swap'"):
        alexnet_baseline(parse_suite(SPEC, (1,)).cells())


def test_taste_with_text_typos_end_to_end(folder, tmp_path, monkeypatch, cli):
    """`ladle taste ft0 ft1 --corruptions text-typos:char_swap,case --severities 1,5 --json`: a robustness table over
    the four corrupted splits, whose stored NLL and accuracy of ft0 are those of the model run by hand on the
    texts of the cached files; a second run reads every set from the cache and prints the same."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    for name in ("ft0", "ft1", "reviews.csv"):
        (tmp_path / name).symlink_to(folder / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LADLE_CACHE_DIR", str(tmp_path / "cache"))
    args = ["taste", "ft0", "ft1", "--data", "reviews.csv:test", "--corruptions", SPEC, "--severities", "1,5",
            "--json", "--db", tmp_path / "results.sqlite"]
    r = cli(*args)
    assert r.code == 0, r.err
    report = json.loads(r.out)
    [shift] = report["shifts"]
    assert shift["suite"] == "text-typos" and shift["data"] == "reviews.csv:test"
    models = ["ft0", "ft1", "uniform soup", "ensemble of 2"]
    assert [row["model"] for row in shift["summary"]] == models
    cells = {(c["model"], c["corruption"], c["severity"]): c["accuracy"] for c in shift["cells"]}
    assert set(cells) == {(m, c, s) for m in models for c in ("char_swap", "case") for s in (1, 5)}
    assert all(0 <= a <= 1 for a in cells.values())
    files = sorted((tmp_path / "cache" / "corruptions" / "text-typos").rglob("*.jsonl"))
    assert len(files) == 4

    # ft0's stored figures on each corrupted split, against the model run on the cached texts by hand
    with sqlite3.connect(tmp_path / "results.sqlite") as db:
        stored = {data: (acc, nll) for data, acc, nll in db.execute(
            "select data_name, accuracy, nll from evaluations where model_name = 'ft0'")}
    tokenizer = AutoTokenizer.from_pretrained(folder / "ft0")
    model = AutoModelForSequenceClassification.from_pretrained(folder / "ft0").eval()

    def by_hand(texts: list[str], labels: list[int]) -> tuple[float, float]:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        with torch.no_grad():
            logits = model(**batch).logits
        y = torch.tensor(labels)
        return (logits.argmax(1) == y).float().mean().item(), torch.nn.functional.cross_entropy(logits, y).item()

    nlls = {}
    for path in files:
        rows = [json.loads(line) for line in path.read_text().splitlines()[1:]]
        name, severity = path.parent.name, int(path.name.split("severity")[1].split("-")[0])
        split = f"reviews.csv:test ~ text-typos/{name}/{severity}"
        accuracy, nll = by_hand([row["text"] for row in rows], [row["label"] for row in rows])
        assert stored[split][0] == pytest.approx(accuracy) and cells[("ft0", name, severity)] == pytest.approx(accuracy)
        assert stored[split][1] == pytest.approx(nll, rel=1e-4)
        nlls[split] = nll
    clean_nll = stored["reviews.csv:test"][1]
    assert abs(nlls["reviews.csv:test ~ text-typos/char_swap/5"] - clean_nll) > 1e-3  # the model read other tokens
    for severity in (1, 5):  # the tokenizer lowercases: flipped case gives the clean tokens, and the clean figures
        assert nlls[f"reviews.csv:test ~ text-typos/case/{severity}"] == pytest.approx(clean_nll, rel=1e-6)

    # second run: every set from the cache (the files untouched), the same report
    before = {p: p.read_bytes() for p in files}
    r2 = cli(*args)
    assert r2.code == 0 and json.loads(r2.out) == report
    assert {p: p.read_bytes() for p in files} == before


def test_taste_refuses_an_image_suite_on_text_in_one_line(folder, tmp_path, monkeypatch, cli):
    monkeypatch.setenv("LADLE_CACHE_DIR", str(tmp_path / "cache"))
    r = cli("taste", folder / "ft0", "--data", f"{folder / 'reviews.csv'}:test", "--corruptions", "laion-c:mosaic",
            "--severities", "1")
    assert r.code == 2 and r.err.strip().splitlines() == ["ladle: error: corruptions: laion-c corrupts images, the "
                                                          "data are text"]
    r = cli("taste", folder / "ft0", "--data", f"{folder / 'reviews.csv'}:test", "--corruptions", SPEC,
            "--mce-baseline", "alexnet")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1 and "not 'char_swap'" in r.err
