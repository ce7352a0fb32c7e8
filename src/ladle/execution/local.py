"""Local executor: tasks in fresh ("spawn") worker processes, one per core by default; one worker runs in-process."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ladle.errors import LadleError
from ladle.execution.progress import in_order, in_process


def _worker_start(threads: int) -> None:
    import signal

    import torch

    torch.set_num_threads(threads)  # the pool is the parallelism: workers share the cores, not oversubscribe them
    # Ctrl-C reaches the whole process group: the parent alone handles it (and stops the workers), so the
    # terminal shows one KeyboardInterrupt instead of one traceback per worker.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class LocalExecutor:
    def __init__(self, workers: int | None = None):
        if workers is not None and workers < 1:
            raise LadleError(f"executor: local needs at least 1 worker, got {workers}")
        self.workers = workers or os.cpu_count() or 1
        self.name = f"local:{self.workers}"
        self._pool = None

    def map(self, fn: Callable[[Any], Any], tasks: Iterable[Any], *, desc: str = "") -> Iterator[Any]:
        tasks = list(tasks)
        if self.workers == 1 or len(tasks) <= 1:
            yield from in_process(fn, tasks, desc)
            return
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        pool = self._start()
        futures = [pool.submit(fn, task) for task in tasks]
        finished = False
        try:
            yield from in_order(futures, lambda pending: wait(pending, return_when=FIRST_COMPLETED).done,
                                lambda future: future.result(), desc)
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

            threads = max(1, (os.cpu_count() or 1) // self.workers)
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_worker_start, initargs=(threads,))
        return self._pool

    def _stop(self, kill: bool = False) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if kill:
            for process in list((getattr(pool, "_processes", None) or {}).values()):  # no public API before 3.14
                process.terminate()
        pool.shutdown(wait=not kill, cancel_futures=True)

    def close(self) -> None:
        self._stop()

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
