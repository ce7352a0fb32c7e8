"""Progress that suits where it is read: a tqdm bar on a terminal, a plain line every few seconds in a log.

A bar redrawn with carriage returns becomes thousands of lines in a log file; a log gets instead one line per
`LOG_EVERY` seconds ("cook uniform: 120/296 tensors (41%), 6 s") and a closing line, and nothing at all for work
that ends within the first interval, so quick commands stay quiet. `LADLE_PROGRESS=0` silences both forms.

A task running in an executor's worker has no reader of its own: within `relayed(send)` its lines go to
send(line), a line every `RELAY_EVERY` seconds, and the caller prints them tagged with the task.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

LOG_EVERY = 5.0  # seconds between two plain lines in a log
RELAY_EVERY = 1.0  # seconds between two lines sent to the caller: it rate-limits what it prints, per task

_send: Callable[[str], None] | None = None  # set while a task runs relayed (see `relayed`)


def progress_enabled() -> bool:
    """LADLE_PROGRESS=0 silences progress; a relayed task always reports, since its caller's setting decides
    what is printed (a Ray worker's environment need not be the caller's)."""
    return _send is not None or os.environ.get("LADLE_PROGRESS", "1") != "0"


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
        enabled: bool = True, initial: int = 0, leave: bool = False):
    """A tqdm bar when stderr is a terminal, else a `LogLines` reporter with the same small interface
    (iterate, update, set_postfix_str, close, context manager). `enabled=False` gives a silent one."""
    on = enabled and progress_enabled() and bool(desc)
    if on and sys.stderr.isatty() and _send is None:
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave)
    return LogLines(iterable, total=total, desc=desc, unit=unit, initial=initial, enabled=on)


class LogLines:
    """The log-file form of a progress bar: a plain line at most every `every` seconds, on stderr."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
                 initial: int = 0, enabled: bool = True, every: float | None = None, stream=None):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n, self.enabled = initial, enabled
        self.every = every if every is not None else RELAY_EVERY if _send is not None else LOG_EVERY
        self.stream = stream
        self.postfix = ""
        self.start = self.last = time.monotonic()
        self.said: tuple | None = None  # (count, postfix) of the last line printed

    def __iter__(self) -> Iterator[Any]:
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()  # as tqdm does at the end of its iterable

    def __len__(self) -> int:
        return self.total or 0

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.enabled and time.monotonic() - self.last >= self.every:
            self._say()

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text

    def line(self) -> str:
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        tail = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {done} {_plural(self.unit, self.total or self.n)}{share}, {time.monotonic() - self.start:.0f} s{tail}"

    def _say(self) -> None:
        say(self.line(), self.stream)
        self.last = time.monotonic()
        self.said = (self.n, self.postfix)

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        # work that ended within the first interval said nothing and stays silent; the last count is said once
        if self.enabled and self.said is not None and self.said != (self.n, self.postfix):
            self._say()
        self.enabled = False

    def __enter__(self) -> LogLines:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def say(line: str, stream=None) -> None:
    """One progress line: to the caller when this runs as a relayed task, else on stderr (above a tqdm bar there).

    A line that cannot be sent is dropped: progress never fails the work it reports on."""
    if stream is None and _send is not None:
        try:
            _send(line)
        except Exception:  # noqa: BLE001
            pass
    elif stream is None and sys.stderr.isatty():
        from tqdm import tqdm

        tqdm.write(line, file=sys.stderr)
    else:
        print(line, file=stream or sys.stderr, flush=True)


@contextmanager
def relayed(send: Callable[[str], None]):
    """Within: progress lines go to send(line), never to a terminal bar. An executor's worker runs each task so,
    since its stderr is nobody's to read (Ray's) or would mix untagged lines of several tasks (local processes)."""
    global _send
    previous, _send = _send, send
    try:
        yield
    finally:
        _send = previous


def _plural(unit: str, n: int) -> str:
    if n == 1 or unit in ("it", "") or unit.endswith("s"):
        return unit
    return unit + ("es" if unit.endswith(("tch", "sh", "x")) else "s")


class Stopwatch:
    """Seconds spent per named phase, summed over repeats: where a long run's time went."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def phase(self, name: str):
        from contextlib import contextmanager

        @contextmanager
        def timed():
            start = time.monotonic()
            try:
                yield
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - start

        return timed()

    def summary(self) -> str:
        """'4.1 min: training 2.0 min (49%), evaluation 1.2 min (29%), …', largest first."""
        total = sum(self.seconds.values())
        parts = [f"{name} {_minutes(s)} ({100 * s / total:.0f}%)" for name, s in
                 sorted(self.seconds.items(), key=lambda kv: -kv[1])] if total else []
        return f"{_minutes(total)}: " + ", ".join(parts)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
