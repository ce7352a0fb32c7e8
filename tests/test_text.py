"""Text classifiers and causal language models through taste, cook and the data layer, each figure checked against
an independent transformers computation on tiny models built here (tests/text_fixtures.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ladle
from ladle.data import open_data
from ladle.errors import LadleError
from ladle.evaluation.tasting import make_scorer
from ladle.models.text import tokenization
from ladle.studies.taste import taste_specs
from text_fixtures import VOCAB, reviews, write_bert, write_jsonl, write_llama, write_reviews_csv


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory):
    """Three tiny BERT classifiers (labels neg / pos in sorted order), two tiny Llamas and their data."""
    root = tmp_path_factory.mktemp("text")
    ft = [write_bert(root / f"ft{i}", seed=i) for i in range(3)]
    lm = [write_llama(root / f"lm{i}", seed=i) for i in range(2)]
    csv = write_reviews_csv(root / "reviews.csv", 60)
    corpus = write_jsonl(root / "corpus.jsonl", [{"text": t} for t, _ in reviews(25, seed=3)])
    choices = write_jsonl(root / "choices.jsonl", [
        {"question": f"is this good? {t}", "choices": ["yes", "no", "not sure at all"][: 2 + i % 2],
         "answer": int(label == "neg")} for i, (t, label) in enumerate(reviews(12, seed=4))])
    return {"root": root, "ft": ft, "lm": lm, "csv": csv, "corpus": corpus, "choices": choices}


def hf_logits(folder: Path, texts: list[str]) -> torch.Tensor:
    """Logits of a classifier folder, one text at a time (no padding at all), with transformers alone."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.inference_mode():
        return torch.cat([model(**tokenizer(t, return_tensors="pt", truncation=True, max_length=64)).logits
                          for t in texts])


def test_taste_of_text_classifiers_equals_transformers(kitchen):
    """Accuracy and NLL of every ingredient (length-sorted, per-batch padded, in workers) equal an unpadded
    one-by-one transformers evaluation; the HF folders name the model themselves (--model defaults to the first)."""
    report = taste_specs(kitchen["ft"][:2], data=[f"{kitchen['csv']}:all"], eval_batch_size=7, workers=2)
    texts = [t for t, _ in reviews(60)]
    labels = torch.tensor([int(label == "pos") for _, label in reviews(60)])  # classes sorted: neg, pos
    for row, folder in zip(report.ingredients(), kitchen["ft"][:2]):
        logits = hf_logits(folder, texts).double()
        m = row.metrics[f"{kitchen['csv']}:all"]
        assert m.accuracy == pytest.approx((logits.argmax(1) == labels).double().mean().item(), abs=1e-12)
        assert m.nll == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
        assert m.n == 60
    names = [r.kind for r in report.rows]
    assert names == ["ingredient", "ingredient", "soup", "ensemble"]


def test_language_model_corpus_nll_is_the_hand_computed_one(kitchen):
    """Corpus NLL = the summed NLL of every predicted token over their count; perplexity = exp of it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report = taste_specs(kitchen["lm"], data=[f"{kitchen['corpus']}:all"], eval_batch_size=4, workers=0)
    tokenizer = AutoTokenizer.from_pretrained(kitchen["lm"][0])
    model = AutoModelForCausalLM.from_pretrained(kitchen["lm"][0]).eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for text, _ in reviews(25, seed=3):
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
            total -= logp.gather(1, ids[0, 1:, None]).sum().item()
            count += ids.shape[1] - 1
    m = report.ingredients()[0].metrics[f"{kitchen['corpus']}:all"]
    assert m.accuracy is None and m.n == count
    assert m.nll == pytest.approx(total / count, rel=1e-5)
    assert m.perplexity == pytest.approx(math.exp(total / count), rel=1e-5)
    assert set(m.as_dict()) == {"nll", "perplexity", "n"}
    assert report.headline(f"{kitchen['corpus']}:all") == "nll"
    assert [r.kind for r in report.rows] == ["ingredient", "ingredient", "soup", "ensemble"]
    assert f"{kitchen['corpus']}:all" not in report.rows[-1].metrics  # no output ensemble of corpus NLLs


def test_multiple_choice_accuracy_is_the_best_summed_choice_log_likelihood(kitchen):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report = taste_specs(kitchen["lm"][:1], data=[f"{kitchen['choices']}:all"], eval_batch_size=5, workers=0)
    tokenizer = AutoTokenizer.from_pretrained(kitchen["lm"][0])
    model = AutoModelForCausalLM.from_pretrained(kitchen["lm"][0]).eval()
    rows = [json.loads(line) for line in kitchen["choices"].read_text().splitlines()]
    right = 0
    with torch.inference_mode():
        for row in rows:
            context = tokenizer(row["question"])["input_ids"]
            scores = []
            for choice in row["choices"]:
                cont = tokenizer(" " + choice, add_special_tokens=False)["input_ids"]
                ids = torch.tensor([context + cont])
                logp = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
                picked = logp.gather(1, ids[0, 1:, None])[:, 0]
                scores.append(picked[-len(cont):].sum().item())
            right += int(np.argmax(scores) == row["answer"])
    m = report.ingredients()[0].metrics[f"{kitchen['choices']}:all"]
    assert m.accuracy == pytest.approx(right / len(rows), abs=1e-12) and m.n == len(rows)


def test_batches_are_sorted_by_length_padded_per_batch_and_results_come_back_in_example_order(kitchen):
    data = open_data(f"{kitchen['csv']}:all", preprocess=tokenization(str(kitchen["ft"][0])), workers=0)
    lengths = [len(t) for t in data.examples.texts]
    assert [lengths[i] for i in data.order] == sorted(lengths)
    batches = list(data.batches(8, workers=0))
    padded = sum(b["input_ids"].numel() for b in batches)
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    longest = max(b["input_ids"].shape[1] for b in batches)
    assert padded <= 1.25 * real < 0.8 * longest * len(data)  # sorted by characters: tokens follow them closely
    for batch in batches:  # padded to its own longest, no further
        assert batch["attention_mask"].sum(1).max() == batch["input_ids"].shape[1]
    one = make_scorer(str(kitchen["ft"][0]), [f"{kitchen['csv']}:all"], eval_batch_size=1, workers=0)
    many = make_scorer(str(kitchen["ft"][0]), [f"{kitchen['csv']}:all"], eval_batch_size=16, workers=2)
    state = {k: v for k, v in one.evaluator.model.state_dict().items()}
    a = one.evaluator.logits("m", state, one.split)
    b = many.evaluator.logits("m", state, many.split)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(a, hf_logits(kitchen["ft"][0], data.examples.texts).float(), rtol=1e-4, atol=1e-5)


def test_string_labels_follow_the_model_label2id(tmp_path):
    """A config with real label names maps the data's names through label2id (not their sorted order)."""
    model = write_bert(tmp_path / "named", id2label={0: "pos", 1: "neg"})
    csv = write_reviews_csv(tmp_path / "r.csv", 10)
    data = open_data(f"{csv}:all", preprocess=tokenization(str(model)))
    assert data.classes == ["pos", "neg"]
    assert data.y.tolist() == [int(label == "neg") for _, label in reviews(10)]


def test_text_files_in_every_format_read_the_same(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = reviews(20)
    texts, labels = [t for t, _ in rows], [label for _, label in rows]
    (tmp_path / "r.tsv").write_text("label\tsentence\n" + "".join(f"{b}\t{a}\n" for a, b in rows))
    pq.write_table(pa.table({"text": texts, "label": labels}), tmp_path / "r.parquet")
    write_jsonl(tmp_path / "r.jsonl", [{"text": t, "label": label} for t, label in rows])
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts, "label": labels}),
                          "test": datasets.Dataset.from_dict({"text": texts[:6], "label": labels[:6]})}
                         ).save_to_disk(str(tmp_path / "hf"))
    tok = tokenization(str(write_bert(tmp_path / "m")))
    expected = [int(label == "pos") for label in labels]
    for name in ("r.tsv", "r.parquet", "r.jsonl"):
        data = open_data(f"{tmp_path / name}:all", preprocess=tok)
        assert data.examples.texts == texts and data.y.tolist() == expected, name
    hf = open_data(f"{tmp_path / 'hf'}:test", preprocess=tok)
    assert hf.examples.texts == texts[:6] and hf.y.tolist() == expected[:6] and hf.classes == ["neg", "pos"]


def test_rotten_tomatoes_is_split_by_movie(kitchen):
    tok = tokenization(str(kitchen["ft"][0]))
    parts = {s: open_data(f"rotten-tomatoes:{s}", preprocess=tok, seed=1) for s in ("train", "heldout", "test")}
    movies = {s: set(p.examples.groups) for s, p in parts.items()}
    assert sum(len(p) for p in parts.values()) == 12752
    assert not movies["train"] & movies["test"] and not movies["heldout"] & movies["test"]
    assert not movies["train"] & movies["heldout"]
    assert parts["test"].classes == ["rotten", "fresh"] and 0.15 < len(parts["test"]) / 12752 < 0.25
    again = open_data("rotten-tomatoes:test", preprocess=tok, seed=2)  # the test movies do not move with the seed
    assert again.examples.texts == parts["test"].examples.texts


def independent_greedy(folders: list[Path], texts, labels) -> list[int]:
    """Greedy soup by hand (Wortsman et al. recipe 1) with transformers: ranked by held-out accuracy, each next
    ingredient kept if the uniform soup of the kept ones is not worse. Returns the kept indices."""
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folders[0])
    model = AutoModelForSequenceClassification.from_pretrained(folders[0]).eval()
    states = [load_file(str(f / "model.safetensors")) for f in folders]

    def accuracy(state) -> float:
        model.load_state_dict(state, strict=False)
        with torch.inference_mode():
            logits = torch.cat([model(**tokenizer(t, return_tensors="pt")).logits for t in texts])
        return (logits.double().softmax(-1).argmax(1) == labels).double().mean().item()

    scores = [accuracy(s) for s in states]
    ranked = sorted(range(len(states)), key=lambda i: -scores[i])
    kept, best = [ranked[0]], scores[ranked[0]]
    for i in ranked[1:]:
        trial = kept + [i]
        soup = {k: sum(states[j][k].double() for j in trial) / len(trial) for k in states[0]}
        score = accuracy({k: v.to(states[0][k].dtype) for k, v in soup.items()})
        if score >= best:
            kept, best = trial, score
    return sorted(kept)


def test_greedy_soup_of_text_classifiers_equals_an_independent_greedy_and_loads_as_an_hf_folder(kitchen, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "soup"
    scorer = make_scorer(str(kitchen["ft"][0]), [f"{kitchen['csv']}:heldout"], workers=0, split="heldout")
    soup = ladle.cook("greedy", [str(f) for f in kitchen["ft"]], out=out, scorer=scorer, full_scores=True)
    data = scorer.evaluator.splits[scorer.split]
    kept = independent_greedy(kitchen["ft"], data.examples.texts, data.y)
    weights = soup.manifest["weights"]
    assert [i for i, w in enumerate(weights) if w > 0] == kept
    model = AutoModelForSequenceClassification.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(kitchen["ft"][0]).get_vocab()
    assert model.config.num_labels == 2


def test_greedy_on_language_models_keeps_a_candidate_while_the_loss_is_not_worse(kitchen, tmp_path):
    scorer = make_scorer(str(kitchen["lm"][0]), [f"{kitchen['corpus']}:all"], workers=0, split="all")
    assert scorer.metric == "nll"
    soup = ladle.cook("greedy", [str(f) for f in kitchen["lm"]], out=tmp_path / "lm-soup", scorer=scorer)
    steps = soup.manifest["trace"]["greedy"]["steps"] if "greedy" in soup.manifest["trace"] else \
        soup.manifest["trace"]["steps"]
    assert steps[0]["ingredient_score"] == max(s["ingredient_score"] for s in steps)  # -NLL: the lowest loss first
    second = steps[1]
    assert second["accepted"] == (second["soup_score"] >= steps[0]["soup_score"])


def test_bad_text_input_is_one_line_exit_2_and_nothing_written(kitchen, tmp_path, cli):
    ft0, ft1 = (str(f) for f in kitchen["ft"][:2])
    out = tmp_path / "soup"

    def refused(data_file, *extra, says):
        r = cli("cook", "greedy", ft0, ft1, "--data", f"{data_file}:all", "--workers", "0", "-o", out, *extra)
        assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
        assert says in r.err and str(data_file) in r.err, r.err
        assert not out.exists()

    (tmp_path / "nocol.csv").write_text("review,label\ngood movie,pos\nbad movie,neg\n")
    refused(tmp_path / "nocol.csv", says="no text column (text, sentence, sentence1; choose one with --text-column); "
                                         "the columns are: review, label")
    (tmp_path / "nolabel.csv").write_text("text,stars\ngood movie,5\nbad movie,1\n")
    refused(tmp_path / "nolabel.csv", says="no label column 'label'")
    (tmp_path / "toomany.csv").write_text("text,label\ngood movie,1\nbad movie,2\nfine,0\n")
    refused(tmp_path / "toomany.csv", says="column 'label', row 2: label '2' (2) is not one of the model's 2 labels")
    (tmp_path / "latin1.csv").write_bytes("text,label\ncaf\xe9 movie,1\nbad,0\n".encode("latin-1"))
    refused(tmp_path / "latin1.csv", says="not UTF-8 text (line 2")
    (tmp_path / "empty.csv").write_text("text,label\ngood movie,1\n  ,0\n")
    refused(tmp_path / "empty.csv", says="column 'text', row 2: empty text")
    named = str(write_bert(tmp_path / "named", id2label={0: "neg", 1: "pos"}))
    (tmp_path / "meh.csv").write_text("text,label\ngood movie,pos\nso so,meh\n")
    r = cli("taste", named, "--data", f"{tmp_path / 'meh.csv'}:all", "--workers", "0")
    assert r.code == 2 and "column 'label', row 2: label 'meh' is not one of the model's labels (neg, pos)" in r.err


def test_ingredients_with_different_tokenizers_are_refused_before_any_evaluation(kitchen, tmp_path, cli):
    swapped = list(VOCAB)  # same size, so every tensor fits: only the token ids mean other words
    i, j = swapped.index("good"), swapped.index("bad")
    swapped[i], swapped[j] = swapped[j], swapped[i]
    other = write_bert(tmp_path / "other", vocab=swapped)
    out = tmp_path / "soup"
    r = cli("cook", "uniform", kitchen["ft"][0], other, "-o", out)
    assert r.code == 2 and "its tokenizer differs from the one in" in r.err and str(other) in r.err
    assert not out.exists()
    r = cli("taste", kitchen["ft"][0], other, "--data", f"{kitchen['csv']}:all")
    assert r.code == 2 and "its tokenizer differs" in r.err and len(r.err.strip().splitlines()) == 1


def test_text_tasting_options_are_flags_recorded_in_the_reproduce_command(kitchen, tmp_path, cli):
    r = cli("taste", *kitchen["ft"][:2], "--data", f"{kitchen['csv']}:all", "--max-length", "8", "--json",
            "--workers", "0", "--num-labels", "2")  # (--num-labels: --num-classes by the name HF users know)
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert [row["kind"] for row in report["rows"]] == ["ingredient", "ingredient", "soup", "ensemble"]
    assert set(report["rows"][0]["metrics"][f"{kitchen['csv']}:all"]) == {"accuracy", "nll", "ece", "n"}
    from ladle.spec import TastingSpec

    spec = TastingSpec(model="m", data=["d"], max_length=8, text_column="review", label_column="stars")
    assert spec.argv()[-6:] == ["--max-length", "8", "--text-column", "review", "--label-column", "stars"]
    with pytest.raises(LadleError, match="max-length: must be at least 2"):
        TastingSpec(max_length=1)


def test_learned_soup_of_language_models_minimises_the_corpus_token_nll(kitchen, tmp_path):
    """One batch holding the whole corpus: the first epoch's loss is the uniform soup's corpus NLL (its weights
    start equal), exactly what `taste` reports for that soup; beside a damaged copy of itself, the language model
    gets the larger weight."""
    from transformers import AutoModelForCausalLM

    damaged = AutoModelForCausalLM.from_pretrained(kitchen["lm"][0])
    with torch.no_grad():
        torch.manual_seed(0)
        for p in damaged.parameters():
            p.add_(torch.randn_like(p))
    damaged.save_pretrained(tmp_path / "damaged")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        (tmp_path / "damaged" / name).write_bytes((kitchen["lm"][0] / name).read_bytes())
    folders = [str(kitchen["lm"][0]), str(tmp_path / "damaged")]
    scorer = make_scorer(folders[0], [f"{kitchen['corpus']}:all"], workers=0, split="all")
    soup = ladle.cook("learned", folders, out=tmp_path / "learned", scorer=scorer, epochs=3, batch_size=64)
    losses = soup.manifest["trace"]["learned"]["loss_per_epoch"]
    report = taste_specs(folders, data=[f"{kitchen['corpus']}:all"], workers=0)
    uniform = next(r for r in report.rows if r.name == "uniform soup").metrics[f"{kitchen['corpus']}:all"]
    assert losses[0] == pytest.approx(uniform.nll, rel=1e-4) and losses[-1] < losses[0]
    assert soup.manifest["weights"][0] > 0.5


def test_prediction_measures_and_grids_of_text_classifiers(kitchen, tmp_path, cli):
    """check --predict compares the classifiers' outputs on texts (disagreement by hand); a grid soups every pair
    and scores each soup as taste scores it."""
    from ladle.analysis.predict import pair_measures
    from ladle.results.store import ResultStore

    ft0, ft1 = kitchen["ft"][:2]
    measures = pair_measures(ft0, ft1, data=f"{kitchen['csv']}:all", workers=0)
    texts = [t for t, _ in reviews(60)]
    a, b = hf_logits(ft0, texts), hf_logits(ft1, texts)
    assert measures["disagreement"] == pytest.approx((a.argmax(1) != b.argmax(1)).double().mean().item(), abs=1e-12)
    r = cli("grid", ft0, ft1, "--data", f"{kitchen['csv']}:all", "--db", tmp_path / "g.sqlite", "--workers", "0",
            "--alpha", "0.5")
    assert r.code == 0, r.err
    with ResultStore(tmp_path / "g.sqlite") as store:
        (grid,) = store.grids()
        (row,) = store.grid_soups(grid["grid"])
    report = taste_specs([ft0, ft1], data=[f"{kitchen['csv']}:all"], workers=0)
    uniform = next(r for r in report.rows if r.name == "uniform soup").metrics[f"{kitchen['csv']}:all"]
    assert row["accuracy"] == pytest.approx(100 * uniform.accuracy, abs=1e-9)
    assert row["loss"] == pytest.approx(uniform.nll, rel=1e-5)


def test_a_user_metric_scores_every_model_and_drives_greedy(kitchen, tmp_path):
    """--metric package.module:function: the split's score is the mean of the function's per-example scores (here
    the top-1 probability, checked by hand), stored under its own key; greedy keeps the higher score."""
    report = taste_specs(kitchen["ft"][:2], data=[f"{kitchen['csv']}:all"], metric="text_fixtures:mean_confidence",
                         workers=0)
    texts = [t for t, _ in reviews(60)]
    for row, folder in zip(report.ingredients(), kitchen["ft"][:2]):
        m = row.metrics[f"{kitchen['csv']}:all"]
        expected = hf_logits(folder, texts).double().softmax(-1).max(-1).values.mean().item()
        assert m.score == pytest.approx(expected, rel=1e-5) and m.accuracy is None
    assert report.headline(f"{kitchen['csv']}:all") == "score"
    assert [r.kind for r in report.rows] == ["ingredient", "ingredient", "soup"]  # no ensemble of scores
    scorer = make_scorer(str(kitchen["ft"][0]), [f"{kitchen['csv']}:heldout"], workers=0,
                         metric="text_fixtures:mean_confidence")
    assert scorer.metric == "score"
    soup = ladle.cook("greedy", [str(f) for f in kitchen["ft"]], out=tmp_path / "s", scorer=scorer)
    steps = soup.manifest["trace"]["greedy"]["steps"]
    assert steps[0]["ingredient_score"] == max(s["ingredient_score"] for s in steps)
    with pytest.raises(LadleError, match="metric: cannot import 'no_such_module:f'"):
        taste_specs(kitchen["ft"][:1], data=[f"{kitchen['csv']}:all"], metric="no_such_module:f")


def test_corrupt_builds_text_typos_through_the_model_tokenizer_and_needs_one(kitchen, tmp_path, cli):
    r = cli("corrupt", "--data", f"{kitchen['csv']}:all", "--suite", "text-typos:case", "--severities", "2",
            "--model", kitchen["ft"][0], "--out", tmp_path / "typos")
    assert r.code == 0, r.err
    assert "1 corrupted sets of 60 texts" in r.out and "1 built, 0 reused" in r.out
    (file,) = (tmp_path / "typos").rglob("*.jsonl")
    assert file.name.endswith("-severity2-seed0.jsonl")
    r = cli("corrupt", "--data", f"{kitchen['csv']}:all", "--suite", "text-typos", "--out", tmp_path / "none")
    assert r.code == 2 and "text-typos corrupts text read through a model's tokenizer: give --model" in r.err


def test_self_seasoning_reads_text_classifiers_label_free(kitchen, tmp_path):
    """Self-season on texts: the classifier's input (BERT's pooled output) as the embedding, no label read."""
    scorer = make_scorer(str(kitchen["ft"][0]), [f"{kitchen['csv']}:all"], workers=0, split="all")
    soup = ladle.cook("self-season", [str(f) for f in kitchen["ft"][:2]], out=tmp_path / "ss", scorer=scorer,
                      k=4, batch_size=32, epochs=2)
    record = soup.manifest["trace"]["self_season"]
    assert record["labels"] == "never read" and len(record["losses"] if "losses" in record else
                                                    record["loss_per_epoch"]) == 2
    assert sum(soup.manifest["weights"]) == pytest.approx(1.0)
