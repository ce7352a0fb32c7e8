"""Executors: run tasks (specs, never live models) in local processes or on Ray.

    executor = make_executor("local")        # one process per core; "local:1" runs in-process
    executor = make_executor("ray")          # a local Ray instance, or "ray:HOST:PORT" for an existing cluster
    for result in executor.map(train_run, tasks): ...
    executor.close()                         # or: with make_executor(...) as executor: ...
"""

from __future__ import annotations

import re

from ladle.errors import LadleError
from ladle.execution.base import Executor
from ladle.registry import Registry

EXECUTORS = Registry("executor", importable=False)  # kind -> factory(the spec after the first colon or None, workers)


def make_executor(spec: str | Executor | None = None, workers: int | None = None) -> Executor:
    """`local`, `local:N`, `ray` or `ray:HOST:PORT` (default: local, one worker per core).

    An executor passed in is returned as it is, so callers can take either a spec or an executor.
    """
    if spec is not None and not isinstance(spec, str):
        return spec
    kind, colon, rest = (spec or "local").strip().partition(":")
    return EXECUTORS.get(kind, where="executor")(rest if colon else None, workers)


@EXECUTORS.register("local")
def _local(rest: str | None, workers: int | None) -> Executor:
    if rest is not None and not re.fullmatch(r"[1-9][0-9]*", rest):
        raise LadleError(f"executor: 'local:{rest}' is not local or local:N (N a number of workers, at least 1)")
    from ladle.execution.local import LocalExecutor

    return LocalExecutor(int(rest) if rest else workers)


@EXECUTORS.register("ray")
def _ray(rest: str | None, workers: int | None) -> Executor:
    """Ray sizes itself: `workers` is not used."""
    if rest is not None and not _cluster_address(rest):
        raise LadleError(f"executor: 'ray:{rest}' is not ray or ray:HOST:PORT (e.g. ray:10.0.0.5:6379, ray:auto)")
    from ladle.execution.ray import RayExecutor

    return RayExecutor(address=rest or None)


def _cluster_address(text: str) -> bool:
    """HOST:PORT, `auto` (the cluster `ray start` left on this machine) or a Ray Client ray://HOST:PORT."""
    return text == "auto" or re.fullmatch(r"(ray://)?[A-Za-z0-9._\-\[\]:]+:[0-9]{1,5}", text) is not None


__all__ = ["EXECUTORS", "Executor", "make_executor"]
