"""Local executor: tasks in fresh ("spawn") worker processes, one per core by default; one worker runs in-process.

The workers put their tasks' progress lines in a queue kept by a small manager process: a put returns once the
line is there, so a task's lines are all in before its result, and it never blocks on a parent busy elsewhere.
The parent reads the queue while it waits for results.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ladle.errors import LadleError
from ladle.execution.progress import POLL, in_order, in_process, tags_of

_lines = None  # in a worker: the queue its tasks' progress lines go to


def _ignore_ctrl_c() -> None:
    """Ctrl-C reaches the whole process group: the parent alone handles it (and stops the workers), so the
    terminal shows one KeyboardInterrupt instead of one traceback per worker."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _worker_start(threads: int, lines) -> None:
    import torch

    global _lines
    _lines = lines
    torch.set_num_threads(threads)  # the pool is the parallelism: workers share the cores, not oversubscribe them
    _ignore_ctrl_c()


def _relayed(fn: Callable[[Any], Any], task: Any, label: tuple[int, int]) -> Any:
    """In a worker: fn(task), its progress lines sent to the parent as (label, line), label = (map, task index)."""
    from ladle.progress import relayed

    with relayed(lambda line: _lines.put((label, line))):
        return fn(task)


class LocalExecutor:
    def __init__(self, workers: int | None = None):
        if workers is not None and workers < 1:
            raise LadleError(f"executor: local needs at least 1 worker, got {workers}")
        self.workers = workers or os.cpu_count() or 1
        self.name = f"local:{self.workers}"
        self._pool = self._manager = self._lines = None
        self._maps = itertools.count()  # a line left over from an earlier map is never taken for this one's

    def map(self, fn: Callable[[Any], Any], tasks: Iterable[Any], *, desc: str = "",
            tag: Callable[[Any], str] | None = None) -> Iterator[Any]:
        tasks = list(tasks)
        if self.workers == 1 or len(tasks) <= 1:
            yield from in_process(fn, tasks, desc)
            return
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        pool = self._start()
        number = next(self._maps)
        futures = [pool.submit(_relayed, fn, task, (number, i)) for i, task in enumerate(tasks)]
        finished = False
        try:
            yield from in_order(futures, lambda pending: wait(pending, POLL, FIRST_COMPLETED).done,
                                lambda future: future.result(), desc,
                                receive=lambda: self._receive(number), tags=tags_of(tasks, tag))
            finished = True
        except BrokenProcessPool:
            self._stop(kill=True)
            raise LadleError(f"executor: a {self.name} worker process died (killed, or out of memory?); "
                             "finished tasks are kept, run again to resume") from None
        except KeyboardInterrupt:
            self._stop(kill=True)  # tasks write their files atomically: stopping them leaves nothing half-written
            raise
        finally:
            if not finished:
                for future in futures:
                    future.cancel()

    def _start(self):
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor
            from multiprocessing.managers import SyncManager

            threads = max(1, (os.cpu_count() or 1) // self.workers)
            context = multiprocessing.get_context("spawn")
            self._manager = SyncManager(ctx=context)
            self._manager.start(_ignore_ctrl_c)
            self._lines = self._manager.Queue()
            self._pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_worker_start,
                                             initargs=(threads, self._lines))
        return self._pool

    def _receive(self, number: int) -> list[tuple[int, str]]:
        """The progress lines the workers sent so far, as (task index, line), for map `number` only."""
        import queue

        out = []
        while True:
            try:
                (map_number, index), line = self._lines.get_nowait()
            except (queue.Empty, OSError, EOFError):  # none left, or the manager is gone: progress never fails a map
                return out
            if map_number == number:
                out.append((index, line))

    def _stop(self, kill: bool = False) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if kill:
            for process in list((getattr(pool, "_processes", None) or {}).values()):  # no public API before 3.14
                process.terminate()
        pool.shutdown(wait=not kill, cancel_futures=True)
        self._manager.shutdown()
        self._manager = self._lines = None

    def close(self) -> None:
        self._stop()

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
