"""The `ladle` command: argument parsing only; the work is done by the public API."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from ladle.errors import LadleError

EXIT_BAD_INPUT = 2


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None


def _selection_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--include", action="append", metavar="GLOB", help="soup only keys matching GLOB (repeatable)")
    p.add_argument("--exclude", action="append", metavar="GLOB", help="leave out keys matching GLOB (repeatable)")


def _tasting_options(p: argparse.ArgumentParser, data_help: str) -> None:
    p.add_argument("--model", metavar="SPEC", help="efficientnet-lite0, timm:NAME, an HF directory or package.module:function")
    p.add_argument("--num-classes", dest="num_classes", type=int, help="classes of the model's head")
    p.add_argument("--data", action="append", metavar="SPEC[:split]", help=data_help)
    p.add_argument("--image-size", dest="image_size", type=int, default=64, help="input resolution (default 64)")
    p.add_argument("--bn", choices=["average", "recalibrate", "first"] + (["all"] if "taste" in p.prog else []),
                   help="BatchNorm statistics of soups: averaged (default), recomputed on --bn-data, or the first ingredient's")
    p.add_argument("--bn-data", dest="bn_data", metavar="SPEC", help="data for --bn recalibrate (default: the data's train split)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if available)")
    p.add_argument("--batch-size", dest="eval_batch_size", type=int, default=256, help="evaluation batch size")
    p.add_argument("--seed", type=int, help="seed for data splits and recipes (default 0)")


def _corruption_options(p: argparse.ArgumentParser, cache: bool = True) -> None:
    p.add_argument("--severities", default="1-5", metavar="1-5|1,3,5", help="severities (intensities) to build (default 1-5)")
    p.add_argument("--corruption-seed", dest="corruption_seed", type=int, default=0, help="seed of the corruptions (default 0)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes that build missing corrupted sets (default: one per core)")
    if cache:
        p.add_argument("--corruption-cache", dest="corruption_cache", metavar="DIR",
                       help="where corrupted sets are kept and reused (default $LADLE_CACHE_DIR or ~/.cache/ladle)")


def build_parser() -> argparse.ArgumentParser:
    from ladle.soup.recipes import RECIPES

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
    _tasting_options(cook, "greedy/learned: held-out data (default split heldout); season: target data")
    cook.add_argument("--accept", choices=["ge", "gt"], help="greedy: accept a candidate if not worse (ge, paper) or better (gt, official code)")
    cook.add_argument("--with-replacement", dest="with_replacement", action="store_true", default=None,
                      help="greedy: candidates may be added again (non-uniform weights)")
    cook.add_argument("--per", choices=["model", "layer"], help="learned: one mixing weight per model or per tensor")
    cook.add_argument("--epochs", type=int, help="learned: epochs over the held-out data (default 5)")
    cook.add_argument("--learn-batch-size", dest="batch_size", type=int, help="learned: batch size (default 64)")
    cook.add_argument("--lr", type=float, help="learned: AdamW learning rate (default 0.05)")
    cook.add_argument("--shots", type=int, help="season: labelled target examples to search on (default 20)")
    cook.add_argument("--grid", type=int, help="season: simplex grid steps (default 10)")
    cook.add_argument("--samples", type=int, help="season: random simplex points when the grid is too large (default 200)")

    taste = sub.add_parser("taste", help="evaluate soups beside their ingredients, the best single one and the ensemble")
    taste.add_argument("checkpoints", nargs="+", metavar="CKPT")
    _tasting_options(taste, "evaluation data, repeatable (default split test)")
    taste.add_argument("--no-uniform", dest="uniform", action="store_false", help="do not add the uniform soup of the ingredients")
    _corruption_options(taste)
    taste.add_argument("--corruptions", action="append", metavar="SUITE[:NAME,…]",
                       help="also taste on corrupted copies of every split: imagenet-c, imagenet-c-extra, imagenet-c-all, "
                            "laion-c; optionally only some corruptions (repeatable)")
    taste.add_argument("--mce-baseline", dest="mce_baseline", default="best", metavar="best|alexnet|CKPT",
                       help="mCE relative to the best ingredient (default), AlexNet's published ImageNet-C errors, or a checkpoint")
    taste.add_argument("--report", metavar="DIR", help="write taste.json, taste.md and, with --corruptions, CSVs and plots here")
    taste.add_argument("--json", action="store_true", help="print the report as JSON")

    corrupt = sub.add_parser("corrupt", help="build (or reuse) corrupted copies of a data set: ImageNet-C, LAION-C-style")
    corrupt.add_argument("--data", required=True, metavar="SPEC[:split]", help="the clean data (default split test)")
    corrupt.add_argument("--suite", required=True, metavar="SUITE[:NAME,…]",
                         help="imagenet-c, imagenet-c-extra, imagenet-c-all or laion-c; optionally only some corruptions")
    corrupt.add_argument("--image-size", dest="image_size", type=int, default=64, help="resolution of the clean images (default 64)")
    corrupt.add_argument("--out", required=True, metavar="DIR", help="where the corrupted sets are written (a cache: reused next time)")
    corrupt.add_argument("--json", action="store_true", help="print the list of sets as JSON")
    _corruption_options(corrupt, cache=False)

    train = sub.add_parser("train", help="cook ingredients")
    train_sub = train.add_subparsers(dest="train_command", required=True, metavar="WHAT")
    sweep = train_sub.add_parser("sweep", help="fine-tune N ingredients from one stock with random hyper-parameters (resumable)")
    sweep.add_argument("--model", required=True, metavar="SPEC")
    sweep.add_argument("--num-classes", dest="num_classes", type=int)
    sweep.add_argument("--data", required=True, metavar="SPEC", help="training source; its train split trains, heldout scores")
    sweep.add_argument("--runs", type=int, default=8)
    sweep.add_argument("--epochs", type=int, default=6)
    sweep.add_argument("--lp-steps", dest="lp_steps", type=int, default=10, help="linear-probe steps of the shared head (0: none)")
    sweep.add_argument("--image-size", dest="image_size", type=int, default=64)
    sweep.add_argument("--seed", type=int, default=0)
    sweep.add_argument("--device", default=None)
    sweep.add_argument("--out", required=True, metavar="DIR")

    sub.add_parser("recipes", help="list the recipes")
    demo = sub.add_parser("demo", help="a complete soup study on a real ImageNet-pretrained model (≤ 10 min on 2 cores)")
    demo.add_argument("--out", default="ladle-demo", help="folder for the demo's files (default ladle-demo)")
    demo.add_argument("--runs", type=int, default=8, help="ingredients to fine-tune (default 8)")
    demo.add_argument("--seed", type=int, default=0, help="sweep seed (default 0)")
    demo.add_argument("--quick", action="store_true", help="a smaller, faster study (for smoke tests)")
    return parser


def _json(obj) -> str:
    from ladle.results.report import strict_json

    return strict_json(obj)


def _show_progress(args) -> bool:
    """Progress bars only for a person at a terminal: piped or logged, stderr stays one line per error."""
    return not getattr(args, "json", False) and sys.stderr.isatty()


def run_check(args) -> int:
    from ladle.soup.check import check
    from ladle.soup.check import format_report

    report = check(args.ingredients, base=args.base, include=args.include or (), exclude=args.exclude or (),
                   progress=_show_progress(args))
    print(_json(report.to_dict()) if args.json else format_report(report))
    return 0 if report.ok else EXIT_BAD_INPUT


COOK_OPTIONS = ("output", "base", "force", "weights", "normalize", "alpha", "include", "exclude", "accumulate",
                "dtype", "int_policy", "reject_nonfinite", "max_shard_size", "accept", "with_replacement", "per",
                "epochs", "batch_size", "lr", "shots", "grid", "samples")
TASTING_FIELDS = ("model", "num_classes", "data", "image_size", "bn", "bn_data", "device", "seed")
TASTING_RECIPES = ("greedy", "learned", "season")


def run_cook(args) -> int:
    from ladle.soup.cook import cook
    from ladle.soup.recipe_file import load_recipe_file, locate

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
    for name in TASTING_FIELDS:  # a recipe file may set them; the command line wins
        value = fields.pop(name, None)
        if value is not None and getattr(args, name, None) in (None, 64 if name == "image_size" else None):
            setattr(args, name, [value] if name == "data" and isinstance(value, str) else value)
    if recipe in TASTING_RECIPES:
        fields["evaluator"] = _taster(args, recipe)
        if recipe != "greedy" and args.seed is not None:
            fields["seed"] = args.seed
    elif args.model or args.data:
        raise LadleError(f"cook: recipe '{recipe}' does not evaluate anything; drop --model/--data")
    try:
        soup = cook(recipe, ingredients, out=out, progress=_show_progress(args), **fields)
    except LadleError as e:
        raise locate(e, recipe_path, lines) if recipe_path else e
    for note in soup.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(_json({"output": str(soup.path), "sha256": soup.sha256, "manifest": soup.manifest}))
        return 0
    from ladle.results.report import format_trace

    trace = format_trace(soup.manifest["trace"])
    if trace:
        print(trace)
    print(f"wrote {soup.path}: {soup.manifest['selection']['tensors']} tensors, recipe {recipe}, "
          f"weights {_short(soup.manifest['weights'])}")
    for name, digest in soup.sha256.items():
        print(f"sha256 {digest}  {name}")
    return 0


def _device(name: str | None) -> str:
    import torch

    return name or ("cuda" if torch.cuda.is_available() else "cpu")


def _spec_and_data(args, default_split: str):
    from ladle.data.load import load_data, parse_spec
    from ladle.models.specs import model_spec

    if not args.model:
        raise LadleError(f"{args.command}: --model is required")
    if not args.data:
        raise LadleError(f"{args.command}: --data is required")
    seed = args.seed or 0
    data = {}
    for spec in args.data:
        source, split = parse_spec(spec)
        name = f"{source}:{split or default_split}"
        data[name] = load_data(name, image_size=args.image_size, seed=seed)
    first_source = parse_spec(args.data[0])[0]
    bn_data = None
    if args.bn in ("recalibrate", "all"):
        bn_data = load_data(args.bn_data or f"{first_source}:train", image_size=args.image_size, seed=seed)
    spec = model_spec(args.model, args.num_classes or next(iter(data.values())).num_classes)
    return spec, data, bn_data


def _taster(args, recipe: str):
    from ladle.evaluation.evaluator import Evaluator, Taster, check_num_classes

    spec, data, bn_data = _spec_and_data(args, "heldout" if recipe != "season" else "test")
    model = spec.build()
    first = next(iter(data.values()))
    check_num_classes(model, first)
    evaluator = Evaluator(model, data, mean=spec.mean, std=spec.std, device=_device(args.device),
                          batch_size=args.eval_batch_size, bn=args.bn or "average", bn_data=bn_data,
                          progress=_show_progress(args))
    return Taster(evaluator, split=next(iter(data)))


def run_taste(args) -> int:
    from ladle.shifts.corruptions import CorruptionCache, default_cache_dir, parse_severities, parse_suite
    from ladle.studies.taste import taste, write_report

    severities = parse_severities(args.severities)
    suites = [parse_suite(text, severities) for text in args.corruptions or ()]
    spec, data, bn_data = _spec_and_data(args, "test")
    cache = CorruptionCache(Path(args.corruption_cache) if args.corruption_cache else default_cache_dir())
    report = taste(args.checkpoints, spec, data, bn=args.bn or "average", bn_data=bn_data, uniform=args.uniform,
                   device=_device(args.device), batch_size=args.eval_batch_size, progress=_show_progress(args),
                   corruptions=suites, corruption_seed=args.corruption_seed, cache=cache, mce_baseline=args.mce_baseline,
                   workers=args.workers)
    if cache.damaged:
        print(f"note: rebuilt {len(cache.damaged)} damaged corrupted set(s) in {cache.folder}", file=sys.stderr)
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.report:
        write_report(report, Path(args.report))
    print(_json(report.to_dict()) if args.json else report.format())
    return 0


def run_corrupt(args) -> int:
    import time

    from ladle.shifts.corruptions import CorruptionCache, corrupted_sets, parse_severities, parse_suite, resize_note
    from ladle.data.load import load_data, parse_spec

    suite = parse_suite(args.suite, parse_severities(args.severities))
    source, split = parse_spec(args.data)
    data = load_data(f"{source}:{split or 'test'}", image_size=args.image_size)
    cache = CorruptionCache(Path(args.out))
    start = time.perf_counter()
    sets = corrupted_sets(data, suite, seed=args.corruption_seed, cache=cache, progress=_show_progress(args),
                          workers=args.workers)
    seconds = time.perf_counter() - start
    listing = [{"corruption": c, "severity": s, "images": len(part), "path": part.source["cache"]} for (c, s), part in sets.items()]
    if args.json:
        print(_json({"suite": suite.suite, "data": data.source, "seed": args.corruption_seed, "built": cache.misses,
                     "reused": cache.hits, "damaged_rebuilt": cache.damaged, "sets": listing}))
        return 0
    for row in listing:
        print(f"{row['corruption']:<20} {row['severity']}  {row['images']:>6} images  {row['path']}")
    print(f"{len(listing)} corrupted sets of {len(data)} images in {args.out}: {cache.misses} built, {cache.hits} reused"
          + (f", {len(cache.damaged)} damaged and rebuilt" if cache.damaged else "") + f" ({seconds:.1f} s)")
    note = resize_note(sets.values())
    if note:
        print(f"note: {note}")
    print(f"read one back with --data FILE.npz:all; ladle taste --corruptions {args.suite} --corruption-cache {args.out} reuses them")
    return 0


def run_train(args) -> int:
    from ladle.data.load import load_data, parse_spec
    from ladle.models.specs import model_spec
    from ladle.training.finetune import sweep

    source = parse_spec(args.data)[0]
    train = load_data(f"{source}:train", image_size=args.image_size, seed=args.seed)
    heldout = load_data(f"{source}:heldout", image_size=args.image_size, seed=args.seed)
    spec = model_spec(args.model, args.num_classes or train.num_classes)
    records = sweep(spec, train, heldout, Path(args.out), runs=args.runs, epochs=args.epochs, seed=args.seed,
                    lp_steps=args.lp_steps, device=_device(args.device), progress=_show_progress(args))
    for r in records:
        hp = r["hyperparameters"]
        print(f"{r['path']}: held-out {100 * r['heldout_accuracy']:.2f}%  lr {hp['lr']:g} wd {hp['weight_decay']:g} "
              f"ls {hp['label_smoothing']:g} shift {hp['shift']} seed {hp['seed']}")
    return 0


def _short(weights: list[float]) -> str:
    return "[" + ", ".join(f"{w:.4g}" for w in weights) + "]"


def run_recipes(args) -> int:
    from ladle.soup.recipes import RECIPES

    for r in RECIPES.values():
        base = {"required": " (needs --base)", "optional": " (--base optional)"}.get(r.base, "")
        params = ", ".join(r.parameters) or "-"
        print(f"{r.name:<12} {r.summary}{base}\n{'':<12} parameters: {params}; {r.reference}")
    return 0


def run_demo(args) -> int:
    from ladle.studies.demo import run_demo as demo

    return demo(Path(args.out), runs=args.runs, seed=args.seed, quick=args.quick)


def _attach_negative_values(argv: list[str]) -> list[str]:
    """`--weights -1,2` would read as an option to argparse: glue such values on (`--weights=-1,2`)."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in ("--weights", "--alpha") and re.match(r"-[\d.]", arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_attach_negative_values(sys.argv[1:] if argv is None else list(argv)))
    handler = {"check": run_check, "cook": run_cook, "recipes": run_recipes, "demo": run_demo, "taste": run_taste,
               "train": run_train, "corrupt": run_corrupt}[args.command]
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
