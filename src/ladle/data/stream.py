"""Splits decoded as they are read: photos are decoded, resized and cropped to the model's input size in
DataLoader workers, and reach the model in example order as uint8 batches, so an evaluation's memory does not
grow with the data set. `cached()` writes the preprocessed uint8 images once to a file under the cache folder
(keyed by the examples' identity and the transform) and maps it back: the second to Nth evaluation reads no JPEG.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ladle.data.examples import DECODE_ERRORS, Examples
from ladle.data.preprocess import Preprocess, to_uint8_chw
from ladle.data.sets import ImageSet
from ladle.errors import LadleError
from ladle.progress import progress_bar

MAX_DEFAULT_WORKERS = 8


def default_workers() -> int:
    """DataLoader workers when none are asked for: the cores, at most 8; none inside a daemonic process (an
    executor's worker), which may not start children."""
    if multiprocessing.current_process().daemon:
        return 0
    return max(1, min(os.cpu_count() or 1, MAX_DEFAULT_WORKERS))


class _Decoded(torch.utils.data.Dataset):
    """Example i -> (i, uint8 image at the input size, None) or (i, None, error): a bad file is reported by the
    caller in one line naming it, not as a worker's traceback."""

    def __init__(self, examples: Examples, preprocess: Preprocess):
        self.examples, self.preprocess = examples, preprocess
        self._transform = None

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int):
        if self._transform is None:  # built in the worker that uses it
            self._transform = self.preprocess.geometric()
        try:
            return i, to_uint8_chw(self._transform(self.examples.image(i))), None
        except DECODE_ERRORS as e:
            return i, None, f"cannot decode image: {str(e).splitlines()[0] if str(e) else type(e).__name__}"


def _collate(items):
    """Stack a batch in the worker; the first failure, if any, travels instead."""
    for i, _, error in items:
        if error is not None:
            return None, (i, error)
    return torch.stack([x for _, x, _ in items]), None


class StreamSet:
    """A split of a data source read through the model's preprocessing, batch by batch."""

    def __init__(self, examples: Examples, preprocess: Preprocess, source: dict, workers: int | None = None):
        self.examples = examples
        self.preprocess = preprocess
        self.y = torch.from_numpy(examples.labels)
        self.classes = examples.classes
        self.workers = workers
        identity = f"{examples.fingerprint()}|{preprocess.key()}"
        self.source = dict(source, streamed=True, size=len(examples), preprocess=preprocess.describe(),
                           fingerprint=hashlib.sha256(identity.encode()).hexdigest()[:16])

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, indices, tag: str) -> StreamSet:
        return StreamSet(self.examples.select(indices), self.preprocess, dict(self.source, subset=tag), self.workers)

    def batches(self, batch_size: int, *, workers: int | None = None, pin_memory: bool = False) -> Iterator[torch.Tensor]:
        """uint8 batches (B, 3, size, size) in example order, decoded by `workers` processes (0: here)."""
        workers = self.workers if workers is None else workers
        workers = default_workers() if workers is None else workers
        if len(self) <= batch_size or multiprocessing.current_process().daemon:
            workers = 0  # one batch: starting processes costs more than it saves; a daemon may not start any
        loader = torch.utils.data.DataLoader(
            _Decoded(self.examples, self.preprocess), batch_size=batch_size, shuffle=False, num_workers=workers,
            collate_fn=_collate, pin_memory=pin_memory, prefetch_factor=2 if workers else None)
        batches, died = None, None
        try:
            batches = iter(loader)  # starts the workers: one may die before the first batch
            for x, failure in batches:
                if failure is not None:
                    i, error = failure
                    raise LadleError(error, file=self.examples.where(i))
                yield x
        except (RuntimeError, ConnectionError, EOFError) as e:  # a worker that dies mid-batch can break the pipe first
            if not workers or (isinstance(e, RuntimeError) and "DataLoader worker" not in str(e)):
                raise
            died = (str(e).splitlines() or [type(e).__name__])[0]  # raised below: no traceback keeps workers alive
        finally:  # workers stopped now, also when the caller stops early
            getattr(batches, "_shutdown_workers", lambda: None)()
            batches = None
        if died:
            raise LadleError(f"a data-loading worker died ({died}); run with --workers 0 to see the failure in this "
                             "process", file=self.source.get("path", self.source.get("spec")))

    def cached(self, folder: Path | None = None, *, batch_size: int = 64, progress: bool = False) -> ImageSet:
        """The preprocessed uint8 images in a file under `folder` (default: ladle's cache folder), decoded once and
        mapped back as an ImageSet with this set's fingerprint (so results are stored under the same keys)."""
        from ladle.io.hashing import cache_root

        folder = Path(folder) if folder is not None else cache_root() / "images"
        path = folder / f"{self.source['fingerprint']}.npy"
        shape = (len(self), 3, self.preprocess.size, self.preprocess.size)
        images = _load_cached(path, shape)
        if images is None:
            _write_cached(path, shape, self.batches(batch_size), progress, self.source.get("spec", path.name))
            images = _load_cached(path, shape)
            if images is None:
                raise LadleError("the preprocessed images just written do not read back", file=path)
        return ImageSet(torch.from_numpy(images), self.y, self.classes, dict(self.source, cache=str(path)))


def _load_cached(path: Path, shape: tuple) -> np.ndarray | None:
    """The cached images, memory-mapped copy-on-write (writable views, nothing copied), or None if absent or not
    what is expected (a truncated or foreign file is rebuilt)."""
    try:
        images = np.load(path, mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError):
        return None
    return images if images.shape == shape and images.dtype == np.uint8 else None


def _write_cached(path: Path, shape: tuple, batches, progress: bool, what: str) -> None:
    """Stream the batches into a .npy file written beside the target and renamed into place: a reader never sees
    a half-written cache, and memory holds one batch."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
            bar = progress_bar(total=shape[0], desc=f"decode {what}", unit="img", enabled=progress)
            written = 0
            for x in batches:
                f.write(x.numpy().tobytes())
                written += len(x)
                bar.update(len(x))
            bar.close()
            if written != shape[0]:
                raise LadleError(f"decoded {written} images, expected {shape[0]}", file=path)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
