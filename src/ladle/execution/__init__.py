"""Executors: run tasks (specs, never live models) in local processes or on Ray.

    executor = make_executor("local")        # one process per core; "local:1" runs in-process
    executor = make_executor("ray")          # a local Ray instance, or "ray:HOST:PORT" for an existing cluster
    for result in executor.map(train_run, tasks): ...
"""

from __future__ import annotations

from ladle.errors import LadleError
from ladle.execution.base import Executor


def make_executor(spec: str | None = None, workers: int | None = None) -> Executor:
    """`local`, `local:N`, `ray` or `ray:HOST:PORT` (default: local, one worker per core)."""
    spec = spec or "local"
    kind, _, rest = spec.partition(":")
    if kind == "local":
        from ladle.execution.local import LocalExecutor

        try:
            n = int(rest) if rest else workers
        except ValueError:
            raise LadleError(f"executor: '{spec}' is not local or local:N") from None
        return LocalExecutor(n)
    if kind == "ray":
        from ladle.execution.ray import RayExecutor

        return RayExecutor(address=rest or None)
    raise LadleError(f"executor: unknown executor '{spec}' (local, local:N, ray or ray:HOST:PORT)")


__all__ = ["Executor", "make_executor"]
