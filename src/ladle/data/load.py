"""Dataset specs -> decoded image tensors, once.

A spec is `SOURCE[:split]` (split: train, heldout, test or all). SOURCE is `digits` (scikit-learn's real 8×8 digits), an ImageFolder
directory, a CIFAR-10/100 python-pickle directory, a Hugging Face `datasets` directory saved with
`save_to_disk`, or a `.npz` file with `x` and `y`. Splits are `train`, `heldout` and `test`: held-out
is a seeded, stratified slice of the source's training data that `train` never contains, so
ingredients never see the examples that choose between them.

Images are kept as float tensors in [0, 1] (N, 3, H, W) at the requested size; normalisation belongs
to the model (see models.py), corruptions work on these.
"""

from __future__ import annotations

import hashlib
import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ladle.errors import LadleError

SPLITS = ("train", "heldout", "test", "all")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
DIGITS_SPLIT = {"train": 300, "heldout": 300}  # the rest (1,197) is test
TEST_FRACTION = 0.2  # of a source that ships a single pool of examples


@dataclass
class ImageSet:
    """Decoded images in [0, 1], labels, and where they came from (for manifests)."""

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]
    source: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, indices, tag: str) -> ImageSet:
        idx = torch.as_tensor(indices, dtype=torch.long)
        part = ImageSet(self.x[idx], self.y[idx], self.classes, dict(self.source, subset=tag, size=len(idx)))
        part.source["fingerprint"] = fingerprint(part)  # its own content: stored results never mix a part with the whole
        return part


def parse_spec(spec: str) -> tuple[str, str | None]:
    """`SOURCE[:split]`; a trailing `:name` counts as a split only if it is one."""
    source, sep, split = spec.rpartition(":")
    if sep and split in SPLITS:
        return source, split
    return spec, None


def load_data(spec: str, *, image_size: int = 64, seed: int = 0, heldout_fraction: float = 0.1) -> ImageSet:
    """Decode a dataset spec into an ImageSet (default split: test)."""
    source, split = parse_spec(spec)
    split = split or "test"
    if source == "digits":
        data = _digits(split, image_size, seed)
    else:
        path = Path(source)
        if not path.exists():
            raise LadleError("no such dataset (expected digits, a folder or a .npz file)", file=path)
        splits = _natural_splits(path, image_size)
        data = _choose_split(splits, split, seed, heldout_fraction, path)
    if len(data) == 0:
        raise LadleError(f"split '{split}' holds no examples", file=source)
    data.source.update(spec=spec, split=split, image_size=image_size, seed=seed,
                       fingerprint=fingerprint(data))
    return data


def fingerprint(data: ImageSet) -> str:
    """A content hash of labels and images: equal data, equal cache keys."""
    h = hashlib.sha256()
    h.update(data.y.numpy().tobytes())
    h.update((data.x * 255).round().to(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


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


def _choose_split(splits: dict[str, ImageSet], split: str, seed: int, fraction: float, path: Path) -> ImageSet:
    """Natural test split if there is one; held-out carved from train; a single-split source is cut in three."""
    if split == "all":  # every example, e.g. a folder that is itself a test set
        if "all" in splits:
            return splits["all"]
        parts = list(splits.values())
        return ImageSet(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]), parts[0].classes,
                        dict(parts[0].source, subset="all"))
    if "all" in splits:  # one pool: test and held-out are both seeded, stratified slices of it
        full = splits["all"]
        n = len(full)
        n_test, n_heldout = round(TEST_FRACTION * n), max(1, round(fraction * n)) if n > 2 else 0
        test, heldout, train = stratified_split(full.y.numpy(), [n_test, n_heldout], seed)
        idx = {"test": test, "heldout": heldout, "train": train}[split]
    elif split == "test":
        if "test" not in splits:
            raise LadleError(f"has no test split (found: {', '.join(sorted(splits))})", file=path)
        return splits["test"]
    else:
        if "train" not in splits:
            raise LadleError(f"has no train split to take '{split}' from (found: {', '.join(sorted(splits))})", file=path)
        full = splits["train"]
        n_heldout = max(1, round(fraction * len(full))) if len(full) > 1 else 0
        heldout, train = stratified_split(full.y.numpy(), [n_heldout], seed)
        idx = heldout if split == "heldout" else train
    part = full.subset(idx, split)
    part.source.update(indices_sha256=_hash_indices(idx), heldout_fraction=fraction)
    return part


def _natural_splits(path: Path, image_size: int) -> dict[str, ImageSet]:
    """The splits a source ships with: {'train': …, 'test': …} or just one of them."""
    if path.is_file():
        if path.suffix != ".npz":
            raise LadleError("unknown dataset file (expected .npz)", file=path)
        return {"all": _npz(path, image_size)}
    if (path / "data_batch_1").is_file() or (path / "test_batch").is_file():
        return _cifar10(path, image_size)
    if (path / "train").is_file() and (path / "meta").is_file():
        return _cifar100(path, image_size)
    if (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file():
        return _hf_datasets(path, image_size)
    subdirs = {p.name for p in path.iterdir() if p.is_dir()}
    if {"train", "test"} & subdirs and all(_looks_like_image_folder(path / s) for s in {"train", "test"} & subdirs):
        found = {s: _image_folder(path / s, image_size) for s in ("train", "test") if s in subdirs}
        if "val" in subdirs and "test" not in found:
            found["test"] = _image_folder(path / "val", image_size)
        return found
    if _looks_like_image_folder(path):
        return {"all": _image_folder(path, image_size)}
    raise LadleError("not a dataset ladle can read (ImageFolder, CIFAR pickles, HF save_to_disk, .npz)", file=path)


def _looks_like_image_folder(path: Path) -> bool:
    return any(p.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES for f in p.iterdir()) for p in path.iterdir())


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


def _pil_to_array(image, image_size: int) -> np.ndarray:
    """RGB, shorter side resized to image_size, centre-cropped square."""
    from PIL import Image

    image = image.convert("RGB")
    w, h = image.size
    scale = image_size / min(w, h)
    image = image.resize((max(image_size, round(w * scale)), max(image_size, round(h * scale))), Image.BILINEAR)
    w, h = image.size
    left, top = (w - image_size) // 2, (h - image_size) // 2
    return np.asarray(image.crop((left, top, left + image_size, top + image_size)), dtype=np.uint8)


def _image_folder(path: Path, image_size: int) -> ImageSet:
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    arrays, labels = [], []
    for label, name in enumerate(classes):
        for f in sorted((path / name).iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(f) as im:
                    arrays.append(_pil_to_array(im, image_size))
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:  # PIL raises all of these
                raise LadleError(f"cannot decode image: {e}", file=f) from None
            labels.append(label)
    if not arrays:
        raise LadleError("ImageFolder holds no images", file=path)
    return ImageSet(_to_tensor(np.stack(arrays), image_size), torch.tensor(labels), classes, {"kind": "imagefolder", "path": str(path)})


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


def _cifar_batch(path: Path, label_key: bytes, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch = _unpickle_arrays(path)
    try:
        images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = torch.tensor(list(batch[label_key]), dtype=torch.long)
    except (KeyError, ValueError, TypeError) as e:
        raise LadleError(f"CIFAR batch without the expected fields ({e})", file=path) from None
    return _to_tensor(images, image_size), labels


def _cifar10(path: Path, image_size: int) -> dict[str, ImageSet]:
    classes = [str(i) for i in range(10)]
    if (path / "batches.meta").is_file():
        classes = [c.decode() for c in _unpickle_arrays(path / "batches.meta")[b"label_names"]]
    out = {}
    train_files = sorted(path.glob("data_batch_*"))
    if train_files:
        parts = [_cifar_batch(f, b"labels", image_size) for f in train_files]
        out["train"] = ImageSet(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), classes, {"kind": "cifar10"})
    if (path / "test_batch").is_file():
        x, y = _cifar_batch(path / "test_batch", b"labels", image_size)
        out["test"] = ImageSet(x, y, classes, {"kind": "cifar10"})
    return out


def _cifar100(path: Path, image_size: int) -> dict[str, ImageSet]:
    classes = [c.decode() for c in _unpickle_arrays(path / "meta")[b"fine_label_names"]]
    out = {}
    for split in ("train", "test"):
        if (path / split).is_file():
            x, y = _cifar_batch(path / split, b"fine_labels", image_size)
            out[split] = ImageSet(x, y, classes, {"kind": "cifar100"})
    return out


def _hf_datasets(path: Path, image_size: int) -> dict[str, ImageSet]:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    parts = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"all": loaded}
    out = {}
    for name, ds in parts.items():
        split = {"validation": "test", "val": "test"}.get(name, name)
        if split not in ("train", "test", "all") or (split == "test" and name != "test" and "test" in parts):
            continue
        image_col = next((c for c, f in ds.features.items() if isinstance(f, datasets.Image)), None)
        label_col = next((c for c, f in ds.features.items() if isinstance(f, datasets.ClassLabel)), None)
        label_col = label_col or next((c for c in ("label", "labels", "fine_label") if c in ds.features), None)
        if image_col is None or label_col is None:
            raise LadleError(f"split '{name}' needs an Image column and a label column (has: {', '.join(ds.features)})", file=path)
        feature, labels = ds.features[label_col], list(ds[label_col])
        if isinstance(feature, datasets.ClassLabel):
            classes = list(feature.names)
        elif all(isinstance(v, (int, np.integer)) for v in labels):  # class indices, as in .npz files
            classes = [str(i) for i in range(max(labels, default=-1) + 1)]
        else:  # class names: one index per distinct name over every split, so splits agree
            classes = sorted({str(v) for p in parts.values() if label_col in p.features for v in p[label_col]})
            labels = [classes.index(str(v)) for v in labels]
        images = np.stack([_pil_to_array(im, image_size) for im in ds[image_col]])
        out[split] = ImageSet(_to_tensor(images, image_size), torch.tensor(labels, dtype=torch.long), classes,
                              {"kind": "hf-datasets", "path": str(path)})
    return out


def _npz(path: Path, image_size: int) -> ImageSet:
    try:
        with np.load(path, allow_pickle=False) as z:
            xkey = next((k for k in ("x", "images", "X") if k in z.files), None)
            ykey = next((k for k in ("y", "labels", "Y") if k in z.files), None)
            if xkey is None or ykey is None:
                raise LadleError(f"needs arrays 'x' and 'y' (has: {', '.join(z.files)})", file=path)
            images, labels = z[xkey], z[ykey].astype(np.int64)
    except (ValueError, OSError) as e:
        raise LadleError(f"cannot read .npz: {e}", file=path) from None
    try:
        x = _to_tensor(images, image_size)
    except ValueError as e:
        raise LadleError(str(e), file=path, key=xkey) from None
    if len(labels) != len(x):
        raise LadleError(f"{len(x)} images but {len(labels)} labels", file=path, key=ykey)
    n_classes = int(labels.max()) + 1 if len(labels) else 0
    return ImageSet(x, torch.from_numpy(labels), [str(i) for i in range(n_classes)], {"kind": "npz", "path": str(path)})
