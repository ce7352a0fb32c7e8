"""`ladle recipes`: every recipe, every parameter with its type, default and one line of help."""

from __future__ import annotations

from ladle.cli.common import print_json


def add_parser(sub) -> None:
    p = sub.add_parser("recipes", help="list the recipes and their parameters")
    p.add_argument("--json", action="store_true", help="print the list as JSON")


def _described(params) -> list[dict]:
    return [{"name": p.field, "flag": p.flag, "type": p.type_name, "default": None if p.required else p.default,
             "required": p.required, "help": p.help} for p in params]


def run(args) -> int:
    from ladle.soup.recipes import RECIPES
    from ladle.spec import TASTING_OPTIONS

    if args.json:
        print_json([{"name": r.name, "summary": r.summary, "reference": r.reference, "base": r.base,
                     "tastes": r.needs_scorer, "parameters": _described(r.parameters),
                     **({"tasting": _described(TASTING_OPTIONS)} if r.needs_scorer else {})}
                    for r in RECIPES.values()])
        return 0
    for r in RECIPES.values():
        needs = {"required": "needs --base", "optional": "--base optional"}.get(r.base)
        needs = ", ".join(x for x in (needs, "tastes candidate soups: --model, --data" if r.needs_scorer else None) if x)
        print(f"{r.name}: {r.summary}" + (f" [{needs}]" if needs else ""))
        print(f"    {r.reference}")
        for p in r.parameters:
            print(f"    {p.describe()}")
    from ladle.soup.options import COOK_OPTIONS

    shared = ", ".join(p.flag for p in COOK_OPTIONS if p.name != "base")  # base: listed per recipe above
    print(f"\nevery recipe also takes: -o PATH, {shared} (`ladle cook RECIPE --help`)")
    print("\nrecipes that taste candidate soups take the tasting spec (also `ladle taste`, YAML fields with _ for -):")
    for p in TASTING_OPTIONS:
        print(f"    {p.describe()}")
    return 0
