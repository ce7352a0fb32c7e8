"""`ladle results list DB` and `ladle results export DB --format csv|parquet -o OUT`: read the results store."""

from __future__ import annotations


def add_parser(sub) -> None:
    results = sub.add_parser("results", help="read the results store (embedded SQLite): list its tables, export them")
    what = results.add_subparsers(dest="results_command", required=True, metavar="WHAT")
    show = what.add_parser("list", help="each table with its number of rows")
    show.add_argument("db", metavar="FILE.sqlite")
    export = what.add_parser("export", help="one table (or all) to CSV or Parquet, written atomically")
    export.add_argument("db", metavar="FILE.sqlite")
    export.add_argument("--format", choices=["csv", "parquet"], default="csv", help="output format (default csv)")
    export.add_argument("--table", default="evaluations",
                        help="evaluations (default), ingredients, soups, corrupted_sets, study_rows, or all (-o is then a folder)")
    export.add_argument("-o", "--output", required=True, metavar="PATH", help="the file (or, with --table all, the folder) to write")


def run(args) -> int:
    from pathlib import Path

    from ladle.results.store import ResultStore

    with ResultStore(args.db, create=False) as store:
        if args.results_command == "list":
            print(store.format_summary())
            return 0
        path = store.export(Path(args.output), args.format, args.table)
    print(f"wrote {path}")
    return 0
