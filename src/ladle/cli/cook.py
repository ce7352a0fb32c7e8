"""`ladle cook RECIPE CKPT… -o OUT` and `ladle cook FILE.yaml`: one subcommand per recipe, flags from its signature."""

from __future__ import annotations

import argparse
from pathlib import Path

from ladle.cli.common import add_params, given, note, print_json, show_progress


def add_parser(sub) -> None:
    from ladle.soup.options import COOK_OPTIONS
    from ladle.soup.recipes import RECIPES
    from ladle.spec import TASTING_OPTIONS

    cook = sub.add_parser("cook", help="mix ingredients into a soup",
                          description="Mix ingredients with a recipe (`ladle recipes` lists them), or cook a recipe "
                                      "file: `ladle cook FILE.yaml [overrides]`.")
    recipes = cook.add_subparsers(dest="recipe", required=True, metavar="RECIPE|FILE.yaml")
    for recipe in RECIPES.values():
        p = recipes.add_parser(recipe.name, help=recipe.summary, description=f"{recipe.summary} ({recipe.reference})")
        p.add_argument("ingredients", nargs="*", metavar="CKPT")
        p.add_argument("-o", "--output", metavar="PATH", help="X.safetensors, or a directory (sharded, HF layout)")
        add_params(p, COOK_OPTIONS)  # --base too: LoRA adapters name the model they update with it
        add_params(p, recipe.parameters, skip=("seed",) if recipe.needs_scorer else ())
        if recipe.needs_scorer:
            add_params(p, TASTING_OPTIONS)
        p.add_argument("--json", action="store_true", help="print the manifest as JSON")
        p.add_argument("--db", metavar="FILE.sqlite", help="also record the soup in this results store")
        p.add_argument("--recipe-file", dest="recipe_file", help=argparse.SUPPRESS)


def unknown_arguments(args, extra: list[str]) -> str | None:
    """Say why a flag does not belong to this recipe, rather than argparse's 'unrecognized arguments'."""
    from ladle.soup.recipes import RECIPES

    recipe = RECIPES[args.recipe]
    flag = next((e.split("=", 1)[0] for e in extra if e.startswith("--")), None)
    if flag is None:
        return None
    if flag in ("--model", "--data", "--num-classes", "--bn", "--bn-data"):
        return f"recipe '{recipe.name}' does not evaluate anything; drop {flag}"
    takes = ", ".join(p.field for p in recipe.parameters) or "none"
    return f"{flag[2:]}: not a parameter of recipe '{recipe.name}' (it takes: {takes})"


def prepare_argv(argv: list[str]) -> list[str]:
    """`cook FILE.yaml …`: the file names the recipe; its fields become the defaults the command line overrides."""
    if len(argv) >= 2 and argv[0] == "cook" and argv[1].endswith((".yaml", ".yml")):
        from ladle.soup.recipe_file import load_recipe_file, read_yaml_mapping

        load_recipe_file(argv[1])  # every field checked now, before argparse sees the rest
        name = read_yaml_mapping(Path(argv[1]))[0]["recipe"]
        return ["cook", name, *argv[2:], "--recipe-file", argv[1]]
    return argv


def run(args: argparse.Namespace) -> int:
    from ladle.errors import LadleError
    from ladle.evaluation.tasting import make_scorer
    from ladle.spec import TASTING_OPTIONS
    from ladle.soup.options import COOK_OPTIONS
    from ladle.soup.recipes import RECIPES

    recipe = RECIPES[args.recipe]
    tasting = TASTING_OPTIONS if recipe.needs_scorer else []
    fields, lines, path = {}, {}, None
    if args.recipe_file:
        from ladle.soup.recipe_file import load_recipe_file, locate

        path = Path(args.recipe_file)
        fields, lines = load_recipe_file(path)
    fields.update(given(args, COOK_OPTIONS + recipe.parameters + tasting))  # the command line wins over the file
    if args.ingredients:
        fields["ingredients"] = list(args.ingredients)
    if args.output:
        fields["output"] = args.output
    ingredients = fields.pop("ingredients", [])
    if args.recipe == "interpolate" and "base" not in fields and len(ingredients) >= 2:
        fields["base"] = ingredients.pop(0)  # `cook interpolate BASE FT`
    if not ingredients:
        raise LadleError("cook: no ingredients given")
    out = fields.pop("output", None)
    if out is None:
        raise LadleError("cook: no output given (-o soup.safetensors)")
    if args.db and fields.get("no_hash"):
        raise LadleError("cook: --db keys the soup by its sha256; drop --no-hash or --db")
    scorer = None
    try:
        if recipe.needs_scorer:
            taste_fields = {p.name: fields.pop(p.name) for p in tasting if p.name in fields}
            if "seed" in taste_fields and "seed" in {p.name for p in recipe.parameters}:
                fields["seed"] = taste_fields["seed"]
            if not taste_fields.get("model"):
                from ladle.spec import default_model

                # HF folders: the first one's config and tokenizer; LoRA adapters: their base's
                taste_fields["model"] = default_model([fields[k] for k in ("base", "merge_into") if fields.get(k)]
                                                      + ingredients)
            if not taste_fields.get("model"):
                raise LadleError(f"cook: --model is required ({recipe.name} tastes candidate soups)")
            if not taste_fields.get("data"):
                raise LadleError(f"cook: --data is required ({recipe.name} tastes candidate soups)")
            scorer = make_scorer(**taste_fields, split=recipe.scores_on, progress=show_progress(args))
        from ladle.soup.cook import cook

        soup = cook(args.recipe, ingredients, out=out, progress=show_progress(args), scorer=scorer, **fields)
    except LadleError as e:
        raise locate(e, path, lines) if path else e
    for text in soup.notes:
        note(text)
    if args.db:
        from ladle.results.store import ResultStore

        with ResultStore(args.db) as store:
            store.put_soup(next(iter(soup.sha256.values())), path=str(soup.path), recipe=args.recipe,
                           parameters=soup.manifest["parameters"],
                           ingredients=[i.get("sha256", "") for i in soup.manifest["ingredients"]],
                           weights=soup.manifest["weights"], manifest=soup.manifest)
    if args.json:
        print_json({"output": str(soup.path), "sha256": soup.sha256, "manifest": soup.manifest})
        return 0
    from ladle.results.text import format_trace

    trace = format_trace(soup.manifest["trace"])
    if trace:
        print(trace)
    weights = "[" + ", ".join(f"{w:.4g}" for w in soup.manifest["weights"]) + "]"
    print(f"wrote {soup.path}: {soup.manifest['selection']['tensors']} tensors, recipe {args.recipe}, weights {weights}")
    for name, digest in soup.sha256.items():
        print(f"sha256 {digest}  {name}")
    return 0
