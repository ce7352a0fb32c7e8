"""sha256 of ingredient files, remembered by (path, size, mtime, inode) so a file is hashed once.

Hashing runs at ~1.8 GB/s per core here, slower than reading a cached file: hashing every input
on every soup would cap a soup's throughput below the I/O bound. Like git's index, ladle trusts a
file whose path, size, modification time (ns) and inode are unchanged. The cache is a JSON file in
$LADLE_CACHE_DIR (default ~/.cache/ladle); `LADLE_HASH_CACHE=0` turns it off.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from ladle.io.atomic import write_text_atomic

_lock = threading.Lock()


def cache_root() -> Path:
    """Where ladle keeps what it can rebuild: $LADLE_CACHE_DIR, default ~/.cache/ladle."""
    return Path(os.environ.get("LADLE_CACHE_DIR") or Path.home() / ".cache" / "ladle")


def cache_file() -> Path | None:
    if os.environ.get("LADLE_HASH_CACHE", "1") == "0":
        return None
    return cache_root() / "sha256.json"


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


def _load(cache: Path) -> dict:
    try:
        data = json.loads(cache.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # missing or damaged: start again


def known_sha256(path: Path) -> str | None:
    """The file's sha256 if the cache holds it for the file as it is now, else None (nothing is read)."""
    cache = cache_file()
    if cache is None:
        return None
    path = Path(path).resolve()
    known = _load(cache).get(str(path))
    return known["sha256"] if known and known.get("stamp") == _stamp(path) else None


def sha256_file(path: Path) -> str:
    """The file's sha256, from the cache when the file is unchanged, else hashed (and remembered)."""
    path = Path(path).resolve()
    cache = cache_file()
    stamp = _stamp(path)
    if (known := known_sha256(path)) is not None:
        return known
    value = sha256_content(path)
    if cache is not None and _stamp(path) == stamp:  # unchanged while we read it
        _remember(cache, str(path), stamp, value)
    return value


def sha256_content(path: Path, chunk: int = 1 << 20, start: int = 0, digest=None) -> str:
    """Hash every byte, with a small reused buffer (no memory-mapping, so it does not inflate resident memory);
    or, with `digest` holding the sha256 of the first `start` bytes, the rest of them."""
    digest = digest if digest is not None else hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    with open(path, "rb") as f:
        f.seek(start)
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def remember_sha256(path: Path, value: str) -> None:
    """Record a hash computed elsewhere (a soup hashed as it was written, before its rename into place)."""
    cache = cache_file()
    if cache is not None:
        path = Path(path).resolve()
        _remember(cache, str(path), _stamp(path), value)


def file_hashes(files: list) -> list[str]:
    """The sha256 of each file of a checkpoint, in order: its part of an evaluation's store key."""
    return [sha256_file(f) for f in files]


def checkpoint_sha256(files: list) -> str:
    """A checkpoint's content hash: the sha256 of its file, or of its files' sha256s for a sharded directory."""
    if len(files) == 1:
        return sha256_file(files[0])
    return hashlib.sha256("".join(sha256_file(f) for f in files).encode()).hexdigest()


def _remember(cache: Path, path: str, stamp: str, value: str) -> None:
    with _lock:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            data = _load(cache)
            data[path] = {"stamp": stamp, "sha256": value}
            write_text_atomic(cache, json.dumps(data))
        except OSError:
            pass  # a read-only home is no reason to fail a soup
