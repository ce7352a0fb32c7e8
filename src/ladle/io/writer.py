"""Write soups so that nothing is ever half-written: temporary path, fsync, rename.

A path ending in `.safetensors` gets one file plus `<output>.json`; any other path is a
`save_pretrained`-style directory (`model.safetensors`, or shards with `model.safetensors.index.json`,
plus `ladle.json`). Shards are planned from the known shapes before mixing starts, and each is
written as soon as it is full, so memory holds at most one shard.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from ladle.io.checkpoints import DTYPE_NAMES, TensorInfo
from ladle.errors import LadleError

TMP_MARK = ".ladle-tmp-"
MANIFEST_KEY = "ladle_manifest"
DIR_MANIFEST = "ladle.json"


def parse_size(text: str | int) -> int:
    """'5GB', '500MB', '2GiB' or a number of bytes."""
    if isinstance(text, int):
        return text
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    s = str(text).strip().upper().replace(" ", "")
    number = s.rstrip("KMGTIB")
    unit = s[len(number) :]
    try:
        value = int(float(number) * units[unit])
    except (ValueError, KeyError):
        raise LadleError(f"max_shard_size: cannot read '{text}' as a size (e.g. 5GB, 500MB)") from None
    if value <= 0:
        raise LadleError(f"max_shard_size: must be positive, got '{text}'")
    return value


def human_size(n: int) -> str:
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} bytes"


def safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[bytes, list[torch.Tensor]]:
    """The header of a safetensors file and the tensors in the order their bytes follow it."""
    # Larger items first keeps every tensor aligned to its element size (no holes are allowed).
    order = sorted(tensors, key=lambda k: -tensors[k].dtype.itemsize)
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for key in order:
        t = tensors[key]
        size = t.numel() * t.dtype.itemsize
        header[key] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(len(raw) + 8) % 8)
    return len(raw).to_bytes(8, "little") + raw, [tensors[k] for k in order]


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """Write (not atomically: callers write to a temporary path) and fsync; return the sha256.

    The bytes are hashed by a second thread while this one writes them (both release the GIL).
    """
    head, ordered = safetensors_bytes(tensors, metadata)
    arrays = [t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy() for t in ordered if t.numel()]
    with ThreadPoolExecutor(max_workers=1) as pool:
        digest = pool.submit(_sha256_of, [head, *arrays])
        with open(path, "wb") as f:
            f.write(head)
            for data in arrays:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return digest.result()


def _sha256_of(chunks) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def atomic_file(path: Path, mode: str = "wb"):
    """Open a temporary beside `path`; on a clean exit fsync it and rename it into place, else remove it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_file(path, "w") as f:
        f.write(text)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def sweep_stale_temporaries(out: Path) -> None:
    """Remove temporaries left by a writer that was killed (its process no longer exists)."""
    for stale in out.parent.glob(f".{out.name}*{TMP_MARK}*"):
        try:
            pid = int(stale.name.rsplit(TMP_MARK, 1)[1].split(".")[0])
            os.kill(pid, 0)
            continue  # still running
        except ProcessLookupError:
            pass
        except (ValueError, PermissionError):
            continue
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


def check_destination(out: Path, force: bool) -> None:
    """Refuse to overwrite without force, or to put a file where a directory is (or the reverse)."""
    is_file = out.suffix == ".safetensors"
    if out.exists() and not force:
        raise LadleError("output exists; pass --force to overwrite it", file=out)
    if out.exists() and is_file != out.is_file():
        raise LadleError("output exists and is a " + ("directory" if is_file else "file"), file=out)
    if not out.parent.is_dir():
        raise LadleError("output directory does not exist", file=out.parent)


class SoupWriter:
    """Collects finished tensors and writes them atomically; use as a context manager."""

    def __init__(self, out: str | os.PathLike, infos: dict[str, TensorInfo], *, force: bool = False, max_shard_size: int | str = "5GB"):
        self.out = Path(out)
        self.is_file = self.out.suffix == ".safetensors"
        self.max_shard_size = parse_size(max_shard_size)
        check_destination(self.out, force)
        self.shards = self._plan_shards(infos)
        self.shard_of = {k: i for i, keys in enumerate(self.shards) for k in keys}
        self.pending: dict[str, torch.Tensor] = {}
        self.written = 0
        self.sha256: dict[str, str] = {}
        sweep_stale_temporaries(self.out)
        self.tmp = self.out.with_name(f".{self.out.name}{TMP_MARK}{os.getpid()}")
        if not self.is_file:
            self.tmp.mkdir()

    def _plan_shards(self, infos: dict[str, TensorInfo]) -> list[list[str]]:
        total = self.total_bytes = sum(i.nbytes for i in infos.values())
        if self.is_file:
            if total > self.max_shard_size:
                raise LadleError(
                    f"the soup is {human_size(total)}, above --max-shard-size {human_size(self.max_shard_size)}: "
                    "give a directory as output to write shards, or raise --max-shard-size",
                    file=self.out,
                )
            return [list(infos)]
        shards: list[list[str]] = [[]]
        size = 0
        for key, info in infos.items():
            if shards[-1] and size + info.nbytes > self.max_shard_size:
                shards.append([])
                size = 0
            shards[-1].append(key)
            size += info.nbytes
        return shards

    def shard_name(self, i: int) -> str:
        if len(self.shards) == 1:
            return "model.safetensors"
        return f"model-{i + 1:05d}-of-{len(self.shards):05d}.safetensors"

    def add(self, key: str, tensor: torch.Tensor) -> None:
        self.pending[key] = tensor
        shard = self.shard_of[key]
        if not self.is_file and all(k in self.pending for k in self.shards[shard]):
            self._write_shard(shard, {"format": "pt"})

    def _write_shard(self, i: int, metadata: dict[str, str]) -> None:
        tensors = {k: self.pending.pop(k) for k in self.shards[i]}
        name = self.shard_name(i)
        self.sha256[name] = write_safetensors(self.tmp / name, tensors, metadata)
        self.written += 1

    def finish(self, manifest: dict) -> dict[str, str]:
        """Write what remains, the index and the manifest, then rename into place. Returns sha256 by file."""
        missing = [k for k in self.shard_of if k not in self.pending] if self.is_file else []
        if missing:
            raise RuntimeError(f"writer finished without tensor {missing[0]}")
        manifest_text = json.dumps(manifest, indent=2, sort_keys=False, default=str)
        if self.is_file:
            sha = write_safetensors(self.tmp, self.pending, {"format": "pt", MANIFEST_KEY: manifest_text})
            self.pending.clear()
            os.replace(self.tmp, self.out)
            _fsync_dir(self.out.parent)
            write_text_atomic(self.out.with_name(self.out.name + ".json"), manifest_text + "\n")
            self.sha256 = {self.out.name: sha}
            return self.sha256
        if self.written != len(self.shards):
            raise RuntimeError("writer finished before every shard was complete")
        if len(self.shards) > 1:
            index = {
                "metadata": {"total_size": self.total_bytes, MANIFEST_KEY: DIR_MANIFEST},
                "weight_map": {k: self.shard_name(i) for k, i in self.shard_of.items()},
            }
            (self.tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        (self.tmp / DIR_MANIFEST).write_text(manifest_text + "\n")
        _fsync_dir(self.tmp)
        if self.out.exists():
            if _exchange(self.tmp, self.out):
                shutil.rmtree(self.tmp)
            else:
                old = self.out.with_name(f".{self.out.name}.old{TMP_MARK}{os.getpid()}")
                os.rename(self.out, old)
                os.rename(self.tmp, self.out)
                shutil.rmtree(old)
        else:
            os.rename(self.tmp, self.out)
        _fsync_dir(self.out.parent)
        return dict(self.sha256)

    def abort(self) -> None:
        self.pending.clear()
        if self.tmp.is_dir():
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> SoupWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
