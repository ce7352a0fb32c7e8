"""Parameters declared once, in a typed signature; CLI flags, YAML fields, `ladle recipes` and validation read it.

    def ties(n: int, density: Annotated[float, "fraction of each task vector kept"] = 0.2, ...) -> Plan:

`Annotated[T, "help"]` gives the type and one line of help; the default is the default (none: required).
Supported types: int, float, str, bool, Literal[...] (choices), list[float], list[str]. A trailing underscore
is dropped from the public name (`lambda_` is `--lambda` and YAML `lambda`). A parameter annotated with a
type that has `ladle_capability = True` (the `Scorer` protocol) is a capability the caller provides, not a flag.
This module imports nothing heavy, so `ladle --help` stays fast.
"""

from __future__ import annotations

import inspect
import math
import typing
from dataclasses import dataclass

from ladle.errors import LadleError

REQUIRED = inspect.Parameter.empty


class Checkpoint(str):
    """A checkpoint: a path on the command line and in YAML; from Python also a state dict or an nn.Module."""


class Size(str):
    """A size: bytes as an integer, or a string such as 5GB."""


@dataclass(frozen=True)
class Param:
    name: str  # the Python name (keyword argument)
    type: object  # int, float, str, bool, list[float], list[str], or a tuple of choices
    default: object
    help: str

    @property
    def field(self) -> str:
        """The public name: YAML field, and the flag with `-` for `_`."""
        return self.name.rstrip("_")

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def type_name(self) -> str:
        if isinstance(self.type, tuple):
            return "|".join(map(str, self.type))
        names = {list[float]: "list of numbers", list[str]: "list of strings", Checkpoint: "path", Size: "size"}
        return names.get(self.type, getattr(self.type, "__name__", str(self.type)))

    def argv(self, value) -> list[str]:
        """The command-line words that give this value ([] for the default): what reproduces a soup."""
        if value is None or value == self.default or (isinstance(value, (list, tuple)) and not value
                                                      and not self.default):
            return []
        if self.type is bool:
            return ["--no-" + self.flag[2:]] if not value else [self.flag]
        if self.type == list[float]:
            return [f"{self.flag}={','.join(map(repr, value))}"]  # repr: the shortest text that reads back exactly
        if self.type == list[str]:
            return [w for v in value for w in (self.flag, str(v))]
        return [self.flag, repr(value) if isinstance(value, float) else str(value)]

    def describe(self) -> str:
        if self.type is bool:
            if self.default is None:  # unset: the caller decides; either flag overrides
                return f"{self.flag} / --no-{self.flag[2:]} (flag): {self.help}"
            return f"--no-{self.flag[2:]} (flag): do not {self.help}" if self.default else f"{self.flag} (flag): {self.help}"
        default = "required" if self.required else "optional" if self.default in (None, ()) else f"default {self.default!r}"
        return f"{self.flag} ({self.type_name}, {default}): {self.help}"

    def check(self, value, where: str = ""):
        """The value converted to the declared type, or a one-line error naming the field."""
        prefix = f"{where}: " if where else ""
        t = self.type
        if value is None and not self.required and self.default is None:
            return None
        if t is Checkpoint:
            return value
        if t is Size:
            if isinstance(value, bool) or not isinstance(value, (int, str)):
                raise LadleError(f"{prefix}{self.field}: must be a size such as 5GB, got {value!r}")
            return value
        if isinstance(t, tuple):
            if value not in t:
                raise LadleError(f"{prefix}{self.field}: must be one of {', '.join(map(str, t))}, got {value!r}")
            return value
        if t is bool:
            if not isinstance(value, bool):
                raise LadleError(f"{prefix}{self.field}: must be true or false, got {value!r}")
            return value
        if t is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise LadleError(f"{prefix}{self.field}: must be an integer, got {value!r}")
            return value
        if t is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise LadleError(f"{prefix}{self.field}: must be a number, got {value!r}")
            if not math.isfinite(value):
                raise LadleError(f"{prefix}{self.field}: {value} is not a finite number")
            return float(value)
        if t is str:
            if not isinstance(value, str):
                raise LadleError(f"{prefix}{self.field}: must be a string, got {value!r}")
            return value
        if t in (list[float], list[str]):
            item = float if t == list[float] else str
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                value = [value]  # one value where a list is expected: a list of one
            ok = isinstance(value, (list, tuple)) and all(
                isinstance(v, str) if item is str else (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in value)
            if not ok:
                raise LadleError(f"{prefix}{self.field}: must be a {self.type_name}, got {value!r}")
            return [item(v) for v in value]
        return value


def is_capability(annotation) -> bool:
    return bool(getattr(annotation, "ladle_capability", False))


def _resolve(fn) -> dict[str, object]:
    return typing.get_type_hints(fn, include_extras=True)


def _param_type(annotation):
    if typing.get_origin(annotation) is typing.Literal:
        return tuple(typing.get_args(annotation))
    return annotation


def params_of(fn, skip: tuple[str, ...] = ("n",)) -> tuple[list[Param], dict[str, object]]:
    """(parameters, capabilities) of a function's keyword parameters, from its annotations."""
    hints = _resolve(fn)
    params, capabilities = [], {}
    for name, p in inspect.signature(fn).parameters.items():
        if name in skip or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        annotation = hints.get(name)
        help_text = ""
        if typing.get_origin(annotation) is typing.Annotated:
            annotation, *meta = typing.get_args(annotation)
            help_text = next((m for m in meta if isinstance(m, str)), "")
        if is_capability(annotation):
            capabilities[name] = annotation
            continue
        if not help_text:
            raise TypeError(f"{fn.__module__}.{fn.__name__}: parameter '{name}' needs Annotated[type, 'help']")
        params.append(Param(name, _param_type(annotation), p.default, help_text))
    return params, capabilities


def validate(params: list[Param], values: dict, owner: str, where: str = "") -> dict:
    """Values by Python name, checked and converted; unknown and missing ones named in one line.

    Accepts public names (`lambda`) and Python names (`lambda_`)."""
    by_field = {p.field: p for p in params} | {p.name: p for p in params}
    out = {}
    for key, value in values.items():
        if key not in by_field:
            known = ", ".join(p.field for p in params) or "none"
            raise LadleError(f"{(where + ': ') if where else ''}{key}: not a parameter of {owner} (it takes: {known})")
        p = by_field[key]
        out[p.name] = p.check(value, where)
    for p in params:
        if p.required and p.name not in out:
            raise LadleError(f"{(where + ': ') if where else ''}{p.field}: {owner} needs this parameter ({p.flag})")
    return out
