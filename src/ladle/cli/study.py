"""`ladle study soups|branch-points|self-soup --out DIR`: studies over the results store, resumable."""

from __future__ import annotations

from ladle.cli.common import db_option, executor_option, print_json, show_progress


def add_parser(sub) -> None:
    from ladle.cli.common import add_flags
    from ladle.config import BRANCH_POINTS_FIELDS, SELF_SOUP_FIELDS

    study = sub.add_parser("study", help="studies over the results store (resumable)")
    kinds = study.add_subparsers(dest="study", required=True, metavar="STUDY")
    soups = kinds.add_parser("soups", help="the demo's regime over N sweep seeds: mean ± sd of the soup gains")
    soups.add_argument("--seeds", default="0-4", metavar="0-4|0,2,5", help="sweep seeds (default 0-4)")
    soups.add_argument("--out", required=True, metavar="DIR", help="ingredients, soups, corrupted sets and the store")
    soups.add_argument("--runs", type=int, default=8, help="ingredients per sweep (default 8)")
    soups.add_argument("--quick", action="store_true", help="a smaller, faster study (for smoke tests)")
    soups.add_argument("--config", metavar="SWEEP.yaml",
                       help="another regime: a sweep config (hyper-parameter ranges, epochs, runs); model and data stay "
                            "the demo's. Use a separate --out per regime. A `kind: text-soups` config (rotten-tomatoes.yaml "
                            "is shipped) runs the text study: MiniLM on Rotten Tomatoes")
    soups.add_argument("--device", default=None, help="cpu, cuda, … (default cpu in workers)")
    soups.add_argument("--json", action="store_true", help="print the summary as JSON")
    executor_option(soups, "runs one task per seed")
    db_option(soups, "default OUT/results.sqlite")

    bp = kinds.add_parser("branch-points", help="when is souping tasty? a stock trained from scratch, branched at "
                                                "several epochs into four optimiser variants, every pair souped")
    bp.add_argument("--out", required=True, metavar="DIR", help="checkpoints, the store and the report (OUT/report)")
    bp.add_argument("--config", metavar="FILE.yaml",
                    help="the study's config (default: the CPU-scale one shipped with ladle; `paper.yaml` beside it "
                         "has the paper's ResNet-50 / CIFAR-100 scale for a GPU); the flags below override it")
    add_flags(bp, BRANCH_POINTS_FIELDS)
    bp.add_argument("--device", default=None, help="cpu, cuda, … (default: cuda if available)")
    bp.add_argument("--json", action="store_true", help="print the analysis as JSON")
    executor_option(bp, "trains the branches and soups the pairs")
    db_option(bp, "default OUT/results.sqlite")

    ss = kinds.add_parser("self-soup", help="self-supervised soups: inter-train on unlabelled target images, "
                                            "fine-tune back, soup, and compare with the controls")
    ss.add_argument("--out", required=True, metavar="DIR", help="data halves, ingredients, soups, results.md and the store")
    ss.add_argument("--config", metavar="FILE.yaml",
                    help="the study's config (default: the CPU-scale one shipped with ladle, self-soup.yaml; "
                         "paper-in-c.yaml and paper-laion-c.yaml beside it for a GPU); the flags below override it")
    add_flags(ss, SELF_SOUP_FIELDS)
    ss.add_argument("--device", default=None, help="cpu, cuda, … (default: cuda if available)")
    ss.add_argument("--json", action="store_true", help="print the results table as JSON")
    executor_option(ss, "trains the control sweep and fine-tunes back")


def run(args) -> int:
    from pathlib import Path

    from ladle.cli.common import overrides_from
    from ladle.config import BRANCH_POINTS_FIELDS, SELF_SOUP_FIELDS

    if args.study == "self-soup":
        from ladle.studies.self_soup import format_table, load_self_soup_config, study_self_soup

        cfg = load_self_soup_config(args.config, overrides_from(args, SELF_SOUP_FIELDS))
        table = study_self_soup(Path(args.out), config=cfg, executor=args.executor, device=args.device,
                                progress=show_progress(args))
        print_json(table) if args.json else print(format_table(table))
        return 0
    if args.study == "branch-points":
        from ladle.analysis.stats import format_analysis
        from ladle.studies.branch_points import load_branch_config, study_branch_points

        cfg = load_branch_config(args.config, overrides_from(args, BRANCH_POINTS_FIELDS))
        result = study_branch_points(Path(args.out), config=cfg, executor=args.executor, db=args.db,
                                     device=args.device, progress=show_progress(args))
        print_json(result) if args.json else print(format_analysis(result))
        print(f"report: {Path(args.out) / 'report'}")
        return 0

    from ladle.studies.soups import format_summary, parse_seeds, study_soups

    if args.config:
        from ladle.studies.text_soups import REFERENCE, is_text_study, study_text_soups

        if is_text_study(args.config):  # `kind: text-soups`: the text study (rotten-tomatoes.yaml is shipped)
            summary = study_text_soups(parse_seeds(args.seeds), Path(args.out), args.config, executor=args.executor,
                                       db=args.db, device=args.device)
            print_json(summary) if args.json else print(format_summary(summary, REFERENCE))
            return 0
    summary = study_soups(parse_seeds(args.seeds), Path(args.out), runs=args.runs, quick=args.quick,
                          executor=args.executor, db=args.db, device=args.device,
                          config=args.config)
    if args.json:
        print_json(summary)
    else:
        print(format_summary(summary))
    return 0
