"""`ladle check CKPT…`: the preflight; exit 2 if the ingredients cannot be souped. `--predict`: will two soup?"""

from __future__ import annotations

from ladle.cli.common import EXIT_BAD_INPUT, add_params, given, print_json, show_progress


def add_parser(sub) -> None:
    p = sub.add_parser("check", help="preflight report: can these ingredients be souped? (--predict: will two of them gain?)")
    p.add_argument("ingredients", nargs="+", metavar="CKPT")
    p.add_argument("--base", metavar="CKPT", help="the stock model: report task-vector norms and cosines")
    p.add_argument("--include", action="append", metavar="GLOB", help="check only keys matching GLOB (repeatable)")
    p.add_argument("--exclude", action="append", metavar="GLOB", help="leave out keys matching GLOB (repeatable)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    will = p.add_argument_group("will it soup? (--predict, two checkpoints)")
    will.add_argument("--predict", action="store_true",
                      help="the similarity measures of two checkpoints and, with --db, the predicted gain probability")
    add_params(will, _tasting())  # --model, --data (default split: heldout), --image-size, --device, …: the tasting spec
    will.add_argument("--examples", type=int, default=300, help="images the prediction measures use (default 300)")
    will.add_argument("--db", metavar="FILE.sqlite", help="a results store with a grid (ladle grid): fit P(gain > 0) on its pairs")
    will.add_argument("--grid", metavar="KEY", help="which grid of the store (default: its only one)")


def run(args) -> int:
    from ladle.errors import LadleError
    from ladle.io.lora import is_adapter
    from ladle.soup.check import check, format_report

    if not args.predict:
        for flag in ("model", "data", "db", "grid"):
            if getattr(args, flag) is not None:
                raise LadleError(f"check: --{flag} belongs to --predict (will two checkpoints soup?)")
    elif len(args.ingredients) != 2:
        raise LadleError(f"check --predict: give two checkpoints, got {len(args.ingredients)}")
    elif any(is_adapter(p) for p in args.ingredients):
        raise LadleError("check --predict compares two full checkpoints, not LoRA adapters (drop --predict)",
                         file=next(p for p in args.ingredients if is_adapter(p)))
    if args.examples < 1:
        raise LadleError(f"check: --examples must be at least 1, got {args.examples}")
    report = check(args.ingredients, base=args.base, include=args.include or (), exclude=args.exclude or (),
                   progress=show_progress(args))
    if not report.ok or not args.predict:
        print_json(report.to_dict()) if args.json else print(format_report(report))
        return 0 if report.ok else EXIT_BAD_INPUT
    from ladle.analysis.predict import format_prediction, pair_measures, predict_gain
    from ladle.spec import TastingSpec
    from ladle.results.store import ResultStore

    fields = given(args, _tasting())
    tasting = TastingSpec.from_fields(fields) if fields.get("model") or fields.get("data") else None
    measures = pair_measures(*args.ingredients, base=args.base, tasting=tasting, examples=args.examples)
    prediction = None
    if args.db:
        with ResultStore(args.db, create=False) as store:
            prediction = predict_gain(measures, store, grid=args.grid)
    if args.json:
        print_json({"check": report.to_dict(), "measures": measures, "prediction": prediction})
    else:
        print(format_report(report))
        print(format_prediction(measures, prediction))
    return 0


def _tasting():
    """The tasting spec's options the prediction measures use (BatchNorm statistics are the checkpoints' own)."""
    from ladle.spec import tasting_options

    return tasting_options("bn", "bn_data", "cache_data")
