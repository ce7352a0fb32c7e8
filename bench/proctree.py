"""What the whole-process benchmarks (data.py, lora.py) share: the process tree whose memory they sum."""

from __future__ import annotations

import os


def descendants(pid: int) -> list[int]:
    """pid and all its descendants, via /proc/PID/task/*/children (processes may vanish while we look)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return out
