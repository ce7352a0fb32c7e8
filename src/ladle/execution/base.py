"""The executor protocol: run one importable function over many task specs, results in task order.

A task is plain data (paths, model spec, data spec, hyper-parameters: anything picklable and small), never a
live model or tensor, so it can cross a process or a machine. The function must be importable by name
(`package.module:function` or a module-level function), and it writes its own files atomically: a task that
dies leaves nothing half-written, and the study that asked for it resumes by asking again.

A task's progress bars (ladle.progress) reach the caller wherever the task runs: the executor relays their
lines and prints them on the caller's stderr as "[tag] line", at most one line per task every few seconds, so
a long map is never silent in a log. Progress never changes what a task returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol


class Executor(Protocol):
    name: str

    def map(self, fn: Callable[[Any], Any], tasks: Iterable[Any], *, desc: str = "",
            tag: Callable[[Any], str] | None = None) -> Iterator[Any]:
        """Yield fn(task) for every task, in task order, as each becomes available.

        desc names the bar over tasks; tag(task) names a task in its relayed lines (default "task N")."""
        ...

    def close(self) -> None: ...
