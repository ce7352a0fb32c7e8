"""Tensor dtypes by their safetensors names ("F32", "BF16", …), with their numpy and torch counterparts.

The streaming core (reading, mixing, checking, writing) works on numpy arrays, so cooking a soup of safetensors
files never imports torch (bf16 and fp8 come from ml_dtypes); torch tensors are converted at the edges, sharing
memory both ways.
"""

from __future__ import annotations

import sys

import ml_dtypes
import numpy as np

NUMPY_DTYPES: dict[str, np.dtype] = {name: np.dtype(t) for name, t in {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2, "C64": np.complex64,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}.items()}
FLOAT_NAMES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "C64"})
TORCH_NAMES = {  # str(torch dtype) -> safetensors name: torch dtypes are recognised without importing torch
    "torch.float64": "F64", "torch.float32": "F32", "torch.float16": "F16", "torch.bfloat16": "BF16",
    "torch.float8_e4m3fn": "F8_E4M3", "torch.float8_e5m2": "F8_E5M2", "torch.complex64": "C64",
    "torch.int64": "I64", "torch.int32": "I32", "torch.int16": "I16", "torch.int8": "I8",
    "torch.uint64": "U64", "torch.uint32": "U32", "torch.uint16": "U16", "torch.uint8": "U8", "torch.bool": "BOOL",
}
_BY_NUMPY = {v: k for k, v in NUMPY_DTYPES.items()}
# numpy views of dtypes torch.from_numpy / Tensor.numpy do not know, by item size
_CARRIERS = {1: (np.uint8, "uint8"), 2: (np.int16, "int16")}


def dtype_name(dtype) -> str:
    """The safetensors name of a dtype given by name, as a numpy dtype or as a torch dtype."""
    if isinstance(dtype, str) and dtype in NUMPY_DTYPES:
        return dtype
    if type(dtype).__module__ == "torch":
        name = TORCH_NAMES.get(str(dtype))
    else:
        try:
            name = _BY_NUMPY.get(np.dtype(dtype))
        except TypeError:
            name = None
    if name is None:
        raise ValueError(f"unsupported dtype {dtype}")
    return name


def numpy_dtype(dtype) -> np.dtype:
    return NUMPY_DTYPES[dtype_name(dtype)]


def torch_dtype(dtype):
    import torch

    return getattr(torch, next(k for k, v in TORCH_NAMES.items() if v == dtype_name(dtype)).split(".")[1])


def is_float(dtype) -> bool:
    """Floating point (or complex): what a soup averages; integer and bool tensors are never averaged."""
    return dtype_name(dtype) in FLOAT_NAMES


def itemsize(dtype) -> int:
    return numpy_dtype(dtype).itemsize


def is_tensor(value) -> bool:
    """A torch tensor, told without importing torch (if torch is not loaded, nothing is a tensor)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def to_numpy(value) -> np.ndarray:
    """A numpy array of a torch tensor (sharing its memory when it is on the CPU) or of an array."""
    if not is_tensor(value):
        return np.asarray(value)
    t = value.detach().cpu()
    name = dtype_name(t.dtype)
    if name in ("BF16", "F8_E4M3", "F8_E5M2"):
        import torch

        carrier = getattr(torch, _CARRIERS[t.element_size()][1])
        return t.view(carrier).numpy().view(NUMPY_DTYPES[name])
    return t.numpy()


def to_torch(array):
    """A torch tensor sharing the array's memory (bf16 and fp8 through an integer view of the same bytes)."""
    import torch

    array = np.asarray(array)
    name = dtype_name(array.dtype)
    if name in ("BF16", "F8_E4M3", "F8_E5M2"):
        carrier = _CARRIERS[array.dtype.itemsize]
        return torch.from_numpy(array.view(carrier[0])).view(torch_dtype(name))
    return torch.from_numpy(array)
