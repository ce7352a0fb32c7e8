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

SPECS = "local, local:N, ray or ray:HOST:PORT"


def make_executor(spec: str | Executor | None = None, workers: int | None = None) -> Executor:
    """`local`, `local:N`, `ray` or `ray:HOST:PORT` (default: local, one worker per core).

    An executor passed in is returned as it is, so callers can take either a spec or an executor.
    """
    if spec is not None and not isinstance(spec, str):
        return spec
    spec = (spec or "local").strip()
    kind, _, rest = spec.partition(":")
    if kind == "local":
        if (rest or spec.endswith(":")) and not re.fullmatch(r"[1-9][0-9]*", rest):
            raise LadleError(f"executor: '{spec}' is not local or local:N (N a number of workers, at least 1)")
        from ladle.execution.local import LocalExecutor

        return LocalExecutor(int(rest) if rest else workers)
    if kind == "ray":
        if spec.endswith(":") or (rest and not _cluster_address(rest)):
            raise LadleError(f"executor: '{spec}' is not ray or ray:HOST:PORT (e.g. ray:10.0.0.5:6379, ray:auto)")
        from ladle.execution.ray import RayExecutor

        return RayExecutor(address=rest or None)
    raise LadleError(f"executor: unknown executor '{spec}' ({SPECS})")


def _cluster_address(text: str) -> bool:
    """HOST:PORT, `auto` (the cluster `ray start` left on this machine) or a Ray Client ray://HOST:PORT."""
    return text == "auto" or re.fullmatch(r"(ray://)?[A-Za-z0-9._\-\[\]:]+:[0-9]{1,5}", text) is not None


__all__ = ["Executor", "make_executor"]
