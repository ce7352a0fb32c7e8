"""`ladle grid CKPT… --model M --data D --db FILE`: every pair souped, evaluated clean and corrupted, stored."""

from __future__ import annotations

from ladle.cli.common import add_params, corruption_options, given, print_json, show_progress

GRID_BATCH = 256  # images per forward pass when none is given: a grid's soups are compute-bound (bench/grid.py)


def add_parser(sub) -> None:
    p = sub.add_parser("grid", help="soup every pair of checkpoints (at α or along α curves) and store the figures")
    p.add_argument("checkpoints", nargs="+", metavar="CKPT")
    add_params(p, _tasting())  # the tasting spec's flags (--model, --data, --image-size, --device, --precision, …)
    p.add_argument("--db", required=True, metavar="FILE.sqlite", help="the results store; a rerun resumes from it")
    alpha = p.add_mutually_exclusive_group()
    alpha.add_argument("--alpha", type=float, default=None, help="the soup (1 − α)·A + α·B (default 0.5)")
    alpha.add_argument("--alphas", default=None, metavar="0:1:0.1|0.25,0.5",
                       help="several α: START:STOP:STEP (STOP included) or a comma list")
    p.add_argument("--bn", choices=["average", "recalibrate"], default="average",
                   help="BatchNorm statistics of soups: averaged like every other tensor (default, as the paper) or "
                        "recomputed on --bn-data")
    p.add_argument("--corruptions", action="append", metavar="SUITE[:NAME,…]",
                   help="also score every model and soup on a corruption suite (its mean): imagenet-c, laion-c, text-typos, … (repeatable)")
    corruption_options(p)
    p.set_defaults(severities="3")
    p.add_argument("--base", metavar="CKPT", help="the stock the models were trained from: adds the cosine of task vectors; LoRA adapters: "
                                                  "the model they update (each adapter is that model with its update)")
    p.add_argument("--collapse", type=float, default=None, metavar="PCT",
                   help="a soup below this accuracy (%%) collapsed (default 5 × chance: 500 / classes, 5 %% at 100 classes)")
    p.add_argument("--soups-per-pass", dest="soups_per_pass", type=int, default=8,
                   help="soups evaluated together in one batched (vmap) pass (default 8; 1: one at a time)")
    p.add_argument("--soups-per-task", dest="soups_per_task", type=int, default=24,
                   help="soups per executor task: a task's rows land together, so a kill loses at most one task (default 24)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per task (default 1; part of the figures' bytes)")
    p.add_argument("--similarity-examples", dest="similarity_examples", type=int, default=2000,
                   help="clean images the prediction similarities (KL, CKA, …) are computed on (default 2000)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args) -> int:
    from dataclasses import asdict

    from ladle.errors import LadleError
    from ladle.studies.grid import GridSettings, parse_alphas, run_grid

    from ladle.spec import TastingSpec

    tasting = TastingSpec.from_fields(given(args, _tasting())).with_default_model(
        [args.base, *args.checkpoints] if args.base else args.checkpoints)  # LoRA adapters: their base
    if not tasting.model or len(tasting.data) != 1:
        raise LadleError("grid: needs --model and exactly one --data (the soups are scored on one split)")
    batch_size = tasting.eval_batch_size or GRID_BATCH
    for flag, value in (("--soups-per-pass", args.soups_per_pass), ("--threads", args.threads),
                        ("--eval-batch-size", batch_size), ("--soups-per-task", args.soups_per_task), ("--similarity-examples", args.similarity_examples)):
        if value < 1:
            raise LadleError(f"{flag}: must be at least 1, got {value}")
    settings = GridSettings(model=tasting.model, data=tasting.data[0], num_classes=tasting.num_classes,
                            image_size=tasting.image_size, seed=tasting.seed, corruptions=tuple(args.corruptions or ()),
                            severities=args.severities, corruption_seed=args.corruption_seed,
                            corruption_cache=args.corruption_cache, bn=args.bn, bn_data=tasting.bn_data,
                            device=tasting.device, batch_size=batch_size, soups_per_pass=args.soups_per_pass,
                            threads=args.threads, precision=tasting.precision, workers=tasting.workers,
                            max_length=tasting.max_length, text_column=tasting.text_column,
                            text_pair_column=tasting.text_pair_column, label_column=tasting.label_column)
    result = run_grid(args.checkpoints, settings, alphas=parse_alphas(args.alphas, args.alpha), db=args.db,
                      executor=args.executor, base=args.base, collapse=args.collapse,
                      similarity_examples=args.similarity_examples, soups_per_task=args.soups_per_task, progress=show_progress(args))
    if args.json:
        print_json(asdict(result))
        return 0
    for text in result.notes:
        print(f"note: {text}")
    print(f"grid {result.grid[:12]}: {result.models} models, {result.pairs} pairs, {result.soups} soups in {args.db} "
          f"({result.computed} computed now, {result.seconds:.0f} s)")
    print(f"next: ladle analyze {args.db} --report REPORT_DIR")
    return 0


def _tasting():
    """The tasting spec's options a grid takes: its own --bn (average or recalibrate); photos always cached."""
    from ladle.spec import tasting_options

    return tasting_options("bn", "cache_data")
