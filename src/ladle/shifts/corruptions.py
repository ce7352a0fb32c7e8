"""Corruption suites: shifted copies of a test set, seeded, built once, cached on disk and reused.

Suites (`--corruptions SUITE[:name,name]`):
  imagenet-c        the 15 common corruptions of ImageNet-C (Hendrycks & Dietterich 2019) × 5 severities,
                    computed by the maintained `imagecorruptions-imaug` package (import name `imagecorruptions`)
  imagenet-c-extra  its 4 held-out validation corruptions (speckle noise, gaussian blur, spatter, saturate)
  imagenet-c-all    all 19
  laion-c           the six LAION-C-style distortions of laion_c.py × 5 intensities
  text-typos        seeded typos and word noise of text_shifts.py × 5 severities, for text splits (a TextSet):
                    the texts (a multiple-choice item's question) are corrupted, pairs, choices and labels kept

Determinism: every image gets its own seed, derived from (seed, family, corruption, severity, index), so
the same call gives the same bytes and an image never depends on the other images (a prefix of a set gets
the same corrupted images). The library draws from numpy's global RNG: it is seeded per image and restored
afterwards, so a caller's random state is untouched. That is not thread-safe, so missing sets are built in
parallel by processes (an executor: local processes or Ray tasks), which give the same bytes as one process.

Small images: the library needs at least 32 px. Smaller images are resized up to 32 px, corrupted and
resized back to the size the model uses; the set's source records `library_size`.

Results are uint8, like the published ImageNet-C images, so a cached set reloads bit for bit.

Text: a corrupted text split is cached as one JSONL file (a header line with its key and the checksum of the
rest, then one {"text", "label"} row per example), built in this process (pure Python, fast) whatever executor
is given. An image suite on text, or text-typos on images, is refused in one line.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from ladle.progress import progress_bar

from ladle.shifts import laion_c
from ladle.shifts.text_shifts import TEXT_TYPOS, corrupt_texts
from ladle.data.sets import ImageSet, fingerprint, unit
from ladle.errors import LadleError
from ladle.registry import Registry

IMAGENET_C = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
              "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
              "jpeg_compression")
IMAGENET_C_EXTRA = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
SUITES: Registry[tuple[str, ...]] = Registry("suite", importable=False)  # suite -> the corruptions it has
SUITES.register("imagenet-c", IMAGENET_C)
SUITES.register("imagenet-c-extra", IMAGENET_C_EXTRA)
SUITES.register("imagenet-c-all", IMAGENET_C + IMAGENET_C_EXTRA)
SUITES.register("laion-c", laion_c.FAMILIES)
SUITES.register("text-typos", TEXT_TYPOS)
TEXT_SUITES = ("text-typos",)  # suites that corrupt texts, not images
SEVERITIES = (1, 2, 3, 4, 5)
LIBRARY_MIN_SIZE = 32
CHUNK = 256  # images converted to floats at a time while corrupting
CACHE_FORMAT = 1  # bump when the bytes a corruption produces change
TEXT_CACHE_FORMAT = 1  # bump when the texts text_shifts produces, or the JSONL layout, change
_TAKES_SEED = {"impulse_noise", "glass_blur"}  # these ignore numpy's global RNG and take a seed argument


def family(suite: str) -> str:
    """'imagenet-c', 'laion-c' or 'text-typos': suites of one family share sets (fog in imagenet-c is fog in
    imagenet-c-all)."""
    if suite in TEXT_SUITES:
        return "text-typos"
    return "laion-c" if suite == "laion-c" else "imagenet-c"


def is_text_suite(suite: str) -> bool:
    """Whether the suite corrupts texts (a TextSet) rather than images."""
    return family(suite) == "text-typos"


def _is_text(data) -> bool:
    from ladle.data.text import TextSet

    return isinstance(data, TextSet)


def check_suite_fits(data, suite: str) -> None:
    """One line when the suite corrupts another kind of data than the split holds."""
    if is_text_suite(suite) and not _is_text(data):
        raise LadleError(f"corruptions: {suite} corrupts text, the data are images")
    if not is_text_suite(suite) and _is_text(data):
        raise LadleError(f"corruptions: {suite} corrupts images, the data are text")


@dataclass(frozen=True)
class SuiteSpec:
    """A suite, the corruptions chosen from it and the severities: what `--corruptions` and `--severities` say."""

    suite: str
    names: tuple[str, ...]
    severities: tuple[int, ...] = SEVERITIES

    @property
    def family(self) -> str:
        return family(self.suite)

    def cells(self) -> list[tuple[str, int]]:
        return [(n, s) for n in self.names for s in self.severities]


def parse_suite(text: str, severities: tuple[int, ...] = SEVERITIES) -> SuiteSpec:
    """`SUITE` or `SUITE:name,name`."""
    suite, _, names = text.partition(":")
    known = SUITES.get(suite, where="corruptions")
    chosen = tuple(n.strip() for n in names.split(",") if n.strip()) or known
    for n in chosen:
        if n not in known:
            raise LadleError(f"corruptions: '{n}' is not in suite {suite} (it has: {', '.join(known)})")
    return SuiteSpec(suite, chosen, tuple(severities))


def parse_severities(text: str) -> tuple[int, ...]:
    """'1-5', '3' or '1,3,5' -> sorted unique severities in 1..5."""
    out: set[int] = set()
    try:
        for part in text.replace(" ", "").split(","):
            lo, sep, hi = part.partition("-")
            out.update(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    except ValueError:
        raise LadleError(f"severities: expected e.g. 1-5, 3 or 1,3,5, got '{text}'") from None
    if not out or not out <= set(SEVERITIES):
        raise LadleError(f"severities: must lie in 1-5, got '{text}'")
    return tuple(sorted(out))


def image_seeds(seed: int, family_name: str, name: str, severity: int, n: int) -> list[int]:
    """One 32-bit seed per image, from its index: stable whatever else is in the set."""
    prefix = f"{seed}|{family_name}|{name}|{severity}|"
    return [int.from_bytes(hashlib.sha256(f"{prefix}{i}".encode()).digest()[:4], "little") for i in range(n)]


@contextmanager
def _numpy_seeded(seed: int):
    """Seed numpy's global RNG for one call and give the caller's state back afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _imagenet_c(x: torch.Tensor, name: str, severity: int, seeds: list[int]) -> torch.Tensor:
    """ImageNet-C through imagecorruptions, one image at a time (its functions take single HWC uint8 images)."""
    from imagecorruptions import corrupt

    h, w = x.shape[-2:]
    scale = max(1.0, LIBRARY_MIN_SIZE / min(h, w))
    if scale > 1:
        x = F.interpolate(x, size=(math.ceil(h * scale), math.ceil(w * scale)), mode="bilinear", align_corners=False)
    images = _to_uint8(x).permute(0, 2, 3, 1).numpy()
    out = np.empty_like(images)
    for i, (image, image_seed) in enumerate(zip(images, seeds)):
        extra = {"seed": image_seed} if name in _TAKES_SEED else {}
        with _numpy_seeded(image_seed):
            out[i] = corrupt(np.ascontiguousarray(image), corruption_name=name, severity=severity, **extra)
    result = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
    if scale > 1:
        result = _to_uint8(F.interpolate(result.float() / 255, size=(h, w), mode="bilinear", align_corners=False,
                                         antialias=True))
    return result


def corrupt_images(x: torch.Tensor, suite: str, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """Corrupted copies of float images (N, 3, H, W) in [0, 1], as uint8 (N, 3, H, W) of the same size."""
    if name not in SUITES.get(suite, where="corruptions"):
        raise LadleError(f"corruptions: '{name}' is not in suite {suite}")
    if is_text_suite(suite):
        raise LadleError(f"corruptions: {suite} corrupts text, the data are images")
    if severity not in SEVERITIES:
        raise LadleError(f"severity: must be 1-5, got {severity}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise LadleError(f"corruptions: images must be (N, 3, H, W), got {tuple(x.shape)}")
    seeds = image_seeds(seed, family(suite), name, severity, len(x))
    out = []
    for start in range(0, len(x), CHUNK):  # uint8 sets (mapped from the preprocessed cache) become floats a chunk at a time
        part, part_seeds = unit(x[start : start + CHUNK].detach().cpu()).float(), seeds[start : start + CHUNK]
        if family(suite) == "laion-c":
            out.append(_to_uint8(laion_c.distort(part, name, severity, part_seeds)))
        else:
            out.append(_imagenet_c(part, name, severity, part_seeds))
    return torch.cat(out)


def library_version(suite: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    if family(suite) == "laion-c":
        return f"ladle.laion_c/{CACHE_FORMAT}"
    if is_text_suite(suite):
        return f"ladle.text_shifts/{TEXT_CACHE_FORMAT}"
    try:
        return f"imagecorruptions-imaug {version('imagecorruptions-imaug')}"
    except PackageNotFoundError:
        return "imagecorruptions (unknown version)"


def default_cache_dir() -> Path:
    """corruptions/ in ladle's cache folder ($LADLE_CACHE_DIR, default ~/.cache/ladle)."""
    from ladle.io.hashing import cache_root

    return cache_root() / "corruptions"


@dataclass
class CorruptionCache:
    """Corrupted sets on disk as .npz (x uint8 N×3×H×W, y, key, checksum), written atomically; corrupted text
    sets as .jsonl (a header line {kind, key, count, checksum of the rest}, then {"text", "label"} per example).

    A file is used only if its key matches exactly and its checksum holds; anything else (truncated,
    edited, another library version) counts as damaged and is rebuilt in place. The image files are ordinary
    `.npz` data sets: `--data FILE.npz:all` reads one back.
    """

    folder: Path | None
    hits: int = 0
    misses: int = 0
    damaged: list[str] = field(default_factory=list)

    def path(self, key: dict) -> Path:
        suffix = ".jsonl" if is_text_suite(key["family"]) else ".npz"
        return (Path(self.folder) / key["family"] / key["corruption"] /
                f"{key['data']}-severity{key['severity']}-seed{key['seed']}{suffix}")

    def load(self, key: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self._lookup(key, lambda path: self._read(path, key))

    def _lookup(self, key: dict, read):
        """`read(path)` of the key's file, or None: a miss, and a file that is not exactly this key's intact set is
        noted in `damaged` (rebuilt by the caller)."""
        if self.folder is None:
            return None
        path = self.path(key)
        if not path.is_file():
            self.misses += 1
            return None
        found = read(path)
        if found is None:
            self.damaged.append(str(path))
            self.misses += 1
            return None
        self.hits += 1
        return found

    @staticmethod
    def _read(path: Path, key: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The images and labels of the file, or None when it is not exactly this key's intact set."""
        try:
            with np.load(path, allow_pickle=False) as z:
                stored_key, checksum = json.loads(str(z["key"])), str(z["checksum"])
                x, y = torch.from_numpy(z["x"]), torch.from_numpy(z["y"])
            ok = stored_key == key and x.dtype == torch.uint8 and checksum == _checksum(x, y)
        except Exception:  # noqa: BLE001  any unreadable file is damaged: zip, CRC, JSON, dtype
            ok = False
        return (x, y) if ok else None

    def store(self, key: dict, x: torch.Tensor, y: torch.Tensor) -> Path | None:
        if self.folder is None:
            return None
        from ladle.io.writer import atomic_file

        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as f:
            np.savez(f, x=x.numpy(), y=y.numpy(), key=np.array(json.dumps(key, sort_keys=True)),
                     checksum=np.array(_checksum(x, y)))
        return path


    def load_texts(self, key: dict, labels: np.ndarray) -> list[str] | None:
        """The corrupted texts of a text key's JSONL file, or None (see `_lookup`)."""
        return self._lookup(key, lambda path: _read_texts(path, key, labels))

    def store_texts(self, key: dict, texts: list[str], labels: np.ndarray) -> Path | None:
        """Write a corrupted text set atomically (temporary file, fsync, rename); None without a folder."""
        if self.folder is None:
            return None
        from ladle.io.atomic import atomic_file

        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as f:
            f.write(_text_file_bytes(key, texts, labels))
        return path


TEXT_FILE_KIND = "ladle corrupted texts"


def _text_body(texts: list[str], labels: np.ndarray) -> bytes:
    """One JSON row per example (ASCII: any text round-trips), each line ended by a newline."""
    return "".join(json.dumps({"text": t, "label": int(y)}) + "\n" for t, y in zip(texts, labels)).encode("ascii")


def _text_file_bytes(key: dict, texts: list[str], labels: np.ndarray) -> bytes:
    body = _text_body(texts, labels)
    header = {"kind": TEXT_FILE_KIND, "key": key, "count": len(texts), "checksum": _text_checksum(body)}
    return json.dumps(header, sort_keys=True).encode("ascii") + b"\n" + body


def _text_checksum(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:16]


def _read_texts(path: Path, key: dict, labels: np.ndarray) -> list[str] | None:
    """The texts of a JSONL cache file, or None when it is not exactly this key's intact set (truncated, edited,
    another key, labels that are not the clean ones)."""
    try:
        raw = path.read_bytes()
        head, sep, body = raw.partition(b"\n")
        header = json.loads(head)
        if (not sep or header.get("kind") != TEXT_FILE_KIND or header.get("key") != key
                or header.get("checksum") != _text_checksum(body) or header.get("count") != len(labels)):
            return None
        rows = [json.loads(line) for line in body.split(b"\n")[:-1]]
        if body and not body.endswith(b"\n"):
            return None
        texts = [row["text"] for row in rows]
        ok = (len(rows) == len(labels) and all(isinstance(t, str) for t in texts)
              and [row["label"] for row in rows] == [int(y) for y in labels])
    except Exception:  # noqa: BLE001  any unreadable file is damaged: I/O, JSON, UTF-8, missing fields
        return None
    return texts if ok else None


def _checksum(x: torch.Tensor, y: torch.Tensor) -> str:
    """data.fingerprint of the set these uint8 images make, computed without converting them to floats."""
    h = hashlib.sha256()
    h.update(y.numpy().tobytes())
    h.update(x.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class StoredSet:
    """A corrupted set that lives in the cache: labels in memory, images read from disk when a pass needs them,
    so evaluating a 75-set grid holds one set at a time. Reads like an ImageSet."""

    def __init__(self, path: Path, y: torch.Tensor, classes: list[str], source: dict):
        self.path, self.y, self.classes, self.source = Path(path), y, classes, source

    @property
    def x(self) -> torch.Tensor:
        with np.load(self.path, allow_pickle=False) as z:
            return torch.from_numpy(z["x"]).float() / 255

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def load(self) -> ImageSet:
        return ImageSet(self.x, self.y, self.classes, self.source)

    def batches(self, batch_size: int, **_):
        """uint8 slices of the set, memory-mapped from the file (read whole only if its zip member is compressed)."""
        x = mapped_npz_member(self.path, "x")
        if x is None:
            with np.load(self.path, allow_pickle=False) as z:
                x = z["x"]
        for start in range(0, len(x), batch_size):
            yield torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size]))

    def subset(self, indices, tag: str) -> ImageSet:
        return self.load().subset(indices, tag)


def mapped_npz_member(path: Path, name: str) -> np.ndarray | None:
    """An array of an .npz file mapped from disk, copy-on-write: np.savez stores members uncompressed, so the .npy
    bytes lie in the file as they are; None for a compressed member (np.savez_compressed), which must be read."""
    import struct
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(f"{name}.npy")
        if info.compress_type != zipfile.ZIP_STORED:
            return None
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)  # the local file header: its name and extra field lengths sit at bytes 26-29
            if local[:4] != b"PK\x03\x04":
                return None
            f.seek(info.header_offset + 30 + sum(struct.unpack("<HH", local[26:30])))
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            offset = f.tell()
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, struct.error):
        return None
    if fortran or dtype.hasobject:
        return None
    return np.memmap(path, dtype=dtype, mode="c", shape=shape, offset=offset)


def _cell_key(data: ImageSet, suite: str, name: str, severity: int, seed: int, clean_fingerprint: str | None) -> dict:
    return {"format": CACHE_FORMAT, "family": family(suite), "corruption": name, "severity": severity, "seed": seed,
            "data": clean_fingerprint or fingerprint(data), "shape": list(data.x.shape), "library": library_version(suite)}


def _as_set(data: ImageSet, suite: str, key: dict, y: torch.Tensor, checksum: str, path: Path | None,
            x: torch.Tensor | None = None):
    """The corrupted set with its provenance: on disk (lazy) when cached, else in memory (uint8 x given)."""
    source = dict(data.source, corruption=key["corruption"], severity=key["severity"], suite=key["family"],
                  corruption_seed=key["seed"], library=key["library"], clean_fingerprint=key["data"],
                  fingerprint=checksum, cache=str(path) if path else None)
    if family(suite) == "imagenet-c" and min(data.x.shape[-2:]) < LIBRARY_MIN_SIZE:
        source["library_size"] = LIBRARY_MIN_SIZE
    if path is not None:
        return StoredSet(path, y, data.classes, source)
    return ImageSet(x.float() / 255, y, data.classes, source)


def corrupted_set(data: ImageSet, suite: str, name: str, severity: int, *, seed: int = 0,
                  cache: CorruptionCache | None = None, clean_fingerprint: str | None = None) -> ImageSet | StoredSet:
    """One corruption at one severity of a data set: built, or read from the cache when it is there."""
    cache = cache or CorruptionCache(None)
    check_suite_fits(data, suite)
    if is_text_suite(suite):
        return _corrupted_text_sets(data, SuiteSpec(suite, (name,), (severity,)), seed, cache, False)[(name, severity)]
    key = _cell_key(data, suite, name, severity, seed, clean_fingerprint)
    found = cache.load(key)
    if found is not None:
        return _as_set(data, suite, key, found[1], _checksum(*found), cache.path(key), found[0])
    x = corrupt_images(data.x, suite, name, severity, seed)
    y = data.y.clone()
    return _as_set(data, suite, key, y, _checksum(x, y), cache.store(key, x, data.y), x)


def resize_note(sets) -> str | None:
    """What to tell the user when the library saw other pixels than the model will (images under 32 px)."""
    sizes = {part.source["library_size"] for part in sets if "library_size" in part.source}
    if not sizes:
        return None
    return (f"images are smaller than the {LIBRARY_MIN_SIZE} px imagecorruptions needs: they were resized up to "
            f"{LIBRARY_MIN_SIZE} px, corrupted, and resized back to the model's size")


def corrupted_sets(data: ImageSet, spec: SuiteSpec, *, seed: int = 0, cache: CorruptionCache | None = None,
                   progress: bool = False, executor=None,
                   workers: int | None = None) -> dict[tuple[str, int], ImageSet | StoredSet]:
    """Every (corruption, severity) cell of a suite spec, loaded from the cache or built, with a progress bar.

    executor: None builds the missing cells here, one after another. An executor (or its spec: "local:4",
    "ray", "ray:HOST:PORT") builds each missing cell as a task (`build_cell`): the clean images are written
    once beside the cache, each task reads them, corrupts them on one thread and stores its cell in the cache
    itself; the bytes are the same as a serial build. On a Ray cluster the cache folder must be shared by
    every node. `workers=N` is short for executor "local:N". An executor passed in stays open; one made
    here from a spec is closed here.
    """
    cache = cache or CorruptionCache(None)
    check_suite_fits(data, spec.suite)
    if is_text_suite(spec.suite):  # pure Python and fast: built here, whatever executor is given
        return _corrupted_text_sets(data, spec, seed, cache, progress)
    clean = fingerprint(data)
    keys = {cell: _cell_key(data, spec.suite, *cell, seed, clean) for cell in spec.cells()}
    out = {}
    for cell, key in keys.items():
        found = cache.load(key)
        if found is not None:
            out[cell] = _as_set(data, spec.suite, key, found[1], _checksum(*found), cache.path(key), found[0])
    missing = [cell for cell in keys if cell not in out]
    bar = progress_bar(total=len(keys), initial=len(out), desc=f"corrupt ({spec.suite})", unit="set", enabled=progress)

    def done(cell, part):
        out[cell] = part
        bar.set_postfix_str(f"{cell[0]} {cell[1]}")
        bar.update()

    if executor is None and workers is not None and workers > 1:
        executor = f"local:{workers}"
    try:
        if executor is None or not missing:
            for cell in missing:
                x = corrupt_images(data.x, spec.suite, *cell, seed)
                y = data.y.clone()
                path = cache.store(keys[cell], x, data.y)
                done(cell, _as_set(data, spec.suite, keys[cell], y, _checksum(x, y), path, x))
        else:
            _build_with(executor, data, spec.suite, {cell: keys[cell] for cell in missing}, cache, clean, done)
    finally:
        bar.close()
    return {cell: out[cell] for cell in keys}


def _text_key(data, suite: str, name: str, severity: int, seed: int) -> dict:
    """A text cell's cache key: the clean texts (their fingerprint: texts, pairs, choices, labels, columns; not the
    tokenizer, which the corrupted texts do not depend on), the corruption, severity, seed and format."""
    return {"format": TEXT_CACHE_FORMAT, "family": family(suite), "corruption": name, "severity": severity,
            "seed": seed, "data": data.examples.fingerprint(), "count": len(data), "library": library_version(suite)}


def _as_text_set(data, key: dict, texts: list[str], path: Path | None):
    """The corrupted TextSet: the clean examples with other texts, read by the same tokenizer; its fingerprint is
    the corrupted texts' own (TextSet computes it)."""
    from ladle.data.text import TextSet

    source = dict(data.source, corruption=key["corruption"], severity=key["severity"], suite=key["family"],
                  corruption_seed=key["seed"], library=key["library"], clean_fingerprint=data.source.get("fingerprint"),
                  clean_texts=key["data"], cache=str(path) if path else None)
    return TextSet(data.examples.replace_texts(texts), data.tokenization, source, data.workers)


def _corrupted_text_sets(data, spec: SuiteSpec, seed: int, cache: CorruptionCache, progress: bool) -> dict:
    """Every cell of a text suite on a TextSet: read from its JSONL cache file, or corrupted here and written."""
    for name in spec.names:
        if name not in SUITES.get(spec.suite, where="corruptions"):
            raise LadleError(f"corruptions: '{name}' is not in suite {spec.suite}")
    keys = {cell: _text_key(data, spec.suite, *cell, seed) for cell in spec.cells()}
    labels = data.examples.labels
    out = {}
    bar = progress_bar(total=len(keys), desc=f"corrupt ({spec.suite})", unit="set", enabled=progress)
    try:
        for (name, severity), key in keys.items():
            texts = cache.load_texts(key, labels)
            if texts is not None:
                path = cache.path(key)
            else:
                texts = corrupt_texts(data.examples.texts, name, severity, seed)
                path = cache.store_texts(key, texts, labels)
            out[(name, severity)] = _as_text_set(data, key, texts, path)
            bar.set_postfix_str(f"{name} {severity}")
            bar.update()
    finally:
        bar.close()
    return out


def _build_with(executor, data: ImageSet, suite: str, keys: dict, cache: CorruptionCache, clean: str, done) -> None:
    """The missing cells as executor tasks; without a cache folder they go through a temporary one."""
    import tempfile
    import uuid

    from ladle.execution import make_executor

    own = isinstance(executor, str)
    executor = make_executor(executor)
    scratch = tempfile.TemporaryDirectory(prefix="ladle-corrupt-") if cache.folder is None else None
    folder = Path(scratch.name if scratch else cache.folder)
    images = folder / "clean" / f"{clean}-{os.getpid()}-{uuid.uuid4().hex[:8]}.npz"  # one per build: no two share it
    try:
        _write_clean(data, images)
        tasks = [{"clean": str(images), "cache": str(folder), "suite": suite, "key": key, "threads": 1}
                 for key in keys.values()]
        for cell, path in zip(keys, executor.map(build_cell, tasks), strict=True):  # strict: the map runs to its end
            key, path = keys[cell], Path(path)
            if scratch is None:
                checksum = _stored_checksum(path, key)
                done(cell, _as_set(data, suite, key, data.y.clone(), checksum, path))
            else:
                x, y = CorruptionCache(folder)._read(path, key) or (None, None)
                if x is None:
                    raise LadleError("corruptions: a task stored a set that does not match its key", file=path)
                done(cell, _as_set(data, suite, key, data.y.clone(), _checksum(x, y), None, x))
    finally:
        images.unlink(missing_ok=True)
        try:
            images.parent.rmdir()  # only when no other build is using it
        except OSError:
            pass
        if scratch is not None:
            scratch.cleanup()
        if own:
            executor.close()


def build_cell(task: dict) -> str:
    """Executor task: one (corruption, severity) cell of a clean set, stored atomically in the cache folder.

    task = {"clean": .npz of the clean images (written by corrupted_sets), "cache": cache folder,
            "suite": suite name, "key": the cell's cache key, "threads": torch threads while it runs}.
    Returns the path of the stored set; a cell already stored there is not built again.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(task.get("threads", 1))
    try:
        key, suite = task["key"], task["suite"]
        here = library_version(suite)
        if here != key["library"]:  # another package version on a worker would write other bytes under this key
            raise LadleError(f"corruptions: this worker has {here}, the caller {key['library']}: install the same "
                             "version everywhere", file=task["clean"])
        cache = CorruptionCache(Path(task["cache"]))
        if cache.load(key) is not None:
            return str(cache.path(key))
        x, y = _read_clean(Path(task["clean"]))
        if list(x.shape) != key["shape"]:
            raise LadleError(f"corruptions: clean images are {list(x.shape)}, the key says {key['shape']}",
                             file=task["clean"], key="x")
        images = corrupt_images(x, suite, key["corruption"], key["severity"], key["seed"])
        return str(cache.store(key, images, y))
    finally:
        torch.set_num_threads(previous)


def _write_clean(data: ImageSet, path: Path) -> None:
    """The clean images for the tasks: as uint8 when that gives back exactly the same floats (4× smaller)."""
    from ladle.io.writer import atomic_file

    x = data.x.detach().cpu().contiguous()
    coded = x if x.dtype == torch.uint8 else _to_uint8(x)
    exact = x.dtype == torch.uint8 or (x.dtype == torch.float32 and torch.equal(coded.float() / 255, x))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        np.savez(f, x=(coded if exact else x).numpy(), y=data.y.numpy(),
                 encoding=np.array("uint8/255" if exact else "raw"))


def _read_clean(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        with np.load(path, allow_pickle=False) as z:
            x, y, encoding = torch.from_numpy(z["x"]), torch.from_numpy(z["y"]), str(z["encoding"])
    except (OSError, ValueError, KeyError) as e:
        raise LadleError(f"corruptions: cannot read the clean images ({e}); is the folder shared with every worker?",
                         file=path) from None
    return (x.float() / 255 if encoding == "uint8/255" else x), y


def _stored_checksum(path: Path, key: dict) -> str:
    """The checksum a task stored with its cell, after checking the file is the cell asked for."""
    try:
        with np.load(path, allow_pickle=False) as z:
            stored_key, checksum = json.loads(str(z["key"])), str(z["checksum"])
    except Exception as e:  # noqa: BLE001  any unreadable file: zip, JSON, missing member
        raise LadleError(f"corruptions: cannot read the set a task stored ({e})", file=path) from None
    if stored_key != key:
        raise LadleError("corruptions: a task stored a set that does not match its key", file=path, key="key")
    return checksum
