"""Text splits: tables of text (classification, a language model's corpus) or multiple-choice items, tokenised by
the model's own tokenizer in DataLoader workers, in batches of similar length padded per batch.

A text source is read into a `Table` (columns of values, never tokenised); the tasting options pick its columns
(`--text-column`, `--text-pair-column`, `--label-column`) and the model's task decides what an example is:
- a classifier's example is a text (and pair) with a label; string labels go through the model's `label2id` when
  its config has real names, else through their sorted order;
- a causal language model's example is a text whose every predicted token is scored (corpus NLL), or, when the
  rows have `choices` and `answer`, a question whose choices are scored by their summed log-likelihood.
Batches visit the examples sorted by length (`TextSet.order`), so short texts are never padded to long ones; the
evaluator puts the results back in example order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ladle.errors import LadleError
from ladle.io.hf import tokenizer_identity  # noqa: F401  (re-exported: what a text model's inputs depend on)

TEXT_DEFAULTS = ("text", "sentence", "sentence1")  # the first column found is the text (sentence1 pairs with sentence2)
QUESTION_COLUMNS = ("question", "context")  # multiple choice: the prompt the choices continue
MAX_LENGTH = 512
MISSING_LOGLIK = -1e9  # a choice an item does not have: never the argmax, no NaN in metrics
WORKER_BATCHES = 32  # a split of fewer batches is tokenised in this process unless --workers says otherwise


@dataclass
class Table:
    """The columns of one split of a text source, as read (values not yet checked)."""

    columns: dict[str, list]
    path: Path
    label_names: dict[str, list[str]] | None = None  # declared label vocabularies (HF ClassLabel columns), in order
    label_universe: Callable[[str], list[str] | None] | None = None  # a column's string labels over every split
    groups: list[str] | None = None  # examples that must stay in one split (Rotten Tomatoes' movies)


@dataclass(frozen=True)
class TextColumns:
    """Which columns hold the text, its pair and the label (None: the defaults)."""

    text: str | None = None
    pair: str | None = None
    label: str | None = None


@dataclass(frozen=True)
class Tokenization:
    """A text model's input pipeline (what `Preprocess` is to an image model): its tokenizer folder, the identity of
    that tokenizer (vocabulary and special tokens), the truncation length and the model's task."""

    tokenizer: str
    identity: str
    max_length: int
    task: str  # "classify" | "causal-lm"
    label2id: tuple[tuple[str, int], ...] | None = None  # real label names of the model's config
    origin: str = "tokenizer"
    num_labels: int | None = None  # the head a classifier folder already has (None: an encoder, or an LM)

    def at_size(self, size) -> Tokenization:
        return self

    def at_length(self, max_length: int) -> Tokenization:
        """Truncating at another length (`--max-length`)."""
        from dataclasses import replace

        return replace(self, max_length=max_length)

    def describe(self) -> dict:
        return {"tokenizer": self.identity, "max_length": self.max_length, "task": self.task, "origin": self.tokenizer}

    def key(self) -> str:
        what = {"tokenizer": self.identity, "max_length": self.max_length, "task": self.task}
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]

    def load(self):
        return load_tokenizer(self.tokenizer)


def load_tokenizer(folder):
    """The folder's tokenizer (local files only); causal LMs often have no pad token: their EOS pads (masked)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:
        raise LadleError(f"model: cannot load the tokenizer: {str(e).splitlines()[0]}", file=folder) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


class TextExamples:
    """Labelled texts (with an optional pair), or multiple-choice items (`choices`: a list per example)."""

    kind = "text"

    def __init__(self, texts: list[str], labels, classes: list[str], path: Path, *, pairs: list[str] | None = None,
                 choices: list[list[str]] | None = None, rows=None, columns: dict | None = None,
                 groups: list[str] | None = None):
        self.texts, self.pairs, self.choices = list(texts), pairs, choices
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = list(classes)
        self.path = Path(path)
        self.rows = np.arange(len(self.texts)) if rows is None else np.asarray(rows, dtype=np.int64)
        self.columns = dict(columns or {})
        self.groups = groups

    def __len__(self) -> int:
        return len(self.texts)

    def where(self, i: int) -> str:
        return f"{self.path} (row {int(self.rows[i]) + 1})"

    def select(self, indices) -> TextExamples:
        idx = np.asarray(indices, dtype=np.int64)
        pick = (lambda values: None if values is None else [values[i] for i in idx])
        return TextExamples(pick(self.texts), self.labels[idx], self.classes, self.path, pairs=pick(self.pairs),
                            choices=pick(self.choices), rows=self.rows[idx], columns=self.columns,
                            groups=pick(self.groups))

    @staticmethod
    def join(parts: list[TextExamples]) -> TextExamples:
        """Several splits read as one (`:all`): their classes must agree."""
        first = parts[0]
        for part in parts[1:]:
            if part.classes != first.classes:
                raise LadleError(f"the splits number their classes differently ({first.classes} and "
                                 f"{part.classes})", file=part.path)
        cat = (lambda name: None if getattr(first, name) is None else [v for p in parts for v in getattr(p, name)])
        return TextExamples(cat("texts"), np.concatenate([p.labels for p in parts]), first.classes, first.path,
                            pairs=cat("pairs"), choices=cat("choices"), columns=first.columns, groups=cat("groups"),
                            rows=np.concatenate([p.rows for p in parts]))

    def replace_texts(self, texts: list[str]) -> TextExamples:
        """The same examples with other texts (a corrupted copy)."""
        return TextExamples(texts, self.labels, self.classes, self.path, pairs=self.pairs, choices=self.choices,
                            rows=self.rows, columns=self.columns, groups=self.groups)

    def lengths(self) -> np.ndarray:
        """Characters per example (what sorting into batches uses: tokens follow characters closely)."""
        n = np.array([len(t) for t in self.texts], dtype=np.int64)
        if self.pairs is not None:
            n += [len(p) for p in self.pairs]
        if self.choices is not None:
            n += [max(len(c) for c in cs) for cs in self.choices]
        return n

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"{self.kind}\n{json.dumps(self.columns, sort_keys=True)}\n".encode())
        for values in (self.texts, self.pairs):
            if values is not None:
                h.update("\0".join(values).encode())
                h.update(b"\1")
        if self.choices is not None:
            h.update(json.dumps(self.choices).encode())
        h.update(self.labels.tobytes())
        return h.hexdigest()[:16]


def text_examples(table: Table, columns: TextColumns, tokenization: Tokenization) -> TextExamples:
    """The examples a model of `tokenization.task` reads from a table, every value checked: one line naming the file
    and the column (and the row) of the first bad one."""
    path, names = table.path, list(table.columns)
    if tokenization.task == "causal-lm" and "choices" in table.columns and columns.text is None:
        return _choice_examples(table)
    text_col = columns.text or next((c for c in TEXT_DEFAULTS if c in table.columns), None)
    if text_col is None or text_col not in table.columns:
        wanted = f"no text column '{columns.text}'" if columns.text else \
            f"no text column ({', '.join(TEXT_DEFAULTS)}; choose one with --text-column)"
        raise LadleError(f"{wanted}; the columns are: {', '.join(names)}", file=path)
    pair_col = columns.pair or ("sentence2" if text_col == "sentence1" and "sentence2" in table.columns else None)
    if pair_col is not None and pair_col not in table.columns:
        raise LadleError(f"no text-pair column '{pair_col}'; the columns are: {', '.join(names)}", file=path)
    texts = _texts(table, text_col)
    pairs = _texts(table, pair_col) if pair_col else None
    record = {"text": text_col} | ({"pair": pair_col} if pair_col else {})
    if tokenization.task == "causal-lm":
        return TextExamples(texts, np.zeros(len(texts), dtype=np.int64), ["corpus"], path, pairs=pairs,
                            columns=record, groups=table.groups)
    label_col = columns.label or "label"
    if label_col not in table.columns:
        raise LadleError(f"no label column '{label_col}' (choose one with --label-column); the columns are: "
                         f"{', '.join(names)}", file=path)
    labels, classes = _labels(table, label_col, dict(tokenization.label2id) if tokenization.label2id else None)
    return TextExamples(texts, labels, classes, path, pairs=pairs, columns=record | {"label": label_col},
                        groups=table.groups)


def _texts(table: Table, column: str) -> list[str]:
    values = [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in table.columns[column]]
    for i, v in enumerate(values):  # (digits-only texts of a csv were read as integers)
        if not isinstance(v, str):
            raise LadleError(f"column '{column}', row {i + 1}: expected text, got {type(v).__name__} {v!r}"[:200],
                             file=table.path)
        if not v.strip():
            raise LadleError(f"column '{column}', row {i + 1}: empty text", file=table.path)
    return list(values)


def _labels(table: Table, column: str, label2id: dict | None) -> tuple[np.ndarray, list[str]]:
    """Class indices and names: integers as given; names through the model's label2id, a declared vocabulary, or
    their sorted order over the whole source (so every split numbers them alike)."""
    values = table.columns[column]
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip()):
            raise LadleError(f"column '{column}', row {i + 1}: no label", file=table.path)
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        labels = np.asarray(values, dtype=np.int64)
        if len(labels) and labels.min() < 0:
            i = int(np.argmin(labels))
            raise LadleError(f"column '{column}', row {i + 1}: label {int(labels[i])} is negative", file=table.path)
        declared = (table.label_names or {}).get(column)
        if declared is not None:
            return labels, list(declared)
        if label2id is not None:
            return labels, [name for name, _ in sorted(label2id.items(), key=lambda kv: kv[1])]
        return labels, [str(i) for i in range(int(labels.max(initial=-1)) + 1)]
    names = [str(v) for v in values]
    if label2id is not None:
        for i, name in enumerate(names):
            if name not in label2id:
                raise LadleError(f"column '{column}', row {i + 1}: label '{name}' is not one of the model's labels "
                                 f"({', '.join(label2id)})", file=table.path)
        classes = [name for name, _ in sorted(label2id.items(), key=lambda kv: kv[1])]
        return np.asarray([label2id[n] for n in names], dtype=np.int64), classes
    universe = table.label_universe(column) if table.label_universe else None
    classes = list(universe or sorted(set(names)))
    index = {c: i for i, c in enumerate(classes)}
    return np.asarray([index[n] for n in names], dtype=np.int64), classes


def _choice_examples(table: Table) -> TextExamples:
    """Multiple choice: `question` or `context`, `choices` (a list of texts) and `answer` (the right one's index)."""
    path = table.path
    question = next((c for c in QUESTION_COLUMNS if c in table.columns), None)
    if question is None or "answer" not in table.columns:
        raise LadleError("multiple choice needs the fields question (or context), choices and answer; the fields "
                         f"are: {', '.join(table.columns)}", file=path)
    texts = _texts(table, question)
    choices, answers = [], []
    for i, (cs, a) in enumerate(zip(table.columns["choices"], table.columns["answer"])):
        if not isinstance(cs, list) or len(cs) < 2 or not all(isinstance(c, str) and c.strip() for c in cs):
            raise LadleError(f"field 'choices', row {i + 1}: expected a list of at least two non-empty texts",
                             file=path)
        if not isinstance(a, int) or isinstance(a, bool) or not 0 <= a < len(cs):
            raise LadleError(f"field 'answer', row {i + 1}: expected the index of a choice (0-{len(cs) - 1}), "
                             f"got {a!r}", file=path)
        choices.append(list(cs))
        answers.append(a)
    width = max((len(c) for c in choices), default=0)
    return TextExamples(texts, answers, [str(i) for i in range(width)], path, choices=choices,
                        columns={"text": question, "choices": "choices", "label": "answer"})


def dataset_table(path: Path, name: str, ds, parts: dict) -> Table:
    """A Hugging Face `datasets` split without an image column: its columns as a table (a ClassLabel's names are
    the classes; string labels are numbered over every split)."""
    import datasets

    label_names = {c: list(f.names) for c, f in ds.features.items() if isinstance(f, datasets.ClassLabel)}

    def universe(column: str) -> list[str] | None:
        return sorted({v for p in parts.values() if column in p.features for v in p[column] if isinstance(v, str)}) or None

    return Table({c: list(ds[c]) for c in ds.column_names}, Path(path) / name, label_names, universe)


class _Tokenized(torch.utils.data.Dataset):
    """Batch b -> its examples tokenised and padded to the batch's longest (built in the worker that uses it)."""

    def __init__(self, examples: TextExamples, tokenization: Tokenization, batches: list[np.ndarray]):
        self.examples, self.tokenization, self.index = examples, tokenization, batches
        self._tokenizer = None

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, b: int) -> dict:
        if self._tokenizer is None:
            self._tokenizer = self.tokenization.load()
        return encode(self._tokenizer, self.examples, self.index[b], self.tokenization)


def encode(tokenizer, examples: TextExamples, idx, tokenization: Tokenization) -> dict:
    """Token ids of examples `idx`, padded to the longest: a classifier's inputs, a corpus' tokens (every predicted
    one scored), or a multiple-choice item's question + choice sequences with the choice tokens marked."""
    idx = [int(i) for i in idx]
    texts = [examples.texts[i] for i in idx]
    if examples.choices is not None:
        return _encode_choices(tokenizer, texts, [examples.choices[i] for i in idx], tokenization.max_length)
    pairs = [examples.pairs[i] for i in idx] if examples.pairs is not None else None
    batch = tokenizer(texts, pairs, truncation=True, max_length=tokenization.max_length, padding="longest",
                      return_tensors="pt")
    out = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    if tokenization.task == "causal-lm":
        out["target_mask"] = out["attention_mask"].clone()  # every real token after the first is predicted
    return out


def _encode_choices(tokenizer, questions: list[str], choices: list[list[str]], max_length: int) -> dict:
    """One sequence per (question, choice): the question with the tokenizer's special tokens, then the choice
    (after a space) without; the choice's tokens are the ones scored. Too long: the question loses its start."""
    rows, targets, counts = [], [], []
    for question, options in zip(questions, choices):
        context = tokenizer(question, add_special_tokens=True)["input_ids"]
        counts.append(len(options))
        for option in options:
            cont = tokenizer(" " + option.lstrip(), add_special_tokens=False)["input_ids"]
            ids = (context + cont)[-max_length:]
            n_cont = min(len(cont), len(ids) - 1)
            rows.append(ids)
            targets.append([0] * (len(ids) - n_cont) + [1] * n_cont)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    target = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (row, t) in enumerate(zip(rows, targets)):
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, : len(row)] = 1
        target[r, : len(row)] = torch.tensor(t)
    return {"input_ids": ids, "attention_mask": mask, "target_mask": target,
            "choice_counts": torch.tensor(counts, dtype=torch.long)}


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(batch: dict) -> dict:
    """The keys of a text batch the model takes (the rest say how to read its outputs)."""
    return {k: v for k, v in batch.items() if k in MODEL_INPUTS}


def token_nll(logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence: the summed negative log-likelihood of its scored tokens (each predicted from the ones before)
    and how many there are. logsumexp − the picked logit in float32, summed in float64: no float64 copy of the
    (batch, length, vocabulary) logits, which cost as much time as the forward pass (bench/text.py)."""
    ids, target = batch["input_ids"].to(logits.device), batch["target_mask"].to(logits.device)
    logits = logits[:, :-1].float()
    nll = torch.logsumexp(logits, -1) - logits.gather(-1, ids[:, 1:, None]).squeeze(-1)
    scored = target[:, 1:].double()
    return (nll.double() * scored).sum(1), scored.sum(1)


def readout(task: str, logits: torch.Tensor, batch) -> torch.Tensor:
    """A model's outputs on a batch -> one row per example: class logits, [summed token NLL, tokens] of a corpus
    text, or the summed log-likelihood of each choice (an item's missing choices at MISSING_LOGLIK)."""
    if task == "classify":
        return logits
    total, count = token_nll(logits, batch)
    if task == "lm":
        return torch.stack([total, count], 1).float()
    counts = batch["choice_counts"].tolist()
    out = torch.full((len(counts), max(counts)), MISSING_LOGLIK, dtype=torch.float64)
    start = 0
    for i, k in enumerate(counts):
        out[i, :k] = -total[start : start + k]
        start += k
    return out.float()


class TextSet:
    """A split of a text source read through the model's tokenizer, batch by batch, shortest first."""

    def __init__(self, examples: TextExamples, tokenization: Tokenization, source: dict, workers: int | None = None):
        self.examples = examples
        self.tokenization = tokenization
        self.y = torch.from_numpy(examples.labels)
        self.classes = examples.classes
        self.workers = workers
        self.task = ("choice" if examples.choices is not None else "lm") if tokenization.task == "causal-lm" \
            else "classify"
        identity = f"{examples.fingerprint()}|{tokenization.key()}"
        self.source = dict(source, size=len(examples), columns=examples.columns, max_length=tokenization.max_length,
                           tokenizer=tokenization.identity,
                           fingerprint=hashlib.sha256(identity.encode()).hexdigest()[:16])
        self.order = np.argsort(examples.lengths(), kind="stable")  # the order batches visit the examples in

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, indices, tag: str) -> TextSet:
        return TextSet(self.examples.select(indices), self.tokenization, dict(self.source, subset=tag), self.workers)

    def cached(self, **_) -> TextSet:
        """Texts are tokenised as they are read (cheaper than reading a cache back): nothing to cache."""
        return self

    def take(self, indices) -> dict:
        """Examples `indices`, tokenised in this process (a learned soup's shuffled batches)."""
        if not hasattr(self, "_tokenizer"):
            self._tokenizer = self.tokenization.load()
        return encode(self._tokenizer, self.examples, indices, self.tokenization)

    def batches(self, batch_size: int, *, workers: int | None = None, pin_memory: bool = False) -> Iterator[dict]:
        """Tokenised batches of `batch_size` examples in `self.order` (similar lengths, padded per batch),
        tokenised by `workers` processes (0: here)."""
        from ladle.data.stream import default_workers

        groups = [self.order[s : s + batch_size] for s in range(0, len(self), batch_size)]
        workers = self.workers if workers is None else workers
        if workers is None:  # forking workers that each load the tokenizer costs more than it saves on small splits
            workers = default_workers() if len(groups) >= WORKER_BATCHES else 0
        if len(groups) <= 1:
            workers = 0
        loader = torch.utils.data.DataLoader(_Tokenized(self.examples, self.tokenization, groups), batch_size=None,
                                             shuffle=False, num_workers=min(workers, len(groups)),
                                             pin_memory=pin_memory)
        yield from loader

    def readout(self, logits: torch.Tensor, batch) -> torch.Tensor:
        return readout(self.task, logits, batch)


def check_labels(data: TextSet, outputs: int) -> None:
    """A classifier's labels must all be outputs of the model: one line naming the file, the column and the label."""
    if data.task != "classify" or not len(data):
        return
    top = int(data.y.max())
    if top >= outputs:
        i = int(torch.argmax(data.y))
        column = data.examples.columns.get("label", "label")
        name = data.classes[top] if top < len(data.classes) else str(top)
        raise LadleError(f"column '{column}', row {int(data.examples.rows[i]) + 1}: label '{name}' ({top}) is not "
                         f"one of the model's {outputs} labels (--num-labels)", file=data.examples.path)
