"""`ladle study soups --seeds 0-4 --out DIR`: the demo's regime over several sweep seeds, resumable."""

from __future__ import annotations

from ladle.cli.common import db_option, executor_option, print_json


def add_parser(sub) -> None:
    study = sub.add_parser("study", help="studies over the results store (resumable)")
    kinds = study.add_subparsers(dest="study", required=True, metavar="STUDY")
    soups = kinds.add_parser("soups", help="the demo's regime over N sweep seeds: mean ± sd of the soup gains")
    soups.add_argument("--seeds", default="0-4", metavar="0-4|0,2,5", help="sweep seeds (default 0-4)")
    soups.add_argument("--out", required=True, metavar="DIR", help="ingredients, soups, corrupted sets and the store")
    soups.add_argument("--runs", type=int, default=8, help="ingredients per sweep (default 8)")
    soups.add_argument("--quick", action="store_true", help="a smaller, faster study (for smoke tests)")
    soups.add_argument("--config", metavar="SWEEP.yaml",
                       help="another regime: a sweep config (hyper-parameter ranges, epochs, runs); model and data stay "
                            "the demo's. Use a separate --out per regime")
    soups.add_argument("--device", default=None, help="cpu, cuda, … (default cpu in workers)")
    soups.add_argument("--json", action="store_true", help="print the summary as JSON")
    executor_option(soups, "runs one task per seed")
    db_option(soups, "default OUT/results.sqlite")


def run(args) -> int:
    from pathlib import Path

    from ladle.studies.soups import format_summary, parse_seeds, study_soups

    summary = study_soups(parse_seeds(args.seeds), Path(args.out), runs=args.runs, quick=args.quick,
                          executor=args.executor, db=args.db, device=args.device,
                          config=args.config)
    if args.json:
        print_json(summary)
    else:
        print(format_summary(summary))
    return 0
