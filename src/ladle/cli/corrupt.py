"""`ladle corrupt --data D --suite S --out DIR`: build (or reuse) corrupted copies of a data set."""

from __future__ import annotations

from ladle.cli.common import corruption_options, db_option, print_json, show_progress


def add_parser(sub) -> None:
    p = sub.add_parser("corrupt", help="build (or reuse) corrupted copies of a data set: ImageNet-C, LAION-C-style")
    p.add_argument("--data", required=True, metavar="SPEC[:split]", help="the clean data (default split test)")
    p.add_argument("--suite", required=True, metavar="SUITE[:NAME,…]",
                   help="imagenet-c, imagenet-c-extra, imagenet-c-all, laion-c or text-typos; optionally only some "
                        "corruptions")
    p.add_argument("--model", metavar="DIR", help="text-typos: the HF text folder whose tokenizer reads the texts")
    p.add_argument("--image-size", dest="image_size", type=int, default=64, help="resolution of the clean images (default 64)")
    p.add_argument("--out", required=True, metavar="DIR", help="where the corrupted sets are written (a cache: reused next time)")
    p.add_argument("--json", action="store_true", help="print the list of sets as JSON")
    corruption_options(p, cache=False)
    db_option(p, "default OUT/results.sqlite")


def run(args) -> int:
    from pathlib import Path

    from ladle.shifts.build import build_suite

    built = build_suite(args.data, args.suite, args.out, severities=args.severities, image_size=args.image_size,
                        seed=args.corruption_seed, executor=args.executor, db=args.db or Path(args.out) / "results.sqlite",
                        progress=show_progress(args), model=args.model)
    listing = built.listing()
    if args.json:
        print_json({"suite": built.suite, "data": built.data, "seed": built.seed, "built": built.built,
                    "reused": built.reused, "damaged_rebuilt": built.damaged, "sets": listing})
        return 0
    from ladle.shifts.corruptions import is_text_suite

    noun = "texts" if is_text_suite(built.suite) else "images"
    for row in listing:
        print(f"{row['corruption']:<20} {row['severity']}  {row['images']:>6} {noun}  {row['path']}")
    images = len(next(iter(built.sets.values()))) if built.sets else 0
    print(f"{len(listing)} corrupted sets of {images} {noun} in {args.out}: {built.built} built, {built.reused} reused"
          + (f", {len(built.damaged)} damaged and rebuilt" if built.damaged else "") + f" ({built.seconds:.1f} s)")
    for text in built.notes:
        print(f"note: {text}")
    print(f"ladle taste --corruptions {args.suite} --corruption-cache {args.out} reuses them"
          + ("" if args.model else "; read one back with --data FILE.npz:all"))
    return 0
