"""`ladle check CKPT…`: the preflight; exit 2 if the ingredients cannot be souped."""

from __future__ import annotations

from ladle.cli.common import EXIT_BAD_INPUT, print_json, show_progress


def add_parser(sub) -> None:
    p = sub.add_parser("check", help="preflight report: can these ingredients be souped?")
    p.add_argument("ingredients", nargs="+", metavar="CKPT")
    p.add_argument("--base", metavar="CKPT", help="the stock model: report task-vector norms and cosines")
    p.add_argument("--include", action="append", metavar="GLOB", help="check only keys matching GLOB (repeatable)")
    p.add_argument("--exclude", action="append", metavar="GLOB", help="leave out keys matching GLOB (repeatable)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args) -> int:
    from ladle.soup.check import check, format_report

    report = check(args.ingredients, base=args.base, include=args.include or (), exclude=args.exclude or (),
                   progress=show_progress(args))
    if args.json:
        print_json(report.to_dict())
    else:
        print(format_report(report))
    return 0 if report.ok else EXIT_BAD_INPUT
