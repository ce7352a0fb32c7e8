"""Ray executor: tasks on a local Ray instance (this machine, loopback only) or on an existing Ray cluster.

    RayExecutor()                       # starts Ray here: one CPU slot per core, no dashboard, 127.0.0.1 only
    RayExecutor("HOST:PORT")            # joins a running cluster (`ray start --head` printed the address)

A Ray already initialised in this process is reused and left running. Task functions must be importable on
the workers, and the paths in the tasks must name a filesystem every worker sees. The tasks' progress lines
come back through a Ray queue (an actor, one per executor), which the driver reads while it waits.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from typing import Any

from ladle.errors import LadleError
from ladle.execution.progress import POLL, RemoteTraceback, in_order, tags_of

INSTALL = "pip install 'ladle[ray]' (or pip install ray)"
# Ray binds its servers to the node's address: on Linux that is the address other machines reach, unless Ray
# is told that this is a single-machine instance (what it does by default on macOS and Windows).
_SINGLE_MACHINE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def import_ray():
    """Ray, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise LadleError(f"executor: 'ray' needs Ray, which is not installed: {INSTALL}") from None
    return ray


class RayExecutor:
    def __init__(self, address: str | None = None, *, num_cpus: int | None = None):
        ray = import_ray()
        self.address = address
        self._started = False
        self._remote = self._lines = None
        self._maps = itertools.count()  # a line left over from an earlier map is never taken for this one's
        # Ray's own INFO/WARNING lines and the workers' stdout would interleave with ladle's output;
        # tasks report through their results, their files and their relayed progress lines.
        quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
        if ray.is_initialized():
            pass
        elif address:
            host = _reachable(address)
            try:
                # a cluster on this machine's loopback: Ray would otherwise call it by the node's outside address
                with _loopback_only() if _is_loopback(host) else nullcontext():
                    ray.init(address=address, **quiet)
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise LadleError(f"executor: cannot join the Ray cluster at '{address}': "
                                 f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from None
            self._started = True
        else:
            with _loopback_only():
                ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, **quiet)
            self._started = True
        self.name = f"ray:{address}" if address else "ray"

    @property
    def workers(self) -> int:
        """CPU slots in the cluster: how many one-CPU tasks run at once."""
        import ray

        return max(1, int(ray.cluster_resources().get("CPU", 1)))

    def map(self, fn: Callable[[Any], Any], tasks: Iterable[Any], *, desc: str = "",
            tag: Callable[[Any], str] | None = None) -> Iterator[Any]:
        import ray
        from ray.util.queue import Queue

        if self._remote is None:
            self._remote = ray.remote(num_cpus=1)(_relayed)
            self._lines = Queue(actor_options={"num_cpus": 0})  # no CPU slot: it must never wait behind the tasks
        tasks, number = list(tasks), next(self._maps)
        refs = [self._remote.remote(fn, task, self._lines, (number, i)) for i, task in enumerate(tasks)]
        taken = 0
        try:
            for result in in_order(refs, _wait, _get, desc, receive=lambda: _receive(self._lines, number),
                                   tags=tags_of(tasks, tag)):
                taken += 1
                yield result
        finally:
            _cancel_unfinished(refs[taken:])

    def close(self) -> None:
        """Shut Ray down if this executor started or joined it; a Ray someone else initialised stays up."""
        import ray

        if self._lines is not None and ray.is_initialized():
            self._lines.shutdown()
        self._remote = self._lines = None
        if self._started:
            ray.shutdown()
            self._started = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _relayed(fn: Callable[[Any], Any], task: Any, lines, label: tuple[int, int]) -> Any:
    """On a worker: fn(task), its progress lines put in the driver's queue as (label, line), label = (map, task).

    Each put returns once the line is in the queue, so a task's lines are all there when its result is."""
    from ladle.progress import relayed

    with relayed(lambda line: lines.put_nowait((label, line))):
        return fn(task)


def _receive(lines, number: int) -> list[tuple[int, str]]:
    """The progress lines in the queue, as (task index, line), for map `number` only."""
    size = lines.qsize()
    return [(index, line) for (map_number, index), line in (lines.get_nowait_batch(size) if size else [])
            if map_number == number]


def _cancel_unfinished(refs: list) -> None:
    """Cancel the tasks whose results nobody will read (an error, or a caller that stopped early).

    Only tasks not yet done are cancelled: Ray 2.60 aborts the whole driver process ("Tried to complete task
    that was not pending") when a task is cancelled while its completion is in flight, which happens when its
    result is already readable. A queued task never starts; a running one is interrupted.
    """
    import ray

    if not refs:
        return
    done = set(ray.wait(refs, num_returns=len(refs), timeout=0)[0])
    for ref in refs:
        if ref not in done:
            try:
                ray.cancel(ref)
            except Exception:  # noqa: BLE001  cancelling is best effort: the error in flight matters
                pass


def _wait(pending: list) -> list:
    """Wait up to `POLL` seconds for one task to be done, then take every other one that is done too."""
    import ray

    ready, rest = ray.wait(pending, num_returns=1, timeout=POLL)
    if ready and rest:
        ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
    return ready


def _get(ref):
    """The task's result; a task's own exception is raised as itself, with the remote traceback chained."""
    import ray
    from ray.exceptions import RayError, RayTaskError, TaskCancelledError

    try:
        return ray.get(ref)
    except RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, BaseException) and not isinstance(cause, RayError):
            raise cause from RemoteTraceback(getattr(e, "traceback_str", str(e)))
        raise
    except TaskCancelledError:
        raise
    except RayError as e:  # the worker or its node died: no result, but the finished tasks' files are kept
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise LadleError(f"executor: a Ray task died ({type(e).__name__}{': ' + first if first else ''}); "
                         "finished tasks are kept, run again to resume") from e


def _reachable(address: str, seconds: float = 5.0) -> str | None:
    """Fail in seconds on a wrong address: Ray itself retries for minutes, printing a warning every few seconds."""
    import socket

    if address == "auto":
        return None
    host, _, port = address.removeprefix("ray://").rpartition(":")
    host = host.strip("[]")
    try:
        socket.create_connection((host, int(port)), timeout=seconds).close()
    except (OSError, ValueError) as e:
        why = getattr(e, "strerror", None) or e
        raise LadleError(f"executor: no Ray cluster answers at '{address}' ({why})") from None
    return host


def _is_loopback(host: str | None) -> bool:
    import ipaddress

    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _loopback_only:
    """Start a local Ray whose servers listen on 127.0.0.1 only; the setting is put back afterwards."""

    def __enter__(self):
        from ray._private import ray_constants

        self.env = os.environ.get(_SINGLE_MACHINE)
        self.constant = ray_constants.ENABLE_RAY_CLUSTER
        os.environ[_SINGLE_MACHINE] = "0"  # inherited by the GCS, the raylet and the workers
        ray_constants.ENABLE_RAY_CLUSTER = False  # read at import: this process has imported Ray already
        return self

    def __exit__(self, *exc):
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = self.constant
        if self.env is None:
            os.environ.pop(_SINGLE_MACHINE, None)
        else:
            os.environ[_SINGLE_MACHINE] = self.env
