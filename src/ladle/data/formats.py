"""Data formats: each lists the splits a source ships with, lazily — `{split: () -> Examples}` — so asking for one
split never lists (let alone decodes) another. One registry entry per format; the first whose `detect` accepts
a path reads it.

    @data_format("npz", detect=lambda p: p.is_file() and p.suffix == ".npz")
    def npz(path): return {"all": lambda: ...}
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ladle.data.examples import ArrayImages, DatasetImages, Examples, ImageFiles
from ladle.errors import LadleError
from ladle.registry import Registry

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
TEST_FOLDERS = ("test", "val", "validation")  # the first found is the test split


@dataclass(frozen=True)
class DataFormat:
    name: str
    detect: Callable[[Path], bool]
    splits: Callable[[Path], dict[str, Callable[[], Examples]]]
    summary: str


FORMATS: Registry[DataFormat] = Registry("data format")


def data_format(name: str, detect: Callable[[Path], bool]):
    """Register `splits(path) -> {split: () -> Examples}` under `name` (its docstring's first line: the summary)."""

    def register(fn):
        FORMATS.register(name, DataFormat(name, detect, fn, (fn.__doc__ or "").strip().splitlines()[0]))
        return fn

    return register


def detect_format(path: Path) -> DataFormat:
    found = FORMATS.first(lambda fmt: fmt.detect(path))
    if found is not None:
        return found
    raise LadleError(f"not a dataset ladle can read (formats: {', '.join(FORMATS.names())})", file=path)


@data_format("npz", detect=lambda p: p.is_file() and p.suffix == ".npz")
def npz(path: Path):
    """`.npz` with arrays x (images) and y (labels): one pool"""
    return {"all": lambda: _npz(path)}


@data_format("cifar10", detect=lambda p: p.is_dir() and ((p / "data_batch_1").is_file() or (p / "test_batch").is_file()))
def cifar10(path: Path):
    """CIFAR-10 python pickles (data_batch_*, test_batch, batches.meta), unpickled with an allow-list"""
    def classes():
        if (path / "batches.meta").is_file():
            return [c.decode() for c in _unpickle_arrays(path / "batches.meta")[b"label_names"]]
        return [str(i) for i in range(10)]

    out = {}
    train_files = sorted(path.glob("data_batch_*"))
    if train_files:
        out["train"] = lambda: _cifar_parts(train_files, b"labels", classes(), "cifar10")
    if (path / "test_batch").is_file():
        out["test"] = lambda: _cifar_parts([path / "test_batch"], b"labels", classes(), "cifar10")
    return out


@data_format("cifar100", detect=lambda p: p.is_dir() and (p / "train").is_file() and (p / "meta").is_file())
def cifar100(path: Path):
    """CIFAR-100 python pickles (train, test, meta; fine labels)"""
    def classes():
        return [c.decode() for c in _unpickle_arrays(path / "meta")[b"fine_label_names"]]

    return {split: (lambda f=path / split: _cifar_parts([f], b"fine_labels", classes(), "cifar100"))
            for split in ("train", "test") if (path / split).is_file()}


@data_format("hf-datasets", detect=lambda p: p.is_dir() and ((p / "dataset_dict.json").is_file()
                                                           or (p / "dataset_info.json").is_file()))
def hf_datasets(path: Path):
    """a Hugging Face `datasets` folder (save_to_disk): an Image column and a label column, or text columns"""
    import datasets

    loaded = datasets.load_from_disk(str(path))
    parts = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"all": loaded}
    out = {}
    for name, ds in parts.items():
        split = {"validation": "test", "val": "test"}.get(name, name)
        if split not in ("train", "test", "all") or (split == "test" and name != "test" and "test" in parts):
            continue
        out[split] = lambda name=name, ds=ds: _dataset_images(path, name, ds, parts)
    return out


@data_format("imagefolder", detect=lambda p: p.is_dir() and (_split_folders(p) or _looks_like_image_folder(p)))
def image_folder(path: Path):
    """an ImageFolder: one folder per class, flat or under train/ and test/ (or val/)"""
    folders = _split_folders(path)
    if not folders:
        return {"all": lambda: _list_image_folder(path, path)}
    return {split: (lambda sub=sub: _list_image_folder(path, path / sub)) for sub, split in folders.items()}


def _split_folders(path: Path) -> dict[str, str]:
    """{folder name: split} of the split folders a dataset root holds: train/, and the first of test/, val/,
    validation/ as the test split."""
    found = {"train": "train"} if (path / "train").is_dir() else {}
    test = next((name for name in TEST_FOLDERS if (path / name).is_dir()), None)
    return found | ({test: "test"} if test else {})


def _looks_like_image_folder(path: Path) -> bool:
    try:
        for sub in os.scandir(path):
            if sub.is_dir() and any(Path(f.name).suffix.lower() in IMAGE_SUFFIXES for f in os.scandir(sub.path)):
                return True
    except OSError:
        return False
    return False


def _list_image_folder(root: Path, folder: Path) -> ImageFiles:
    """Paths and labels of an ImageFolder (classes: its sorted subfolders), listed, never decoded."""
    try:
        classes = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    except OSError as e:
        raise LadleError(f"cannot list the folder: {e.strerror or e}", file=folder) from None
    if not classes:
        raise LadleError("ImageFolder holds no class folders", file=folder)
    paths, labels = [], []
    for label, name in enumerate(classes):
        try:
            files = sorted(e.name for e in os.scandir(folder / name) if Path(e.name).suffix.lower() in IMAGE_SUFFIXES)
        except OSError as e:
            raise LadleError(f"cannot list the class folder: {e.strerror or e}", file=folder / name) from None
        if not files:
            raise LadleError("class folder holds no images", file=folder / name)
        rel = os.path.relpath(folder / name, root)
        paths += [os.path.join(rel, f) for f in files]
        labels += [label] * len(files)
    return ImageFiles(root, paths, labels, classes)


def _dataset_images(path: Path, name: str, ds, parts: dict) -> DatasetImages:
    import datasets

    image_col = next((c for c, f in ds.features.items() if isinstance(f, datasets.Image)), None)
    label_col = next((c for c, f in ds.features.items() if isinstance(f, datasets.ClassLabel)), None)
    label_col = label_col or next((c for c in ("label", "labels", "fine_label") if c in ds.features), None)
    if image_col is None:  # a text dataset: its columns, chosen from by the tasting options
        from ladle.data.text import dataset_table

        return dataset_table(path, name, ds, parts)
    if label_col is None:
        raise LadleError(f"split '{name}' needs an Image column and a label column (has: {', '.join(ds.features)})",
                         file=path)
    feature, labels = ds.features[label_col], list(ds[label_col])  # the label column only: no image is decoded
    if isinstance(feature, datasets.ClassLabel):
        classes = list(feature.names)
    elif all(isinstance(v, (int, np.integer)) for v in labels):  # class indices, as in .npz files
        classes = [str(i) for i in range(max(labels, default=-1) + 1)]
    else:  # class names: one index per distinct name over every split, so splits agree
        classes = sorted({str(v) for p in parts.values() if label_col in p.features for v in p[label_col]})
        labels = [classes.index(str(v)) for v in labels]
    return DatasetImages(ds, image_col, labels, classes, path)


class _ArraysOnly(pickle.Unpickler):
    """CIFAR's python format is a pickle: allow the numpy array reconstruction it needs, nothing else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
               ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer")}  # pickle protocol 5

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle_arrays(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _ArraysOnly(io.BytesIO(f.read()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise LadleError(f"not a CIFAR batch file: {e}", file=path) from None


def _cifar_parts(files: list[Path], label_key: bytes, classes: list[str], kind: str) -> ArrayImages:
    images, labels = [], []
    for path in files:
        batch = _unpickle_arrays(path)
        try:
            images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels += list(batch[label_key])
        except (KeyError, ValueError, TypeError) as e:
            raise LadleError(f"CIFAR batch without the expected fields ({e})", file=path) from None
    return ArrayImages(np.concatenate(images), labels, classes, {"kind": kind})


def _npz(path: Path) -> ArrayImages:
    try:
        with np.load(path, allow_pickle=False) as z:
            xkey = next((k for k in ("x", "images", "X") if k in z.files), None)
            ykey = next((k for k in ("y", "labels", "Y") if k in z.files), None)
            if xkey is None or ykey is None:
                raise LadleError(f"needs arrays 'x' and 'y' (has: {', '.join(z.files)})", file=path)
            images, labels = z[xkey], z[ykey].astype(np.int64)
    except (ValueError, OSError) as e:
        raise LadleError(f"cannot read .npz: {e}", file=path) from None
    if images.ndim not in (3, 4):
        raise LadleError(f"images of shape {tuple(images.shape)} are not (N,H,W[,C]) or (N,C,H,W)", file=path, key=xkey)
    if len(labels) != len(images):
        raise LadleError(f"{len(images)} images but {len(labels)} labels", file=path, key=ykey)
    n_classes = int(labels.max()) + 1 if len(labels) else 0
    return ArrayImages(images, labels, [str(i) for i in range(n_classes)], {"kind": "npz", "key": xkey})
