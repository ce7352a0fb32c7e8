"""Local executor: tasks in fresh ("spawn") worker processes, one per core by default; one worker runs in-process."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any


def _worker_start(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)  # the pool is the parallelism: workers share the cores, not oversubscribe them


class LocalExecutor:
    def __init__(self, workers: int | None = None):
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.name = f"local:{self.workers}"
        self._pool = None

    def map(self, fn: Callable[[Any], Any], tasks: Iterable[Any], *, desc: str = "") -> Iterator[Any]:
        tasks = list(tasks)
        if self.workers == 1 or len(tasks) <= 1:
            for task in tasks:
                yield fn(task)
            return
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            threads = max(1, (os.cpu_count() or 1) // self.workers)
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_worker_start, initargs=(threads,))
        futures = [self._pool.submit(fn, task) for task in tasks]
        try:
            for future in futures:
                yield future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
