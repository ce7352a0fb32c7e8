"""`ladle taste CKPT… --model M --data D`: soups beside their ingredients, the best single one and the ensemble."""

from __future__ import annotations

from ladle.cli.common import add_params, corruption_options, db_option, given, note, print_json, show_progress


def add_parser(sub) -> None:
    p = sub.add_parser("taste", help="evaluate soups beside their ingredients, the best single one and the ensemble")
    p.add_argument("checkpoints", nargs="+", metavar="CKPT")
    add_params(p, _tasting())
    p.add_argument("--base", metavar="CKPT", help="LoRA adapters: the model they update (a checkpoint or Hugging Face "
                                                  "folder); each adapter is tasted as the base with its update")
    p.add_argument("--bn", choices=["average", "recalibrate", "first", "all"], default="average",
                   help="BatchNorm statistics of soups: averaged (default), recomputed on --bn-data, the first "
                        "ingredient's, or all three side by side")
    p.add_argument("--readout", choices=["head", "knn"], default="head",
                   help="read models out by their classifier (default) or by weighted kNN (k 20, T 0.07) against a "
                        "labelled bank: encoders need no head")
    p.add_argument("--knn-bank", dest="knn_bank", metavar="SOURCE[:split]",
                   help="the kNN bank (default: the train split of the first --data source)")
    p.add_argument("--no-uniform", dest="uniform", action="store_false", help="do not add the uniform soup of the ingredients")
    corruption_options(p)
    p.add_argument("--corruptions", action="append", metavar="SUITE[:NAME,…]",
                   help="also taste on corrupted copies of every split: imagenet-c, imagenet-c-extra, imagenet-c-all, "
                        "laion-c (images) or text-typos (text); optionally only some corruptions (repeatable)")
    p.add_argument("--mce-baseline", dest="mce_baseline", default="best", metavar="best|alexnet|CKPT",
                   help="mCE relative to the best ingredient (default), AlexNet's published ImageNet-C errors, or a checkpoint")
    p.add_argument("--report", metavar="DIR", help="write taste.json, taste.md and, with --corruptions, CSVs and plots here")
    db_option(p, "default: REPORT/results.sqlite with --report, else none; evaluations found there are not recomputed")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args) -> int:
    from pathlib import Path

    from ladle.studies.taste import taste_specs, write_report

    db = args.db or (Path(args.report) / "results.sqlite" if args.report else None)
    from ladle.spec import TastingSpec

    tasting = TastingSpec.from_fields(given(args, _tasting()) | ({"bn": args.bn} if args.bn != "all" else {}))
    report = taste_specs(args.checkpoints, tasting=tasting, bn=args.bn, uniform=args.uniform,
                         corruptions=args.corruptions or (), severities=args.severities,
                         corruption_seed=args.corruption_seed, corruption_cache=args.corruption_cache,
                         mce_baseline=args.mce_baseline, executor=args.executor or "local", db=db,
                         progress=show_progress(args), readout=args.readout, knn_bank=args.knn_bank,
                         base=args.base)
    for text in report.notes:
        note(text)
    if args.report:
        write_report(report, Path(args.report))
    if args.json:
        print_json(report.to_dict())
    else:
        print(report.format())
    return 0


def _tasting():
    """The tasting options but --bn, which taste extends with `all` (every policy side by side)."""
    from ladle.spec import tasting_options

    return tasting_options("bn")
