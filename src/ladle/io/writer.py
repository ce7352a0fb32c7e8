"""Write soups so that nothing is ever half-written: temporary path, fsync, rename.

A path ending in `.safetensors` gets one file plus `<output>.json`; any other path is a
`save_pretrained`-style directory (`model.safetensors`, or shards with `model.safetensors.index.json`,
plus `ladle.json`). Shards are planned from the known shapes before mixing starts, and each is
written as soon as it is full, so memory holds at most one shard.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ladle.io.atomic import TMP_MARK, atomic_file, write_text_atomic  # noqa: F401  (atomic_file: callers import it from here)
from ladle.io.checkpoints import TensorInfo
from ladle.io.dtypes import dtype_name, itemsize, to_numpy
from ladle.io.hashing import remember_sha256, sha256_content
from ladle.errors import LadleError

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


def safetensors_layout(infos: dict[str, TensorInfo]) -> tuple[dict[str, dict], int]:
    """The header entries of a safetensors file (offsets known from shapes alone) and its data size.

    Larger items first keeps every tensor aligned to its element size (no holes are allowed)."""
    entries: dict[str, dict] = {}
    offset = 0
    for key in sorted(infos, key=lambda k: -itemsize(infos[k].dtype)):
        info = infos[key]
        entries[key] = {"dtype": info.dtype, "shape": list(info.shape),
                        "data_offsets": [offset, offset + info.nbytes]}
        offset += info.nbytes
    return entries, offset


def header_bytes(entries: dict[str, dict], metadata: dict[str, str], size: int | None = None) -> bytes:
    """The length prefix and JSON header, padded with spaces to `size` bytes of JSON (or to a multiple of 8)."""
    header: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    header.update(entries)
    raw = json.dumps(header, separators=(",", ":")).encode()
    pad = (size - len(raw)) if size is not None else -(len(raw) + 8) % 8
    if pad < 0:
        raise ValueError("header larger than its reserved space")
    raw += b" " * pad
    return len(raw).to_bytes(8, "little") + raw


def write_safetensors(path: Path, tensors: dict, metadata: dict[str, str]) -> None:
    """A whole safetensors file from tensors in memory (not atomic: callers write to a temporary path)."""
    infos = {k: TensorInfo(tuple(t.shape), t.dtype) for k, t in tensors.items()}
    with OutputFile(path, infos, metadata) as f:
        for key, t in tensors.items():
            f.put(key, t)
        f.close(metadata)


def reserve_space(fd: int, size: int, path: Path) -> None:
    """Allocate the file's blocks up front, so a full disk is one clear error (naming `path`) before any mixing."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno == errno.ENOSPC or e.errno == errno.EDQUOT:
            free = os.fstatvfs(fd).f_bavail * os.fstatvfs(fd).f_frsize
            raise LadleError(f"not enough disk space: the soup needs {human_size(size)}, {human_size(free)} free",
                             file=path) from None
        if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise LadleError(f"cannot reserve {human_size(size)}: {e.strerror}", file=path) from None
        os.ftruncate(fd, size)  # a filesystem without fallocate: a sparse file of the right size
    except AttributeError:  # no posix_fallocate on this platform
        os.ftruncate(fd, size)


class OutputFile:
    """One output .safetensors file, laid out from the shapes before the first tensor is mixed: its blocks are
    reserved, each finished tensor is written straight to its offset (memory holds no output), and the header is
    written last into space reserved for it. A header that outgrew its space is handled by copying the data once
    behind a larger header."""

    def __init__(self, path: Path, infos: dict[str, TensorInfo], metadata: dict[str, str], reserve: int = 0,
                 shown: Path | None = None):
        self.path = Path(path)
        self.shown = shown or self.path  # the name errors give: the output, not its temporary
        self.entries, self.data_bytes = safetensors_layout(infos)
        draft = len(header_bytes(self.entries, metadata)) - 8
        self.header_space = draft + reserve + (-(draft + reserve + 8) % 8)
        self.missing = set(infos)
        self.filled: dict[str, int] = {}  # bytes written so far per key (a tensor may come in parts)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            reserve_space(self.fd, 8 + self.header_space + self.data_bytes, self.shown)
        except BaseException:
            self._close_fd()
            raise

    @property
    def data_start(self) -> int:
        return 8 + self.header_space

    def put(self, key: str, tensor) -> None:
        """Write the tensor (numpy array or torch tensor) at its place; or the next flat part of it (parts arrive
        in order, see mix_stream)."""
        entry = self.entries[key]
        begin, end = entry["data_offsets"]
        done = self.filled.get(key, 0)
        array = to_numpy(tensor)
        whole = done == 0 and list(array.shape) == entry["shape"]
        if dtype_name(array.dtype) != entry["dtype"] or not (whole or array.ndim == 1) or \
                begin + done + array.nbytes > end:
            raise RuntimeError(f"writer: '{key}' arrived as {dtype_name(array.dtype)} {list(array.shape)} after "
                               f"{done} bytes, planned {entry['dtype']} {entry['shape']}")
        if array.size:
            data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
            _pwrite_all(self.fd, memoryview(data), self.data_start + begin + done)
            done += len(data)
        self.filled[key] = done
        if begin + done == end:
            self.missing.discard(key)

    def close(self, metadata: dict[str, str], hash_content: bool = False) -> str | None:
        """Write the header, fsync, close. Every planned tensor must have been put. With `hash_content`, return the
        file's sha256, computed from the page cache while fsync waits for the disk (the bytes are final once the
        header is in)."""
        if self.missing:
            raise RuntimeError(f"writer finished without tensor {sorted(self.missing)[0]}")
        try:
            head = header_bytes(self.entries, metadata, self.header_space)
        except ValueError:
            self._grow_header(header_bytes(self.entries, metadata))
        else:
            _pwrite_all(self.fd, memoryview(head), 0)
        with ThreadPoolExecutor(max_workers=1) as pool:
            digest = pool.submit(sha256_content, self.path) if hash_content else None
            os.fsync(self.fd)
            self._close_fd()
            return digest.result() if digest else None

    def _grow_header(self, head: bytes) -> None:
        """The metadata outgrew the reserved space: a new file with the larger header, the data copied behind it."""
        bigger = self.path.with_name(self.path.name + ".grow")
        fd = os.open(bigger, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            reserve_space(fd, len(head) + self.data_bytes, self.shown)
            _pwrite_all(fd, memoryview(head), 0)
            copied = 0
            while copied < self.data_bytes:
                n = os.copy_file_range(self.fd, fd, self.data_bytes - copied, self.data_start + copied,
                                       len(head) + copied)
                if n <= 0:
                    raise OSError(errno.EIO, "copy_file_range copied nothing")
                copied += n
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            bigger.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(bigger, self.path)
        self.header_space = len(head) - 8

    def _close_fd(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def abort(self) -> None:
        self._close_fd()

    def __enter__(self) -> OutputFile:
        return self

    def __exit__(self, *exc) -> None:
        self._close_fd()


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        n = os.pwrite(fd, data[: 1 << 30], offset)
        data, offset = data[n:], offset + n


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


def is_file_output(out: str | os.PathLike) -> bool:
    """`X.safetensors` is one file; any other output path is a Hugging Face style directory."""
    return Path(out).suffix == ".safetensors"


def check_destination(out: Path, force: bool) -> None:
    """Refuse to overwrite without force, or to put a file where a directory is (or the reverse)."""
    is_file = is_file_output(out)
    if out.exists() and not force:
        raise LadleError("output exists; pass --force to overwrite it", file=out)
    if out.exists() and is_file != out.is_file():
        raise LadleError("output exists and is a " + ("directory" if is_file else "file"), file=out)
    if not out.parent.is_dir():
        raise LadleError("output directory does not exist", file=out.parent)


class SoupWriter:
    """Writes each finished tensor straight into its place in the output (files laid out and their blocks reserved
    before mixing starts), then renames the whole into place atomically; use as a context manager.

    `manifest_reserve`: bytes of header kept free for the manifest of a single-file output (a larger manifest
    still lands, through one copy of the data). `hash_output=False` skips the sha256 of what was written."""

    def __init__(self, out: str | os.PathLike, infos: dict[str, TensorInfo], *, force: bool = False,
                 max_shard_size: int | str = "5GB", manifest_reserve: int = 64 << 10, hash_output: bool = True,
                 weights_name: str = "model"):
        self.out = Path(out)
        self.weights_name = weights_name  # directory outputs: model.safetensors, or adapter_model.safetensors
        self.is_file = is_file_output(self.out)
        self.max_shard_size = parse_size(max_shard_size)
        self.hash_output = hash_output
        check_destination(self.out, force)
        self.shards = self._plan_shards(infos)
        self.shard_of = {k: i for i, keys in enumerate(self.shards) for k in keys}
        self.sha256: dict[str, str] = {}
        self.shard_sha256: dict[int, str] = {}  # of directory shards, hashed as each is closed
        sweep_stale_temporaries(self.out)
        self.tmp = self.out.with_name(f".{self.out.name}{TMP_MARK}{os.getpid()}")
        if not self.is_file:
            self.tmp.mkdir()
        self.files: list[OutputFile] = []
        try:
            for i, keys in enumerate(self.shards):
                path = self.tmp if self.is_file else self.tmp / self.shard_name(i)
                self.files.append(OutputFile(path, {k: infos[k] for k in keys}, {"format": "pt"},
                                             manifest_reserve if self.is_file else 0,
                                             shown=self.out if self.is_file else self.out / self.shard_name(i)))
        except BaseException:
            self.abort()
            raise

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
            return f"{self.weights_name}.safetensors"
        return f"{self.weights_name}-{i + 1:05d}-of-{len(self.shards):05d}.safetensors"

    def add(self, key: str, tensor) -> None:
        shard = self.files[self.shard_of[key]]
        shard.put(key, tensor)
        if not self.is_file and not shard.missing:
            # a full shard is finished now: its header holds no manifest
            self.shard_sha256[self.shard_of[key]] = shard.close({"format": "pt"}, hash_content=self.hash_output)

    def finish(self, manifest: dict, extras: dict[str, Path | str] | None = None) -> dict[str, str]:
        """Write the header(s), the index and the manifest, then rename into place. Returns sha256 by file
        (empty with hash_output=False). `extras` (directory outputs): more files by name, copied byte for byte from
        a path or written from text (config, tokenizer, model card), inside the same atomic rename."""
        manifest_text = json.dumps(manifest, indent=2, sort_keys=False, default=str)
        if self.is_file:
            digest = self.files[0].close({"format": "pt", MANIFEST_KEY: manifest_text}, hash_content=self.hash_output)
            os.replace(self.tmp, self.out)
            _fsync_dir(self.out.parent)
            write_text_atomic(self.out.with_name(self.out.name + ".json"), manifest_text + "\n")
            if self.hash_output:
                remember_sha256(self.out, digest)  # the next soup that reads this file finds it hashed
                self.sha256 = {self.out.name: digest}
            return self.sha256
        unfinished = [f for f in self.files if f.missing]
        if unfinished:
            raise RuntimeError(f"writer finished without tensor {sorted(unfinished[0].missing)[0]}")
        if len(self.shards) > 1:
            index = {
                "metadata": {"total_size": self.total_bytes, MANIFEST_KEY: DIR_MANIFEST},
                "weight_map": {k: self.shard_name(i) for k, i in self.shard_of.items()},
            }
            (self.tmp / f"{self.weights_name}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        (self.tmp / DIR_MANIFEST).write_text(manifest_text + "\n")
        for name, content in (extras or {}).items():
            target = self.tmp / name
            if isinstance(content, Path):
                shutil.copyfile(content, target)
            else:
                target.write_text(content)
            with open(target, "rb") as f:
                os.fsync(f.fileno())
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
        if self.hash_output:
            for i, digest in sorted(self.shard_sha256.items()):
                remember_sha256(self.out / self.shard_name(i), digest)
                self.sha256[self.shard_name(i)] = digest
        return dict(self.sha256)

    def abort(self) -> None:
        for f in self.files:
            f.abort()
        if self.tmp.is_dir():
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            self.tmp.unlink(missing_ok=True)
        self.tmp.with_name(self.tmp.name + ".grow").unlink(missing_ok=True)

    def __enter__(self) -> SoupWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
