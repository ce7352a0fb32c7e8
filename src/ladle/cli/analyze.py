"""`ladle analyze SOURCE`: when is souping tasty? Statistics of a pairwise soup grid, from a store or a pairs table."""

from __future__ import annotations

from ladle.cli.common import print_json


def add_parser(sub) -> None:
    p = sub.add_parser("analyze", help="statistics of a pairwise soup grid: gain, collapse, similarity predictors, "
                                       "transitivity (from a results store or a pairs table)")
    p.add_argument("source", metavar="SOURCE",
                   help="a results store written by `ladle grid` (FILE.sqlite), or a pairs table (CSV or Parquet: a, b, "
                        "soup_accuracy in percent, optional soup_loss, soup_corrupted_accuracy, soup_corrupted_loss, "
                        "and numeric similarity columns)")
    p.add_argument("--models", metavar="FILE",
                   help="with a pairs table: each model's own figures (CSV or Parquet: model, accuracy in percent, "
                        "optional loss, corrupted_accuracy, corrupted_loss, branch_epoch, variant)")
    p.add_argument("--report", metavar="DIR", help="write plots, analysis.json and summary.md into DIR")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")
    p.add_argument("--collapse", type=float, metavar="PCT",
                   help="a soup below this accuracy (percent) has collapsed (default 5 × chance: 500 / classes, "
                        "5 %% at 100 classes; 5 %% when the class count is unknown)")
    p.add_argument("--num-classes", dest="num_classes", type=int, metavar="N",
                   help="the number of classes (sets the default --collapse; a store knows it)")
    p.add_argument("--alpha", type=float, metavar="A", help="with a store: the soups at this mixing weight (default 0.5)")
    p.add_argument("--grid", metavar="KEY", help="with a store holding several grids: which one")


def run(args) -> int:
    from pathlib import Path

    from ladle.errors import LadleError

    source = Path(args.source)
    if not source.is_file():
        raise LadleError("no such file" if not source.exists() else "not a file", file=source)
    if args.collapse is not None and not 0.0 <= args.collapse <= 100.0:
        raise LadleError(f"--collapse: a percentage from 0 to 100, got {args.collapse:g}")
    if args.num_classes is not None and args.num_classes < 1:
        raise LadleError(f"--num-classes: must be at least 1, got {args.num_classes}")
    table = _load(source, args)
    if args.num_classes is not None:
        table.num_classes = args.num_classes

    from ladle.analysis.stats import analyze, format_analysis

    result = analyze(table, collapse=args.collapse)
    written = []
    if args.report:
        from ladle.analysis.report import write_analysis_report

        written = write_analysis_report(result, table, Path(args.report))
    if args.json:
        print_json(result)
    else:
        print(format_analysis(result))
        if written:
            print(f"\nwrote {len(written)} files to {args.report}: {', '.join(p.name for p in written)}")
    return 0


def _load(source, args):
    from ladle.errors import LadleError
    from ladle.results.store import SQLITE_HEADER

    with open(source, "rb") as f:
        is_store = f.read(len(SQLITE_HEADER)) == SQLITE_HEADER
    if is_store:
        if args.models:
            raise LadleError("--models is for a pairs table; a results store holds its models' figures", file=args.models)
        from ladle.results.store import ResultStore
        from ladle.analysis.predict import pairs_from_store

        with ResultStore(source, create=False) as store:
            return pairs_from_store(store, grid=args.grid, alpha=0.5 if args.alpha is None else args.alpha)
    if args.grid is not None or args.alpha is not None:
        raise LadleError("--grid and --alpha choose soups in a results store; a pairs table has one soup per pair",
                         file=source)
    from ladle.analysis.pairs import read_pairs_table

    return read_pairs_table(source, args.models)
