"""What the command modules share: flags generated from declared parameters, JSON output, progress, exit codes.

Nothing here imports torch: `ladle --help` and usage errors answer at once.
"""

from __future__ import annotations

import argparse
import os
import sys

EXIT_BAD_INPUT = 2


class Parser(argparse.ArgumentParser):
    """Usage errors are bad input like any other: one line on stderr, exit 2 (raised, so main prints it)."""

    def error(self, message: str):
        from ladle.errors import LadleError

        if message.startswith("argument RECIPE|FILE.yaml: invalid choice: "):  # `ladle cook NAME`
            from ladle.soup.recipes import RECIPES

            name = message.split("invalid choice: ", 1)[1].split(" (choose", 1)[0].strip("'")
            raise LadleError(f"recipe: unknown recipe '{name}' (known: {', '.join(sorted(RECIPES))}, or a FILE.yaml)")
        raise LadleError(f"{self.prog}: {message}")


def floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None


ALIASES = {"num_classes": ("--num-labels",)}  # what a Hugging Face text user calls the head's size


def add_params(parser: argparse.ArgumentParser, params, skip: tuple[str, ...] = ()) -> None:
    """One flag per declared parameter (ladle.soup.schema.Param); unset flags stay None (the signature's default)."""
    for p in params:
        if p.name in skip:
            continue
        default = "" if p.required or p.default is None else f" (default {_show(p.default)})"  # None: its help says
        kwargs = {"dest": p.name, "default": None, "help": p.help + default}
        if p.type is bool:
            if p.default is None:  # unset: the caller decides; --X and --no-X both override
                parser.add_argument(p.flag, action=argparse.BooleanOptionalAction, **kwargs)
            elif p.default is True:
                kwargs["help"] = "do not " + p.help
                parser.add_argument("--no-" + p.flag[2:], action="store_false", **kwargs)
            else:
                parser.add_argument(p.flag, action="store_true", **kwargs)
            continue
        if isinstance(p.type, tuple):
            kwargs["choices"] = list(p.type)
        elif p.type == list[float]:
            kwargs.update(type=floats, metavar="X,Y,…")
        elif p.type == list[str]:
            kwargs.update(action="append", metavar=p.field.upper().rstrip("S") or "VALUE")
        else:
            kwargs["type"] = str if isinstance(p.type, type) and issubclass(p.type, str) else p.type
        parser.add_argument(p.flag, *ALIASES.get(p.name, ()), **kwargs)


def add_flags(parser, fields, skip: tuple[str, ...] = ()) -> None:
    """A flag per declared config field (ladle.config.Field) with a plain type, its bounds in the help (structured
    fields are set with --set), and --set FIELD=VALUE."""
    from dataclasses import replace

    flags = [replace(f, help=f"{f.help} [{f.bounds}]") if f.bounds else f for f in fields if f.type is not object]
    add_params(parser, flags, skip)
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE",
                        help="any config field, the value in YAML (e.g. --set 'lr=[1e-4, 2e-4]', --set temperature=0.1); "
                             "repeatable, after the flags")


def overrides_from(args, fields) -> dict:
    """The fields the command line set: its flags, then each --set."""
    import yaml

    out = {f.name: getattr(args, f.name) for f in fields if getattr(args, f.name, None) is not None}
    for item in getattr(args, "sets", []):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            from ladle.errors import LadleError

            raise LadleError(f"--set: expected FIELD=VALUE, got '{item}'")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            from ladle.errors import LadleError

            raise LadleError(f"--set {key.strip()}: not a YAML value: '{value}'") from None
    return out


def _show(value) -> str:
    if isinstance(value, (list, tuple)) and not value:
        return "none"
    return str(value)


def given(args: argparse.Namespace, params) -> dict:
    """The declared parameters the user set on the command line (None: not given)."""
    return {p.name: getattr(args, p.name) for p in params if getattr(args, p.name, None) is not None}


def corruption_options(p: argparse.ArgumentParser, cache: bool = True) -> None:
    p.add_argument("--severities", default="1-5", metavar="1-5|1,3,5", help="severities (intensities) to build (default 1-5)")
    p.add_argument("--corruption-seed", dest="corruption_seed", type=int, default=0, help="seed of the corruptions (default 0)")
    executor_option(p, "builds missing corrupted sets")
    if cache:
        p.add_argument("--corruption-cache", dest="corruption_cache", metavar="DIR",
                       help="where corrupted sets are kept and reused (default $LADLE_CACHE_DIR or ~/.cache/ladle)")


def executor_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--executor", default=None, metavar="local[:N]|ray[:HOST:PORT]",
                   help=f"where the work that {what} runs: local processes (default, one per core: "
                        f"{os.cpu_count() or 1} here) or Ray (a local instance, or an existing cluster's address)")


def db_option(p: argparse.ArgumentParser, default_help: str) -> None:
    p.add_argument("--db", metavar="FILE.sqlite", help=f"the results store (embedded SQLite; {default_help})")


def print_json(obj) -> None:
    from ladle.results.text import strict_json

    print(strict_json(obj))


def show_progress(args) -> bool:
    """Progress on stderr: a bar at a terminal, a line every few seconds in a log (none for quick work)."""
    return not getattr(args, "json", False)


def note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)
