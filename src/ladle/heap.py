"""A flat heap for long evaluations: glibc raises its mmap threshold each time a large block is freed, after which
a network's per-batch activations come from the heap and fragment it. Measured here (bench/data.py, timm ResNet-18 at
224 px, 8,000 JPEGs): the process grew by ~300 MiB and a decoding worker by ~150 MiB over the pass; with the
threshold fixed at 1 MiB both stayed flat (within 2-7 % of the time)."""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
THRESHOLD = 1 << 20

_done = False


def steady_heap() -> None:
    """Fix glibc's mmap and trim thresholds once per process (DataLoader workers forked after it inherit them);
    elsewhere (macOS, musl, Windows) nothing changes."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return
    _done = True
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD)
        libc.mallopt(M_TRIM_THRESHOLD, THRESHOLD)
    except (OSError, AttributeError):
        pass
