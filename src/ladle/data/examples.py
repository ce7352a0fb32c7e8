"""Lazy, indexable lists of labelled images: a data source is listed (paths and labels, a table's rows), never
decoded until an example is asked for, so choosing a split reads only what that split needs.

`ImageFiles` holds paths under a root (ImageFolder); `DatasetImages` a Hugging Face `datasets` image column;
`ArrayImages` arrays already in memory (digits, `.npz`, CIFAR pickles), which are small and already framed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

DECODE_ERRORS = (OSError, SyntaxError, ValueError)  # what PIL raises on a bad file (UnidentifiedImageError is an OSError)


class Examples:
    """Labels and classes up front; `image(i)` decodes example i (an RGB PIL image)."""

    kind = "examples"

    def __init__(self, labels, classes: list[str]):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = list(classes)

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int):
        raise NotImplementedError

    def where(self, i: int) -> str:
        """What to name in an error about example i (its file, or the source and index)."""
        return f"example {i}"

    def select(self, indices) -> Examples:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Identity of exactly these examples and labels, cheap to compute (no decoding)."""
        raise NotImplementedError


class ImageFiles(Examples):
    """Image files under a root; their identity is path, size and modification time (a changed file, a new key)."""

    kind = "imagefolder"

    def __init__(self, root: Path, paths: list[str], labels, classes: list[str]):
        super().__init__(labels, classes)
        self.root = Path(root)
        self.paths = list(paths)

    def image(self, i: int):
        from PIL import Image

        with Image.open(self.root / self.paths[i]) as im:
            return im.convert("RGB")  # decodes fully: a truncated file fails here, not later

    def where(self, i: int) -> str:
        return str(self.root / self.paths[i])

    def select(self, indices) -> ImageFiles:
        idx = np.asarray(indices, dtype=np.int64)
        return ImageFiles(self.root, [self.paths[i] for i in idx], self.labels[idx], self.classes)

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"{self.kind}\n".encode())
        for path, label in zip(self.paths, self.labels):
            try:
                st = os.stat(self.root / path)
                stamp = f"{st.st_size}\t{st.st_mtime_ns}"
            except OSError:
                stamp = "unreadable"  # reported when the file is decoded
            h.update(f"{path}\t{stamp}\t{label}\n".encode())
        return h.hexdigest()[:16]


class DatasetImages(Examples):
    """A Hugging Face `datasets` image column (decoded row by row by `datasets`)."""

    kind = "hf-datasets"

    def __init__(self, dataset, column: str, labels, classes: list[str], path: Path, indices=None):
        super().__init__(labels, classes)
        self.dataset, self.column, self.path = dataset, column, Path(path)
        self.indices = np.arange(len(self.labels)) if indices is None else np.asarray(indices, dtype=np.int64)

    def image(self, i: int):
        return self.dataset[int(self.indices[i])][self.column].convert("RGB")

    def where(self, i: int) -> str:
        return f"{self.path} (row {int(self.indices[i])})"

    def select(self, indices) -> DatasetImages:
        idx = np.asarray(indices, dtype=np.int64)
        return DatasetImages(self.dataset, self.column, self.labels[idx], self.classes, self.path, self.indices[idx])

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"{self.kind}\n{self.dataset._fingerprint}\n{self.column}\n".encode())
        h.update(self.indices.tobytes())
        h.update(self.labels.tobytes())
        return h.hexdigest()[:16]


class ArrayImages(Examples):
    """Images already in memory, (N, H, W[, C]) or (N, C, H, W), uint8 or floats in [0, 1]."""

    kind = "arrays"

    def __init__(self, images: np.ndarray, labels, classes: list[str], source: dict | None = None):
        super().__init__(labels, classes)
        if len(images) != len(self.labels):
            raise ValueError(f"{len(images)} images but {len(self.labels)} labels")
        self.images = images
        self.source = dict(source or {})

    def image(self, i: int):
        from PIL import Image

        a = self.images[i]
        if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
            a = np.moveaxis(a, 0, -1)
        if a.dtype != np.uint8:
            a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
        return Image.fromarray(a.squeeze(-1) if a.ndim == 3 and a.shape[-1] == 1 else a[..., :3]).convert("RGB")

    def select(self, indices) -> ArrayImages:
        idx = np.asarray(indices, dtype=np.int64)
        return ArrayImages(self.images[idx], self.labels[idx], self.classes, self.source)

    def fingerprint(self) -> str:
        h = hashlib.sha256(self.labels.tobytes())
        h.update(np.ascontiguousarray(self.images).tobytes())
        return h.hexdigest()[:16]


class Concatenated(Examples):
    """Several lists read as one (a source's train and test splits, for `:all`)."""

    kind = "concatenated"

    def __init__(self, parts: list[Examples]):
        super().__init__(np.concatenate([p.labels for p in parts]), parts[0].classes)
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])

    def _locate(self, i: int) -> tuple[Examples, int]:
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.parts[k], i - int(self.offsets[k])

    def image(self, i: int):
        part, j = self._locate(i)
        return part.image(j)

    def where(self, i: int) -> str:
        part, j = self._locate(i)
        return part.where(j)

    def select(self, indices) -> Examples:
        runs: list[tuple[int, list[int]]] = []  # consecutive indices of one part stay one selection, in order
        for i in np.asarray(indices, dtype=np.int64):
            k = int(np.searchsorted(self.offsets, i, side="right")) - 1
            if not runs or runs[-1][0] != k:
                runs.append((k, []))
            runs[-1][1].append(int(i - self.offsets[k]))
        return concat([self.parts[k].select(local) for k, local in runs])

    def fingerprint(self) -> str:
        return hashlib.sha256("|".join(p.fingerprint() for p in self.parts).encode()).hexdigest()[:16]


def concat(parts: list[Examples]) -> Examples:
    """One list of several: arrays of one shape stay arrays (held in memory), anything else is read part by part."""
    if len(parts) == 1:
        return parts[0]
    if all(isinstance(p, ArrayImages) for p in parts) and len({p.images.shape[1:] for p in parts}) == 1:
        return ArrayImages(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]),
                           parts[0].classes, parts[0].source)
    return Concatenated(parts)
