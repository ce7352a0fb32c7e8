"""Open ingredients lazily, tensor by tensor, whatever format they come in.

An `Ingredient` knows every key's shape and dtype before a single tensor is read, and reads one
tensor at a time on request, so mixing N checkpoints never holds N of them in memory.
"""

from __future__ import annotations

import json
import mmap
import pickle
import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ladle.errors import LadleError
from ladle.io.dtypes import NUMPY_DTYPES, dtype_name, is_float, is_tensor, itemsize, to_numpy, to_torch

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
PREFIXES = ("module.", "_orig_mod.")
# In a save_pretrained directory, in order of preference.
HF_LAYOUTS = (
    ("model.safetensors.index.json", "index"),
    ("model.safetensors", "file"),
    ("pytorch_model.bin.index.json", "index"),
    ("pytorch_model.bin", "file"),
)


@dataclass(frozen=True)
class TensorInfo:
    """What is known about a tensor before reading it. `dtype` is its safetensors name ("F32", "BF16", …); a numpy
    or torch dtype given here is stored by that name."""

    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self):
        object.__setattr__(self, "dtype", dtype_name(self.dtype))

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * itemsize(self.dtype)


class SafetensorsFile:
    """A memory-mapped .safetensors file whose header has been checked against its size."""

    def __init__(self, path: Path):
        self.path = path
        try:
            size = path.stat().st_size
            with open(path, "rb") as f:
                prefix = f.read(8)
                if len(prefix) < 8:
                    raise LadleError("truncated: no safetensors header (file is %d bytes)" % size, file=path)
                header_len = int.from_bytes(prefix, "little")
                if header_len > size - 8:
                    raise LadleError(
                        f"corrupt or truncated: header claims {header_len} bytes but the file has {size - 8} after the length",
                        file=path,
                    )
                raw = f.read(header_len)
        except OSError as e:
            raise LadleError(f"cannot read: {e.strerror}", file=path) from None
        try:
            header = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise LadleError("corrupt: safetensors header is not valid JSON", file=path) from None
        if not isinstance(header, dict):
            raise LadleError("corrupt: safetensors header is not a JSON object", file=path)
        self.metadata: dict = header.pop("__metadata__", None) or {}
        self.data_start = 8 + header_len
        data_size = size - self.data_start
        self.infos: dict[str, TensorInfo] = {}
        self.spans: dict[str, tuple[int, int]] = {}
        for key, entry in header.items():
            self._check_entry(key, entry, data_size)
        self._mmap: mmap.mmap | None = None

    def _check_entry(self, key: str, entry: object, data_size: int) -> None:
        try:
            dtype = entry["dtype"]
            if dtype not in NUMPY_DTYPES:
                raise KeyError(dtype)
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise LadleError("corrupt header entry (needs a known dtype, shape and data_offsets)", file=self.path, key=key) from None
        info = TensorInfo(shape, dtype)
        if min(shape, default=0) < 0 or begin < 0 or end - begin != info.nbytes:
            raise LadleError(
                f"header lies about sizes: shape {list(shape)} of {entry['dtype']} needs {info.nbytes} bytes, "
                f"offsets span {end - begin}",
                file=self.path,
                key=key,
            )
        if end > data_size:
            raise LadleError(
                f"truncated: tensor ends at data byte {end} but the file holds only {data_size} data bytes",
                file=self.path,
                key=key,
            )
        self.infos[key] = info
        self.spans[key] = (begin, end)

    def array(self, key: str) -> np.ndarray:
        """The tensor as a numpy array over the mapped file: nothing is read until it is used."""
        info = self.infos[key]
        dtype = NUMPY_DTYPES[info.dtype]
        if info.numel == 0:
            return np.empty(info.shape, dtype=dtype)
        if self._mmap is None:
            with open(self.path, "rb") as f:
                # ACCESS_COPY: a private, writable mapping, so torch tensors can share it without copying.
                self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        begin, end = self.spans[key]
        offset = self.data_start + begin
        view = memoryview(self._mmap)[offset : self.data_start + end]
        if offset % dtype.itemsize:
            view = bytearray(view)  # unaligned: copy rather than hand out a misaligned pointer
        return np.frombuffer(view, dtype=dtype).reshape(info.shape)

    def get(self, key: str):
        return to_torch(self.array(key))

    def release(self, key: str) -> None:
        """Drop the pages of a tensor that has been used, so resident memory stays flat."""
        if self._mmap is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        begin, end = self.spans[key]
        start = (self.data_start + begin) // mmap.PAGESIZE * mmap.PAGESIZE
        stop = self.data_start + end
        if stop > start:
            self._mmap.madvise(mmap.MADV_DONTNEED, start, stop - start)


class TorchFile:
    """A pickled checkpoint, opened with weights_only=True and memory-mapped where the format allows."""

    def __init__(self, path: Path):
        self.path = path
        obj = load_torch_weights_only(path)
        self.tensors, self.notes = unwrap_state_dict(obj, path)
        self.infos = tensor_infos(self.tensors, path)
        self.metadata: dict = {}

    def get(self, key: str):
        return self.tensors[key]

    def array(self, key: str) -> np.ndarray:
        return to_numpy(self.tensors[key])

    def release(self, key: str) -> None:
        pass


def load_torch_weights_only(path: Path) -> object:
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickle-protocol chatter; real failures are raised below
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e) and "zip" not in str(e):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as e:
        lines = [ln.split("error:")[-1].strip() for ln in str(e).splitlines()]
        reason = next((ln for ln in lines if "unsupported" in ln.lower() and "file an issue" not in ln), "unsupported content")
        raise LadleError(
            f"refused to unpickle: not plain tensors ({reason}): it needs code or is not a checkpoint; ladle loads weights only "
            "(torch.load weights_only=True). Convert it to .safetensors with a trusted script",
            file=path,
        ) from None
    except Exception as e:  # noqa: BLE001  (torch's weights-only unpickler raises IndexError, KeyError… on garbage)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LadleError(f"cannot load as a PyTorch checkpoint: {first}", file=path) from None


class MemoryState:
    """An in-memory state dict or nn.Module given through the API."""

    def __init__(self, state: Mapping, name: str):
        self.path = name
        self.tensors, self.notes = unwrap_state_dict(state, name)
        self.infos = tensor_infos(self.tensors, name)
        self.metadata: dict = {}

    def get(self, key: str):
        return self.tensors[key]

    def array(self, key: str) -> np.ndarray:
        return to_numpy(self.tensors[key])

    def release(self, key: str) -> None:
        pass


def unwrap_state_dict(obj: object, source: object) -> tuple[dict, list[str]]:
    """Take the state dict out of the usual wrappers; return it with notes saying what was done."""
    notes: list[str] = []
    while isinstance(obj, Mapping) and not _all_tensors(obj):
        for wrapper in WRAPPER_KEYS:
            if isinstance(obj.get(wrapper), Mapping):
                notes.append(f"took the state dict from the top-level '{wrapper}' entry")
                obj = obj[wrapper]
                break
        else:
            break
    if not isinstance(obj, Mapping):
        raise LadleError(f"does not hold a state dict (found {type(obj).__name__})", file=source)
    tensors = {str(k): v for k, v in obj.items() if is_tensor(v)}
    dropped = [str(k) for k, v in obj.items() if not is_tensor(v)]
    if dropped:
        notes.append(f"ignored {len(dropped)} non-tensor entries ({', '.join(dropped[:5])}{', …' if len(dropped) > 5 else ''})")
    if not tensors:
        raise LadleError("holds no tensors", file=source)
    return tensors, notes


def tensor_infos(tensors: Mapping, source: object) -> dict[str, TensorInfo]:
    infos = {}
    for k, t in tensors.items():
        try:
            infos[k] = TensorInfo(tuple(t.shape), t.dtype)
        except ValueError as e:
            raise LadleError(str(e), file=source, key=k) from None
    return infos


def _all_tensors(obj: Mapping) -> bool:
    return len(obj) > 0 and all(is_tensor(v) for v in obj.values())


def strip_prefixes(keys: list[str]) -> tuple[dict[str, str], list[str]]:
    """Map normalised key -> stored key, removing wrapper prefixes that every key carries."""
    mapping = {k: k for k in keys}
    notes = []
    for prefix in PREFIXES:
        if mapping and all(k.startswith(prefix) for k in mapping):
            mapping = {k[len(prefix) :]: v for k, v in mapping.items()}
            notes.append(f"removed the '{prefix}' prefix from every key")
    return mapping, notes


class Ingredient:
    """A lazily opened checkpoint: keys, shapes and dtypes up front; tensors one at a time."""

    def __init__(self, name: str, sources: dict[str, tuple[object, str]], notes: list[str], files: list[Path]):
        self.name = name
        self._sources = sources  # normalised key -> (reader, stored key)
        self.notes = notes
        self.files = files  # the files holding the weights, for hashing and sizes

    @property
    def path(self) -> str:
        return self.name

    def keys(self) -> list[str]:
        return list(self._sources)

    def info(self, key: str) -> TensorInfo:
        reader, stored = self._sources[key]
        return reader.infos[stored]

    def get(self, key: str):
        """The tensor as a torch tensor (memory-mapped files: sharing the mapping)."""
        reader, stored = self._sources[key]
        return reader.get(stored)

    def array(self, key: str) -> np.ndarray:
        """The tensor as a numpy array: what the streaming core reads (no torch needed for safetensors)."""
        reader, stored = self._sources[key]
        return reader.array(stored)

    def release(self, key: str) -> None:
        reader, stored = self._sources[key]
        reader.release(stored)

    def state_dict(self) -> dict:
        """Every tensor, materialised (memory: the whole checkpoint)."""
        return {k: self.get(k).clone() for k in self.keys()}

    @property
    def nbytes(self) -> int:
        return sum(self.info(k).nbytes for k in self.keys())

    def __repr__(self) -> str:
        return f"Ingredient({self.name!r}, {len(self._sources)} tensors)"


def open_ingredient(source: object, name: str | None = None) -> Ingredient:
    """Open a path (.safetensors, .pt/.pth/.bin, HF directory), a state dict or an nn.Module."""
    if isinstance(source, Ingredient):
        return source
    torch = sys.modules.get("torch")  # without torch loaded, nothing is a module
    if torch is not None and isinstance(source, torch.nn.Module):  # in-memory names carry the object's id: distinct objects, distinct names
        name = name or f"<{type(source).__name__} {id(source):x}>"
        return _from_readers(name, [MemoryState(source.state_dict(), name)], [])
    if isinstance(source, Mapping):
        name = name or f"<state dict {id(source):x}>"
        return _from_readers(name, [MemoryState(source, name)], [])
    path = Path(source)
    if not path.exists():
        raise LadleError("no such file or directory", file=path)
    if path.is_dir():
        return _open_directory(path)
    if path.name.endswith(".index.json"):
        return _open_index(path.parent, path)
    return _from_readers(str(path), [_open_file(path)], [path])


def open_ingredients(sources: list, names: list[str] | None = None) -> list[Ingredient]:
    names = names or [None] * len(sources)
    return [open_ingredient(s, n) for s, n in zip(sources, names, strict=True)]


def _open_file(path: Path):
    if path.suffix == ".safetensors":
        return SafetensorsFile(path)
    if path.suffix in TORCH_SUFFIXES:
        return TorchFile(path)
    with open(path, "rb") as f:  # unknown suffix: sniff. Zip (torch.save) starts with PK.
        magic = f.read(2)
    return TorchFile(path) if magic == b"PK" or magic[:1] == b"\x80" else SafetensorsFile(path)


def _open_directory(path: Path) -> Ingredient:
    for filename, layout in HF_LAYOUTS:
        candidate = path / filename
        if not candidate.is_file():
            continue
        if layout == "file":
            return _from_readers(str(path), [_open_file(candidate)], [candidate])
        return _open_index(path, candidate)
    raise LadleError(
        "directory holds no checkpoint (looked for " + ", ".join(f for f, _ in HF_LAYOUTS) + ")", file=path
    )


def _open_index(path: Path, index: Path) -> Ingredient:
    """A sharded checkpoint: an index mapping each key to its shard file."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        shard_names = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        raise LadleError("corrupt index: needs a 'weight_map' of key -> shard file", file=index) from None
    shards = [path / s for s in shard_names]
    for shard in shards:
        if not shard.is_file():
            raise LadleError(f"index names a shard that is missing: {shard.name}", file=index)
    readers = [_open_file(s) for s in shards]
    ingredient = _from_readers(str(path), readers, shards)
    listed, found = set(weight_map), set().union(*(r.infos for r in readers))
    if listed != found:
        missing = sorted(listed - found) or sorted(found - listed)
        raise LadleError("index and shards disagree about which tensors exist", file=index, key=missing[0])
    return ingredient


def _from_readers(name: str, readers: list, files: list[Path]) -> Ingredient:
    stored: dict[str, object] = {}
    notes: list[str] = []
    for reader in readers:
        notes.extend(getattr(reader, "notes", []))
        for key in reader.infos:
            if key in stored:
                raise LadleError("tensor appears in two shards", file=name, key=key)
            stored[key] = reader
    mapping, prefix_notes = strip_prefixes(list(stored))
    notes = list(dict.fromkeys(notes + prefix_notes))
    sources = {norm: (stored[orig], orig) for norm, orig in mapping.items()}
    return Ingredient(name, sources, notes, files)
