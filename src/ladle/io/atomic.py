"""Files that are never half-written: a temporary beside the target, fsync, rename.

Its own module because both the soup writer and the hash cache write this way, and the writer hashes what it
writes: with the helper inside the writer, the two imported each other.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

TMP_MARK = ".ladle-tmp-"


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
