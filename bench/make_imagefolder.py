"""Generate a JPEG ImageFolder `ROOT/{train,val}/class_k/*.jpg` of real photos, for benchmarks at real scale.

    .venv/bin/python bench/make_imagefolder.py ROOT [--train 3000] [--val 1000] [--seed 0] [--workers 2]

Ten classes, one per source photo shipped with scikit-image (astronaut, chelsea, coffee, …), so a model could
learn them. Every JPEG is a different random view of its class's photo: a crop (35–100 % of the largest crop of
that shape), a rotation of up to ±20°, a horizontal flip, per-channel gains and a brightness shift. The shorter
side is 256 px; a quarter of the images are 320×256 and a quarter 256×320, as photos are rarely square.

Deterministic: image i of a split depends only on (seed, split, i), so two folders with the same seed share their
first images. A folder is reused when its marker (`ladle-imagefolder.json`, written last) records the same
parameters; otherwise train/ and val/ are written again.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import numpy as np

MARKER = "ladle-imagefolder.json"
SHORT = 256
# (skimage.data function, tint for a greyscale photo); one class each
SOURCES = [("astronaut", None), ("chelsea", None), ("coffee", None), ("rocket", None),
           ("hubble_deep_field", None), ("immunohistochemistry", None), ("retina", None),
           ("stereo_motorcycle", None), ("camera", (1.0, 0.85, 0.7)), ("grass", (0.7, 1.0, 0.75))]
SPLIT_ID = {"train": 0, "val": 1}

_photos: list = []  # per worker process: the source photos as PIL images, shorter side 512


def _load_sources() -> None:
    """Load the ten photos once per process, RGB, shorter side 512 (cropping from a 1411 px retina is slow)."""
    from PIL import Image
    from skimage import data

    _photos.clear()
    for name, tint in SOURCES:
        a = getattr(data, name)()
        if isinstance(a, tuple):  # stereo_motorcycle: (left, right, disparity)
            a = a[0]
        if a.ndim == 2:
            a = (np.stack([a] * 3, axis=-1) * np.array(tint)).clip(0, 255).astype(np.uint8)
        im = Image.fromarray(a[..., :3])
        scale = 512 / min(im.size)
        if scale < 1:
            im = im.resize((round(im.size[0] * scale), round(im.size[1] * scale)), Image.BILINEAR)
        _photos.append(im)


def _one(seed: int, split: str, i: int, path: Path) -> None:
    """Write image i of a split: class i % 10, a random view of that class's photo."""
    from PIL import Image

    rng = np.random.default_rng([seed, SPLIT_ID[split], i])
    src = _photos[i % len(_photos)]
    w, h = [(SHORT, SHORT), (SHORT, SHORT), (320, SHORT), (SHORT, 320)][rng.integers(4)]
    # the largest box of aspect w:h inside the photo, times a random scale; 1.25x larger so rotation leaves no corners
    fit = min(src.size[0] / w, src.size[1] / h) / 1.25
    s = fit * rng.uniform(0.35, 1.0)
    bw, bh = w * s * 1.25, h * s * 1.25
    x0, y0 = rng.uniform(0, src.size[0] - bw), rng.uniform(0, src.size[1] - bh)
    im = src.crop((round(x0), round(y0), round(x0 + bw), round(y0 + bh)))
    im = im.rotate(rng.uniform(-20, 20), resample=Image.BILINEAR)
    cw, ch = im.size[0] / 1.25, im.size[1] / 1.25
    left, top = (im.size[0] - cw) / 2, (im.size[1] - ch) / 2
    im = im.resize((w, h), Image.BILINEAR, box=(left, top, left + cw, top + ch))
    if rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    a = np.asarray(im, dtype=np.float32) * rng.uniform(0.85, 1.15, size=3) + rng.uniform(-20, 20)
    Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(path, quality=90)


def _chunk(job: tuple[int, str, int, int, str]) -> int:
    seed, split, start, stop, root = job
    for i in range(start, stop):
        _one(seed, split, i, Path(root) / split / f"class_{i % len(SOURCES)}" / f"{split}_{i:05d}.jpg")
    return stop - start


def make_imagefolder(root: str | Path, train: int = 3000, val: int = 1000, seed: int = 0,
                     workers: int | None = None) -> Path:
    """Write (or reuse) the ImageFolder at root; returns root. `workers` processes (default: one per core)."""
    root = Path(root)
    params = {"train": train, "val": val, "seed": seed, "short_side": SHORT, "classes": len(SOURCES), "version": 1}
    marker = root / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return root
    marker.unlink(missing_ok=True)
    for split, n in (("train", train), ("val", val)):
        shutil.rmtree(root / split, ignore_errors=True)
        for k in range(len(SOURCES)):
            (root / split / f"class_{k}").mkdir(parents=True, exist_ok=True)
    jobs = [(seed, split, a, min(a + 100, n), str(root))
            for split, n in (("train", train), ("val", val)) for a in range(0, n, 100)]
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        _load_sources()
        for job in jobs:
            _chunk(job)
    else:
        with multiprocessing.get_context("fork").Pool(workers, initializer=_load_sources) as pool:
            for _ in pool.imap_unordered(_chunk, jobs):
                pass
    marker.write_text(json.dumps(params))
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root")
    parser.add_argument("--train", type=int, default=3000, help="images in train/ (default 3000)")
    parser.add_argument("--val", type=int, default=1000, help="images in val/ (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: one per core)")
    args = parser.parse_args()
    start = time.perf_counter()
    root = make_imagefolder(args.root, args.train, args.val, args.seed, args.workers)
    print(f"{root}: {args.train} train + {args.val} val JPEGs, 10 classes ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
