"""The `ladle` command: argument parsing only; the work is done by the public API."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from .errors import LadleError

EXIT_BAD_INPUT = 2


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None


def _selection_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--include", action="append", metavar="GLOB", help="soup only keys matching GLOB (repeatable)")
    p.add_argument("--exclude", action="append", metavar="GLOB", help="leave out keys matching GLOB (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    from .recipes import RECIPES

    parser = argparse.ArgumentParser(prog="ladle", description="Model soups: average fine-tuned checkpoints into one model.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = sub.add_parser("check", help="preflight report: can these ingredients be souped?")
    check.add_argument("ingredients", nargs="+", metavar="CKPT")
    check.add_argument("--base", metavar="CKPT", help="the stock model: report task-vector norms and cosines")
    _selection_options(check)
    check.add_argument("--json", action="store_true", help="print the report as JSON")

    cook = sub.add_parser("cook", help="mix ingredients into a soup",
                          description="RECIPE is one of: " + ", ".join(sorted(RECIPES)) + "; or a recipe .yaml file.")
    cook.add_argument("recipe", metavar="RECIPE|FILE.yaml")
    cook.add_argument("ingredients", nargs="*", metavar="CKPT")
    cook.add_argument("-o", "--output", metavar="PATH", help="X.safetensors, or a directory (sharded, HF layout)")
    cook.add_argument("--base", metavar="CKPT", help="stock model (interpolate, model-stock)")
    cook.add_argument("--force", action="store_true", default=None, help="overwrite an existing output")
    cook.add_argument("--weights", type=_floats, metavar="W1,W2,…", help="weighted: one weight per ingredient")
    cook.add_argument("--no-normalize", dest="normalize", action="store_false", default=None,
                      help="weighted: use the weights as given instead of scaling them to sum to 1")
    cook.add_argument("--alpha", type=float, help="interpolate: weight of the fine-tuned model (outside [0,1] extrapolates)")
    _selection_options(cook)
    cook.add_argument("--accumulate", choices=["float32", "float64"], help="accumulator dtype (default float32)")
    cook.add_argument("--dtype", help="output dtype for floating tensors (needed when ingredients' dtypes differ)")
    cook.add_argument("--int-policy", dest="int_policy", choices=["first", "strict"],
                      help="integer tensors are never averaged: keep the first's (default) or require agreement")
    cook.add_argument("--reject-nonfinite", dest="reject_nonfinite", action="store_true", default=None,
                      help="fail if an ingredient holds NaN or Inf")
    cook.add_argument("--max-shard-size", dest="max_shard_size", metavar="SIZE", help="shard size for directory outputs (default 5GB)")
    cook.add_argument("--json", action="store_true", help="print the manifest as JSON")

    sub.add_parser("recipes", help="list the recipes")
    demo = sub.add_parser("demo", help="cook soups of generated checkpoints and show the check report")
    demo.add_argument("--out", default="ladle-demo", help="folder for the demo's files (default ladle-demo)")
    return parser


def _json(obj) -> str:
    """Strict JSON (RFC 8259) for --json: NaN and ±Inf, which non-finite ingredients produce, become null."""

    def clean(o):
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {k: clean(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [clean(v) for v in o]
        return o

    return json.dumps(clean(obj), indent=2, allow_nan=False, default=str)


def _show_progress(args) -> bool:
    """Progress bars only for a person at a terminal: piped or logged, stderr stays one line per error."""
    return not args.json and sys.stderr.isatty()


def run_check(args) -> int:
    from . import check
    from .check import format_report

    report = check(args.ingredients, base=args.base, include=args.include or (), exclude=args.exclude or (),
                   progress=_show_progress(args))
    print(_json(report.to_dict()) if args.json else format_report(report))
    return 0 if report.ok else EXIT_BAD_INPUT


COOK_OPTIONS = ("output", "base", "force", "weights", "normalize", "alpha", "include", "exclude", "accumulate",
                "dtype", "int_policy", "reject_nonfinite", "max_shard_size")


def run_cook(args) -> int:
    from .cook import cook
    from .recipe_file import load_recipe_file, locate

    given = {k: getattr(args, k) for k in COOK_OPTIONS if getattr(args, k) is not None}
    recipe_path, lines = None, {}
    if args.recipe.endswith((".yaml", ".yml")):
        recipe_path = Path(args.recipe)
        fields, lines = load_recipe_file(recipe_path)
        if args.ingredients:
            fields["ingredients"] = args.ingredients
        fields.update(given)  # the command line wins over the file
    else:
        fields = dict(given, recipe=args.recipe, ingredients=list(args.ingredients))
        if args.recipe == "interpolate" and "base" not in fields and len(fields["ingredients"]) >= 2:
            fields["base"] = fields["ingredients"].pop(0)  # `cook interpolate BASE FT`
    if not fields.get("ingredients"):
        raise LadleError("cook: no ingredients given")
    if "output" not in fields:
        raise LadleError("cook: no output given (-o soup.safetensors)")
    recipe = fields.pop("recipe")
    ingredients = fields.pop("ingredients")
    out = fields.pop("output")
    try:
        soup = cook(recipe, ingredients, out=out, progress=_show_progress(args), **fields)
    except LadleError as e:
        raise locate(e, recipe_path, lines) if recipe_path else e
    for note in soup.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(_json({"output": str(soup.path), "sha256": soup.sha256, "manifest": soup.manifest}))
        return 0
    print(f"wrote {soup.path}: {soup.manifest['selection']['tensors']} tensors, recipe {recipe}, "
          f"weights {_short(soup.manifest['weights'])}")
    for name, digest in soup.sha256.items():
        print(f"sha256 {digest}  {name}")
    return 0


def _short(weights: list[float]) -> str:
    return "[" + ", ".join(f"{w:.4g}" for w in weights) + "]"


def run_recipes(args) -> int:
    from .recipes import RECIPES

    for r in RECIPES.values():
        base = {"required": " (needs --base)", "optional": " (--base optional)"}.get(r.base, "")
        params = ", ".join(r.parameters) or "-"
        print(f"{r.name:<12} {r.summary}{base}\n{'':<12} parameters: {params}; {r.reference}")
    return 0


def run_demo(args) -> int:
    from .demo import run_demo as demo

    return demo(Path(args.out))


def _attach_negative_values(argv: list[str]) -> list[str]:
    """`--weights -1,2` would read as an option to argparse: glue such values on (`--weights=-1,2`)."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in ("--weights", "--alpha") and arg.startswith("-") and arg[1:2].isdigit() | (arg[1:2] == "."):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_attach_negative_values(sys.argv[1:] if argv is None else list(argv)))
    handler = {"check": run_check, "cook": run_cook, "recipes": run_recipes, "demo": run_demo}[args.command]
    try:
        return handler(args)
    except LadleError as e:
        print(f"ladle: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("ladle: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
