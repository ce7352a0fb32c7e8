"""Write soups so that nothing is ever half-written: temporary path, fsync, rename.

A path ending in `.safetensors` gets one file plus `<output>.json`; any other path is a
`save_pretrained`-style directory (`model.safetensors`, or shards with `model.safetensors.index.json`,
plus `ladle.json`). Files are laid out from the known shapes before mixing starts; finished tensors go to a
writer thread (a bounded queue: memory stays flat), which writes them at their offsets while the next one is mixed.
When the header is known before the data (every shard's; a single file's when its manifest is), the header goes
first and the data follow in file order, so the sha256 is computed from the buffers as they are written.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import queue
import shutil
import threading
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
IN_FLIGHT = 64 << 20  # bytes of finished tensors queued for the writer thread (one larger tensor may wait alone)


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
    """Check that the disk has room for the file before any mixing (one clear error naming `path`), and give the
    file its size. Blocks are not allocated up front: on ext4, writes into fallocate'd (unwritten) extents took 2.7×
    as long as into a sparse file (0.67 s against 0.24 s for 512 MiB); a disk filled meanwhile by someone else is
    reported by the write that finds it full."""
    st = os.fstatvfs(fd)
    free = st.f_bavail * st.f_frsize
    if free < size:
        raise LadleError(f"not enough disk space: the soup needs {human_size(size)}, {human_size(free)} free", file=path)
    os.ftruncate(fd, size)


class OutputFile:
    """One output .safetensors file, laid out from the shapes before the first tensor is mixed: the disk's room for
    it checked, each finished tensor is written straight to its offset (memory holds no output), and the header is
    written last into space reserved for it (or first, by `begin`, when it is known before the data). A header that
    outgrew its space is handled by copying the data once behind a larger header.

    With `hash_content`, bytes written in order from the file's start (a header written first, then the data in
    file order) are hashed as they are written; whatever the order left unhashed is read back at close."""

    def __init__(self, path: Path, infos: dict[str, TensorInfo], metadata: dict[str, str], reserve: int = 0,
                 shown: Path | None = None, hash_content: bool = False):
        self.path = Path(path)
        self.shown = shown or self.path  # the name errors give: the output, not its temporary
        self.entries, self.data_bytes = safetensors_layout(infos)
        draft = len(header_bytes(self.entries, metadata)) - 8
        self.header_space = draft + reserve + (-(draft + reserve + 8) % 8)
        self.missing = set(infos)
        self.filled: dict[str, int] = {}  # bytes written so far per key (a tensor may come in parts)
        self.digest = hashlib.sha256() if hash_content else None
        self.hashed = 0  # bytes from the file's start handed to the hash so far, in order
        self._hashing = None  # the buffer being hashed (on its own thread, while the next one is written)
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ladle-sha256") if hash_content else None
        self.early_header: bytes | None = None  # the header `begin` wrote
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            reserve_space(self.fd, 8 + self.header_space + self.data_bytes, self.shown)
        except BaseException:
            self._close_fd()
            raise

    @property
    def data_start(self) -> int:
        return 8 + self.header_space

    @property
    def order(self) -> list[str]:
        """The keys in the order of their bytes in the file."""
        return sorted(self.entries, key=lambda k: self.entries[k]["data_offsets"][0])

    def begin(self, metadata: dict[str, str]) -> None:
        """Write the header now, before the data, so the data written in order behind it are hashed as they go; if
        `close` is given other metadata, it rewrites the header and hashes the file again."""
        try:
            head = header_bytes(self.entries, metadata, self.header_space)
        except ValueError:
            return  # it does not fit: close will grow it
        _pwrite_all(self.fd, memoryview(head), 0)
        self.early_header = head
        self._hash_in_order(memoryview(head), 0)

    def _hash_in_order(self, data: memoryview, offset: int) -> None:
        """Hash these bytes if they continue what was hashed; one buffer at a time, beside the next write."""
        if self.digest is not None and offset == self.hashed:
            self._hashed_so_far()
            self._hashing = self._hasher.submit(self.digest.update, data)
            self.hashed += len(data)

    def _hashed_so_far(self) -> None:
        if self._hashing is not None:
            self._hashing.result()
            self._hashing = None

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
            data = memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
            try:
                _pwrite_all(self.fd, data, self.data_start + begin + done)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise LadleError("the disk filled up while the soup was written", file=self.shown) from None
                raise
            self._hash_in_order(data, self.data_start + begin + done)
            done += len(data)
        self.filled[key] = done
        if begin + done == end:
            self.missing.discard(key)

    def close(self, metadata: dict[str, str]) -> str | None:
        """Write the header (unless `begin` wrote this one), fsync, close. Every planned tensor must have been put.
        With `hash_content`, return the file's sha256: hashed as written, and what was not read back from the page
        cache while fsync waits for the disk (the bytes are final once the header is in)."""
        if self.missing:
            raise RuntimeError(f"writer finished without tensor {sorted(self.missing)[0]}")
        try:
            head = header_bytes(self.entries, metadata, self.header_space)
        except ValueError:
            self._grow_header(header_bytes(self.entries, metadata))
            self._rehash()
        else:
            if head != self.early_header:
                _pwrite_all(self.fd, memoryview(head), 0)
                self._rehash()
        self._hashed_so_far()
        if self.digest is None:
            os.fsync(self.fd)
            self._close_fd()
            return None
        if self.hashed == 8 + self.header_space + self.data_bytes:
            os.fsync(self.fd)
            self._close_fd()
            return self.digest.hexdigest()
        with ThreadPoolExecutor(max_workers=1) as pool:
            digest = pool.submit(sha256_content, self.path, start=self.hashed, digest=self.digest)
            os.fsync(self.fd)
            self._close_fd()
            return digest.result()

    def _rehash(self) -> None:
        """The bytes hashed so far are no longer the file's: start again (close reads it back)."""
        if self.digest is not None:
            self._hashed_so_far()
            self.digest, self.hashed = hashlib.sha256(), 0

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
        if self._hasher is not None:
            self._hasher.shutdown(wait=True)
            self._hasher = None

    def abort(self) -> None:
        self._close_fd()

    def __enter__(self) -> OutputFile:
        return self

    def __exit__(self, *exc) -> None:
        self._close_fd()


def _manifest_text(manifest: dict) -> str:
    return json.dumps(manifest, indent=2, sort_keys=False, default=str)


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
    still lands, through one copy of the data). `hash_output=False` skips the sha256 of what was written.

    `add` hands a finished tensor to a writer thread and returns, so the next tensor is mixed while this one is
    written and hashed; at most IN_FLIGHT bytes wait (or one larger tensor). Mix in `order` (file order) and call
    `begin` first for the sha256 to be computed from the buffers as they are written, not read back."""

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
        self._queue: queue.Queue = queue.Queue()
        self._room = threading.Condition()
        self._waiting = 0  # bytes queued for the writer thread
        self._failure: BaseException | None = None
        self._thread: threading.Thread | None = None
        try:
            for i, keys in enumerate(self.shards):
                path = self.tmp if self.is_file else self.tmp / self.shard_name(i)
                self.files.append(OutputFile(path, {k: infos[k] for k in keys}, {"format": "pt"},
                                             manifest_reserve if self.is_file else 0,
                                             shown=self.out if self.is_file else self.out / self.shard_name(i),
                                             hash_content=hash_output))
        except BaseException:
            self.abort()
            raise
        self.order = [k for f in self.files for k in f.order]  # every key, in the order of the output's bytes

    def begin(self, manifest: dict | None = None) -> None:
        """Write the headers before the data: every shard's (they hold no manifest), and a single file's when its
        `manifest` is known now (`finish` rewrites it if the manifest changed meanwhile)."""
        if not self.is_file:
            for f in self.files:
                f.begin({"format": "pt"})
        elif manifest is not None:
            self.files[0].begin({"format": "pt", MANIFEST_KEY: _manifest_text(manifest)})

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
        """Queue a finished tensor (or the next flat part of one) for the writer thread; waits while IN_FLIGHT bytes
        are queued. A failure of the thread is raised here."""
        array = to_numpy(tensor)
        with self._room:
            while self._waiting and self._waiting + array.nbytes > IN_FLIGHT and self._failure is None:
                self._room.wait()
            if self._failure is not None:
                raise self._failure
            self._waiting += array.nbytes
        if self._thread is None:
            self._thread = threading.Thread(target=self._drain, name="ladle-writer", daemon=True)
            self._thread.start()
        self._queue.put((key, array))

    def _drain(self) -> None:
        """The writer thread: write (and hash) queued tensors in order; after a failure, only empty the queue."""
        while (item := self._queue.get()) is not None:
            key, array = item
            try:
                if self._failure is None:
                    self._write(key, array)
            except BaseException as e:  # noqa: BLE001 — handed to the mixing thread
                self._failure = e
            finally:
                with self._room:
                    self._waiting -= array.nbytes
                    self._room.notify_all()
                del item, array

    def _write(self, key: str, array) -> None:
        shard = self.files[self.shard_of[key]]
        shard.put(key, array)
        if not self.is_file and not shard.missing:
            # a full shard is finished now: its header holds no manifest
            self.shard_sha256[self.shard_of[key]] = shard.close({"format": "pt"})

    def _stop(self) -> None:
        """Let the writer thread finish what is queued and end."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def finish(self, manifest: dict, extras: dict[str, Path | str] | None = None) -> dict[str, str]:
        """Write the header(s), the index and the manifest, then rename into place. Returns sha256 by file
        (empty with hash_output=False). `extras` (directory outputs): more files by name, copied byte for byte from
        a path or written from text (config, tokenizer, model card), inside the same atomic rename."""
        self._stop()
        if self._failure is not None:
            raise self._failure
        manifest_text = _manifest_text(manifest)
        if self.is_file:
            digest = self.files[0].close({"format": "pt", MANIFEST_KEY: manifest_text})
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
        self._failure = self._failure or RuntimeError("writer aborted")  # the thread writes nothing more
        self._stop()
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
