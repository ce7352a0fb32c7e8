"""Data specs (`SOURCE[:split]`) -> the split, lazily.

A spec is `SOURCE[:split]` (split: train, heldout, test or all). SOURCE is `digits` (scikit-learn's real 8×8
digits) or a path in one of the registered formats (ladle.data.formats: ImageFolder, CIFAR-10/100 pickles, a
Hugging Face `datasets` folder, `.npz`). Held-out is a seeded, stratified slice of the source's training data
that `train` never contains, so ingredients never see the examples that choose between them; splits are chosen
from labels alone, so nothing outside the split is decoded.

Photos stream through the model's preprocessing (ladle.data.stream); small in-memory arrays are ImageSets of
floats in [0, 1] at the input size. Normalisation belongs to the model; corruptions work on uint8 or [0, 1] images.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ladle.data.examples import ArrayImages, Examples, concat
from ladle.data.formats import detect_format
from ladle.data.preprocess import DEFAULT as DEFAULT_PREPROCESS
from ladle.data.preprocess import Preprocess
from ladle.data.sets import ImageSet, fingerprint, unit
from ladle.data.stream import StreamSet
from ladle.data.text import Table, TextColumns, TextExamples, TextSet, Tokenization, text_examples
from ladle.data.text_sources import BUILTIN_TEXT, group_split
import ladle.data.text_formats  # noqa: F401  registers the text formats
from ladle.errors import LadleError

SPLITS = ("train", "heldout", "test", "all")
DIGITS_SPLIT = {"train": 300, "heldout": 300}  # the rest (1,197) is test
TEST_FRACTION = 0.2  # of a source that ships a single pool of examples


def parse_spec(spec: str) -> tuple[str, str | None]:
    """`SOURCE[:split]`; a trailing `:name` counts as a split only if it is one."""
    source, sep, split = spec.rpartition(":")
    if sep and split in SPLITS:
        return source, split
    return spec, None


def open_data(spec: str, *, preprocess: Preprocess | Tokenization | None = None, image_size: int = 64, seed: int = 0,
              heldout_fraction: float = 0.1, workers: int | None = None,
              columns: TextColumns | None = None) -> ImageSet | StreamSet | TextSet:
    """A data spec's split (default: test), reading only what that split needs. Photos (ImageFolder, HF image
    datasets) come back as a StreamSet decoded through `preprocess` (default: shorter side to `image_size`, centre
    crop) as they are read; arrays already in memory (digits, .npz, CIFAR) as an ImageSet resized whole to the
    input size: they are already framed, so they are not cropped. Text (csv, tsv, jsonl, parquet, HF text datasets,
    rotten-tomatoes, trec) comes back as a TextSet read through a text model's tokenizer (`preprocess` a
    Tokenization), its `columns` chosen by the tasting options."""
    source, split = parse_spec(spec)
    split = split or "test"
    text = isinstance(preprocess, Tokenization)
    size = None if text else preprocess.size if preprocess is not None else image_size
    if source == "digits":
        if text:
            raise LadleError("data: digits holds images, but the model reads text (--model)")
        data = _digits(split, size, seed)
    elif source in BUILTIN_TEXT:
        examples, record = _builtin_text(source, split, seed, heldout_fraction, preprocess, columns)
        data = TextSet(examples, preprocess, record, workers)
    else:
        path = Path(source)
        if not path.exists():
            raise LadleError("no such dataset (expected digits, rotten-tomatoes, trec, a folder or a file)", file=path)
        fmt = detect_format(path)
        parts = {name: (lambda part=part: _text_or_images(part(), preprocess, columns))
                 for name, part in fmt.splits(path).items()}
        examples, record = _choose_split(parts, split, seed, heldout_fraction, path)
        record = {"kind": fmt.name, "path": str(path)} | record
        if isinstance(examples, TextExamples):
            data = TextSet(examples, preprocess, record, workers)
        elif text:
            raise LadleError("holds images, but the model reads text (--model)", file=path)
        elif isinstance(examples, ArrayImages):
            try:
                x = _to_tensor(examples.images, size)
            except ValueError as e:
                raise LadleError(str(e), file=path) from None
            data = ImageSet(x, torch.from_numpy(examples.labels), examples.classes, record | examples.source)
        else:
            data = StreamSet(examples, preprocess or DEFAULT_PREPROCESS.at_size(size), record, workers)
    if len(data) == 0:
        raise LadleError(f"split '{split}' holds no examples", file=source)
    data.source.update(spec=spec, split=split, seed=seed, **({} if text else {"image_size": size}))
    if isinstance(data, ImageSet):
        data.source["fingerprint"] = fingerprint(data)
    return data


def _text_or_images(part, preprocess, columns: TextColumns | None):
    """A format's split as examples: a table of text becomes the examples the text model reads from it."""
    if not isinstance(part, Table):
        return part
    if not isinstance(preprocess, Tokenization):
        raise LadleError("holds text: taste it with a text model (--model: an HF folder with a tokenizer)",
                         file=part.path)
    return text_examples(part, columns or TextColumns(), preprocess)


def _builtin_text(name: str, split: str, seed: int, fraction: float, tokenization, columns) -> tuple:
    """A named text source shipped inside a package. Rotten Tomatoes is split by movie (test: a fixed fifth of the
    movies; held-out: a seeded share of the rest), so no movie's snippets are on both sides; TREC is one pool."""
    if not isinstance(tokenization, Tokenization):
        raise LadleError(f"data: {name} is text: taste it with a text model (--model: an HF folder with a tokenizer)")
    table = BUILTIN_TEXT[name]()
    part = Table({"text": list(table.texts), "label": list(table.labels)}, table.path,
                 label_names={"label": list(table.classes)}, groups=table.groups)
    full = text_examples(part, columns or TextColumns(), tokenization)
    record = {"kind": name, "path": str(table.path)}
    if split == "all":
        return full, record | {"subset": "all"}
    if table.groups is None:
        examples, chosen = _choose_split({"all": lambda: full}, split, seed, fraction, table.path)
        return examples, record | chosen
    rest, test = group_split(table.groups, (1 - TEST_FRACTION,), seed=0)
    if split == "test":
        idx = test
    else:
        heldout, train = group_split([table.groups[i] for i in rest], (fraction,), seed=seed)
        idx = rest[heldout if split == "heldout" else train]
    return full.select(idx), record | {"subset": split, "indices_sha256": _hash_indices(idx),
                                       "heldout_fraction": fraction, "split_by": "movie"}


def load_data(spec: str, *, image_size: int = 64, seed: int = 0, heldout_fraction: float = 0.1,
              preprocess: Preprocess | None = None) -> ImageSet:
    """A data spec's split decoded into memory as floats in [0, 1] (training reads it many times over)."""
    data = open_data(spec, preprocess=preprocess, image_size=image_size, seed=seed, heldout_fraction=heldout_fraction)
    if isinstance(data, StreamSet):
        x = torch.cat([unit(batch) for batch in data.batches(64)])
        data = ImageSet(x, data.y, data.classes, data.source)
    return data


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (N, C, H, W) floats to size×size, antialiased when shrinking."""
    if x.shape[-2:] == (size, size):
        return x
    shrink = x.shape[-1] > size or x.shape[-2] > size
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink).clamp(0, 1)


def stratified_split(y: np.ndarray, sizes: list[int], seed: int) -> list[np.ndarray]:
    """Split indices into parts of the given sizes (last part: the rest), each stratified by label."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    # interleave classes so any prefix is (nearly) class-balanced
    by_class = [order[y[order] == c] for c in np.unique(y)]
    interleaved = [idx for group in zip(*_pad(by_class)) for idx in group if idx >= 0]
    parts, start = [], 0
    for size in sizes:
        parts.append(np.sort(np.array(interleaved[start : start + size], dtype=np.int64)))
        start += size
    parts.append(np.sort(np.array(interleaved[start:], dtype=np.int64)))
    return parts


def _pad(groups: list[np.ndarray]) -> list[np.ndarray]:
    longest = max((len(g) for g in groups), default=0)  # no groups: no examples
    return [np.concatenate([g, -np.ones(longest - len(g), dtype=np.int64)]) for g in groups]


def _digits(split: str, image_size: int, seed: int) -> ImageSet:
    from sklearn.datasets import load_digits

    digits = load_digits()
    y = digits.target.astype(np.int64)
    train, heldout, test = stratified_split(y, [DIGITS_SPLIT["train"], DIGITS_SPLIT["heldout"]], seed)
    idx = {"train": train, "heldout": heldout, "test": test, "all": np.arange(len(y))}[split]
    x = torch.from_numpy(digits.images[idx].astype(np.float32) / 16.0)[:, None].expand(-1, 3, -1, -1)
    return ImageSet(resize(x.contiguous(), image_size), torch.from_numpy(y[idx]), [str(i) for i in range(10)],
                    {"kind": "digits", "indices_sha256": _hash_indices(idx)})


def _hash_indices(idx: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(idx, dtype=np.int64).tobytes()).hexdigest()[:16]


def _choose_split(splits: dict, split: str, seed: int, fraction: float, path: Path) -> tuple[Examples, dict]:
    """Natural test split if there is one; held-out carved from train; a single-split source is cut in three.
    Only the listings the split needs are made, and splits are chosen from labels alone."""
    if split == "all":  # every example, e.g. a folder that is itself a test set
        if "all" in splits:
            return splits["all"](), {}
        parts = [splits[s]() for s in splits]
        joined = TextExamples.join(parts) if all(isinstance(p, TextExamples) for p in parts) else concat(parts)
        return joined, {"subset": "all"}
    if "all" in splits:  # one pool: test and held-out are both seeded, stratified slices of it
        full = splits["all"]()
        n = len(full)
        n_test, n_heldout = round(TEST_FRACTION * n), max(1, round(fraction * n)) if n > 2 else 0
        test, heldout, train = stratified_split(full.labels, [n_test, n_heldout], seed)
        idx = {"test": test, "heldout": heldout, "train": train}[split]
    elif split == "test":
        if "test" not in splits:
            raise LadleError(f"has no test split (found: {', '.join(sorted(splits))})", file=path)
        return splits["test"](), {}
    else:
        if "train" not in splits:
            raise LadleError(f"has no train split to take '{split}' from (found: {', '.join(sorted(splits))})", file=path)
        full = splits["train"]()
        n_heldout = max(1, round(fraction * len(full))) if len(full) > 1 else 0
        heldout, train = stratified_split(full.labels, [n_heldout], seed)
        idx = heldout if split == "heldout" else train
    return full.select(idx), {"subset": split, "indices_sha256": _hash_indices(idx), "heldout_fraction": fraction}


def _to_tensor(images: np.ndarray, image_size: int) -> torch.Tensor:
    """uint8 or float images, (N,H,W), (N,H,W,C) or (N,C,H,W) -> float (N,3,size,size) in [0,1]."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    else:
        x = x.float()
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.permute(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3, 4):
        raise ValueError(f"images of shape {tuple(images.shape)} are not (N,H,W[,C]) or (N,C,H,W)")
    x = x[:, :3] if x.shape[1] >= 3 else x.expand(-1, 3, -1, -1)
    return resize(x.contiguous().clamp(0, 1), image_size)
