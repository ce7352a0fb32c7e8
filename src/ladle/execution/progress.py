"""What both executors share: results in task order, a bar that counts tasks as they finish in any order, and
the tasks' own progress lines relayed to the caller, tagged with their task."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

POLL = 0.5  # seconds between two looks at the tasks' progress lines while waiting for results


def task_bar(total: int, desc: str):
    """A bar over tasks (a line every few seconds in a log), only when there is a name for it."""
    from ladle.progress import progress_bar

    return progress_bar(total=total, desc=desc, unit="task")


def tags_of(tasks: list, tag: Callable[[Any], str] | None) -> list[str]:
    """Each task's name in its relayed lines: tag(task), or its place in the map ("task 3")."""
    return [tag(task) if tag is not None else f"task {i + 1}" for i, task in enumerate(tasks)]


class Relay:
    """The caller's end of the tasks' progress lines: each printed on stderr as "[tag] line", at most one per
    task every `LOG_EVERY` seconds.

    A line that comes sooner is held (a newer one replaces it) and printed once its task's interval is up, or
    when the task ends (its closing line), so what a log shows is never more than an interval old. Lines that
    arrive after their task ended are dropped."""

    def __init__(self, tags: list[str], every: float | None = None):
        from ladle.progress import LOG_EVERY, progress_enabled

        self.tags, self.every, self.on = tags, LOG_EVERY if every is None else every, progress_enabled()
        self.last: dict[int, float] = {}  # task index -> when its last line was printed
        self.held: dict[int, str] = {}
        self.ended: set[int] = set()
        self.start = time.monotonic()

    def take(self, lines: list[tuple[int, str]]) -> None:
        """Received (task index, line) pairs: each printed now if its task's interval is up, else held."""
        for index, line in lines:
            if index not in self.ended:
                self.held[index] = line
        self.tick()

    def tick(self) -> None:
        now = time.monotonic()
        for index in [i for i in self.held if now - self.last.get(i, -self.every) >= self.every]:
            self._print(index)

    def quiet_for(self) -> float:
        """Seconds since any task's line was printed (since the start, if none was)."""
        return time.monotonic() - max(self.last.values(), default=self.start)

    def end(self, index: int) -> None:
        if index in self.held:
            self._print(index)
        self.ended.add(index)

    def _print(self, index: int) -> None:
        from ladle.progress import say

        line = self.held.pop(index)
        self.last[index] = time.monotonic()
        if self.on:
            say(f"[{self.tags[index]}] {line}")


def in_order(handles: list, wait: Callable[[list], Any], get: Callable[[Any], Any], desc: str = "", *,
             receive: Callable[[], list[tuple[int, str]]] | None = None, tags: list[str] | None = None
             ) -> Iterator[Any]:
    """get(handle) for every submitted handle, in submission order.

    wait(pending) returns the finished handles within `POLL` seconds (none, if none finished), so the bar
    moves when any task ends, not only when the next one in order does, and in between receive() brings the
    tasks' progress lines ((index of the task in handles, line) pairs), which a `Relay` prints tagged.
    """
    bar = task_bar(len(handles), desc)
    relay = Relay(tags or tags_of(handles, None))
    index = {handle: i for i, handle in enumerate(handles)}
    pending, finished = set(handles), set()
    try:
        for handle in handles:
            while handle not in finished:
                done = set(wait(list(pending)))
                if receive is not None:
                    relay.take(receive())  # before the ends: a finished task's last lines are in by now
                for h in done:
                    relay.end(index[h])
                pending -= done
                finished |= done
                if done or relay.quiet_for() >= relay.every:  # nothing done: the bar's line says the map lives on
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
