"""The `ladle` command: one thin module per command (`add_parser`, `run`); this file only dispatches.

Command modules import nothing heavy at import time, so `ladle --help` and usage errors answer without torch.
"""

from __future__ import annotations

import importlib
import re
import sys

from ladle.cli.common import EXIT_BAD_INPUT, Parser
from ladle.errors import LadleError

COMMANDS = ("check", "cook", "recipes", "taste", "corrupt", "grid", "analyze", "train", "results", "study", "demo")


def _module(name: str):
    return importlib.import_module(f"ladle.cli.{name}")


def build_parser() -> Parser:
    from ladle._version import __version__

    parser = Parser(prog="ladle", description="Model soups: average fine-tuned checkpoints into one model.")
    parser.add_argument("--version", action="version", version=f"ladle {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        _module(name).add_parser(sub)
    return parser


def _attach_negative_values(argv: list[str]) -> list[str]:
    """`--weights -1,2` would read as an option to argparse: glue such values on (`--weights=-1,2`)."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in ("--weights", "--alpha", "--lambda", "--t") and re.match(r"-[\d.]", arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = _attach_negative_values(sys.argv[1:] if argv is None else list(argv))
    try:
        argv = _module("cook").prepare_argv(argv)
        args, extra = build_parser().parse_known_args(argv)
        if extra:
            explain = getattr(_module(args.command), "unknown_arguments", None)
            raise LadleError((explain and explain(args, extra)) or f"unrecognized arguments: {' '.join(extra)}")
        return _module(args.command).run(args)
    except LadleError as e:
        print(f"ladle: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("ladle: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as e:  # PyTorch's SIGCHLD handler raises this wherever the main thread is when a worker dies
        if not str(e).startswith("DataLoader worker"):
            raise
        print(f"ladle: error: a data-loading worker died ({str(e).splitlines()[0]}); run with --workers 0 to see "
              "the failure in this process", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
