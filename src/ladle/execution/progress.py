"""What both executors share: results in task order, and a bar that counts tasks as they finish in any order."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


def task_bar(total: int, desc: str):
    """A bar over tasks (a line every few seconds in a log), only when there is a name for it."""
    from ladle.progress import progress_bar

    return progress_bar(total=total, desc=desc, unit="task")


def in_order(handles: list, wait: Callable[[list], Any], get: Callable[[Any], Any], desc: str = "") -> Iterator[Any]:
    """get(handle) for every submitted handle, in submission order.

    wait(pending) blocks until at least one pending handle has finished and returns the finished ones, so the
    bar moves when any task ends, not only when the next one in order does.
    """
    bar = task_bar(len(handles), desc)
    pending, finished = set(handles), set()
    try:
        for handle in handles:
            while handle not in finished:
                done = set(wait(list(pending)))
                pending -= done
                finished |= done
                bar.update(len(done))
            yield get(handle)
    finally:
        bar.close()


def in_process(fn: Callable[[Any], Any], tasks: list, desc: str = "") -> Iterator[Any]:
    """The same contract without any pool: one task after another in this process."""
    bar = task_bar(len(tasks), desc)
    try:
        for task in tasks:
            result = fn(task)
            bar.update()
            yield result
    finally:
        bar.close()


class RemoteTraceback(Exception):
    """The traceback of a task that failed elsewhere, chained under the task's own exception."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text
