"""Cook a soup: open ingredients, check them, mix key by key through a recipe's plan, write atomically."""

from __future__ import annotations

import datetime as dt
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ladle.progress import progress_bar
from ladle.soup.check import find_mismatches
from ladle.soup.check_parts import select_keys
from ladle.io.checkpoints import TensorInfo, open_ingredient
from ladle.io.dtypes import is_float, to_torch
from ladle.errors import LadleError
from ladle.io.hashing import known_sha256, sha256_file
from ladle.io.hf import model_card, plan_carry
from ladle.soup.recipes import BASE_NONE, BASE_REQUIRED, RECIPES
from ladle.soup.options import OPTION_NAMES, cook_options
from ladle.soup.record import ACCUMULATORS, Soup, describe_ingredient, parse_dtype, reproduce_command, versions
from ladle.soup.stream import count_parts, mix_stream
from ladle.io.writer import SoupWriter, check_destination, is_file_output

MIX_BLOCK = 1 << 22  # elements: tensors larger than this are mixed (and written) in parts, when the recipe allows



def cook(recipe: str, ingredients: list, *, out: str | Path | None = None, progress: bool = False, scorer=None,
         **params) -> Soup:
    """Mix `ingredients` with `recipe`; write to `out` (atomically) or return the state dict if `out` is None.

    `params` are the recipe's own (see `ladle recipes`); `scorer` is required by recipes that taste candidate
    soups (greedy, learned, season: a ladle.evaluation.scorer.Taster). The options every recipe shares (base,
    include, exclude, dtype, …) are declared once in ladle.soup.options."""
    spec = RECIPES.get(recipe, where="recipe")
    options = cook_options(**{k: params.pop(k) for k in list(params) if k in OPTION_NAMES})
    base, force, include, exclude = options["base"], options["force"], options["include"], options["exclude"]
    if options["encoder_only"]:
        exclude = [*exclude, *encoder_exclusions([*ingredients, *([base] if base is not None else [])])]
    accumulate, dtype, int_policy = options["accumulate"], options["dtype"], options["int_policy"]
    reject_nonfinite, max_shard_size = options["reject_nonfinite"], options["max_shard_size"]
    params = spec.validate(params)
    if spec.needs_scorer and scorer is None:
        raise LadleError(f"recipe '{recipe}' tastes candidate soups: it needs a model and data (--model, --data)")
    if scorer is not None and not spec.needs_scorer:
        raise LadleError(f"recipe '{recipe}' does not evaluate anything; drop --model/--data")
    if not ingredients:
        raise LadleError("no ingredients given")
    from ladle.soup.adapters import any_adapter

    if any_adapter(ingredients):  # mixed in update space; the base is implicit
        from ladle.soup.adapter_cook import cook_adapters

        return cook_adapters(spec, ingredients, out=out, options=options, params=params, scorer=scorer,
                             progress=progress)
    for name in ("merge_into", "rank"):
        if options[name] is not None:
            raise LadleError(f"{name}: only for LoRA adapter ingredients (folders with adapter_config.json)")
    if spec.base == BASE_REQUIRED and base is None:
        raise LadleError(f"recipe '{recipe}' needs a base model (--base)")
    if spec.base == BASE_NONE and base is not None:
        raise LadleError(f"recipe '{recipe}' does not use a base model; drop --base")
    out_dtype = parse_dtype(dtype)
    acc_dtype = ACCUMULATORS[accumulate]

    ings = [open_ingredient(i) for i in ingredients]
    base_ing = open_ingredient(base) if base is not None else None
    keys = select_keys(ings[0].keys(), include, exclude)
    if not keys:
        raise LadleError("no tensors selected" + (" by --include/--exclude" if include or exclude else ""), file=ings[0].name)
    everyone = ings + ([base_ing] if base_ing else [])
    for m in find_mismatches(everyone, keys, include, exclude):
        if m.kind == "dtype" and out_dtype is not None:
            continue
        hint = "; pass --dtype to soup mixed dtypes" if m.kind == "dtype" else (
            "; use --encoder-only or --include/--exclude to soup only the shared part" if m.kind in ("missing", "extra")
            else "")
        raise LadleError(m.message + hint, file=m.file, key=m.key)
    carried = None
    if out is not None and not is_file_output(out):  # a directory: it carries config and tokenizer
        carried = plan_carry([*ingredients, *([base] if base is not None else [])], options["config_from"])
    elif options["config_from"] is not None:
        raise LadleError("config_from: only a directory output carries config files; give a directory as output")
    if out is not None:
        check_destination(Path(out), force)  # before any (possibly long) tasting
    if scorer is not None:  # checks that every ingredient fits the model, then scores candidate soups of them
        scorer.bind(ings, keys, encoder_only=options["encoder_only"], base=base_ing)
    plan = spec.make_plan(len(ings), **params, **({"scorer": scorer} if scorer is not None else {}))

    out_infos = {}
    for k in keys:
        info = ings[0].info(k)
        out_infos[k] = TensorInfo(info.shape, out_dtype if (out_dtype and is_float(info.dtype)) else info.dtype)

    no_hash = options["no_hash"]
    files = [f for ing in everyone for f in ing.files]
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    known = {} if no_hash else {str(f): known_sha256(f) for f in files}  # inputs hashed before (cached)
    writer = None
    if out is not None:
        # the header first when the manifest is known now (every input's hash cached, a recipe whose trace is set
        # before mixing): the output is then hashed as it is written; else finish rewrites it and reads back
        early = None if None in known.values() else _manifest(
            recipe, params, plan, ings, base_ing, known, keys, include, exclude, accumulate, out_dtype, int_policy,
            [], carried, created)
        # the manifest's header space: its size now (hashes are fixed-length), with room to spare
        draft = early or _manifest(recipe, params, plan, ings, base_ing, {str(f): "0" * 64 for f in files}, keys,
                                   include, exclude, accumulate, out_dtype, int_policy, [], carried, created)
        reserve = 3 * len(json.dumps(draft, indent=2, default=str)) // 2 + (16 << 10)
        writer = SoupWriter(out, out_infos, force=force, max_shard_size=max_shard_size, manifest_reserve=reserve,
                            hash_output=not no_hash)
        writer.begin(early)
    state: dict = {}
    int_disagreements: list[str] = []
    order = writer.order if writer else keys  # mixed in the order of the output's bytes
    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        unknown = [f for f in files if str(f) in known and known[str(f)] is None]  # (none with --no-hash)
        hashes = {f: pool.submit(sha256_file, f) for f in unknown}  # hashed beside the mixing
        try:
            stream = mix_stream(plan, ings, order, base_ing, out_dtypes={k: i.dtype for k, i in out_infos.items()},
                                accumulate=acc_dtype, int_policy=int_policy, reject_nonfinite=reject_nonfinite,
                                int_disagreements=int_disagreements, block=MIX_BLOCK if writer else None)
            parts = count_parts(plan, ings, order, MIX_BLOCK if writer else None)
            for key, tensor in progress_bar(stream, total=parts, desc=f"cook {recipe}",
                                            unit="tensor" if parts == len(keys) else "part", enabled=progress):
                if writer:
                    writer.add(key, tensor)
                else:
                    state[key] = to_torch(tensor)
                del tensor  # written: let it go before the next key is mixed
            digests = known | {str(f): h.result() for f, h in hashes.items()}
            manifest = _manifest(recipe, params, plan, ings, base_ing, digests, keys, include, exclude,
                                 accumulate, out_dtype, int_policy, int_disagreements, carried, created)
            extras = {}
            if carried is not None:
                command = reproduce_command(recipe, ingredients, out, options, params, scorer)
                extras = {f.name: f for f in carried.files}
                extras["README.md"] = model_card(manifest, Path(out).name, command, carried.config)
            sha = writer.finish(manifest, extras) if writer else {}
        except BaseException:
            for h in hashes.values():
                h.cancel()
            if writer:
                writer.abort()
            raise
    notes = list(plan.notes) + [f"{ing.name}: {n}" for ing in everyone for n in ing.notes]
    if carried is not None and carried.files:
        notes.append(f"carried {', '.join(f.name for f in carried.files)} from {carried.source}")
    if carried is not None and carried.differences:
        fields = sorted({d["field"] for d in carried.differences})
        notes.append(f"the ingredients' configs differ in {', '.join(fields[:4])}{', …' if len(fields) > 4 else ''}: "
                     f"the soup carries {carried.source}'s (the manifest lists every difference)")
    if int_disagreements:
        notes.append(f"{len(int_disagreements)} integer tensors differ between ingredients; kept the first ingredient's "
                     f"(e.g. '{int_disagreements[0]}')")
    return Soup(manifest, state if writer is None else None, Path(out) if out is not None else None, sha, notes)


def encoder_exclusions(paths: list) -> list[str]:
    """Exclude patterns (exact keys, glob-escaped) for every ingredient's head: the `head_keys` its record names
    (a `ladle train ssl` ingredient), else the classifier of the model its record names; one line otherwise."""
    import glob

    from ladle.io.manifest import read_manifest
    from ladle.models.encoder import head_keys

    heads: set[str] = set()
    built: dict[tuple, list[str]] = {}  # (model, num_classes) -> its head keys: each model built once
    for path in paths:
        if not isinstance(path, (str, Path)):
            raise LadleError("--encoder-only needs checkpoint files whose record names their head")
        try:
            record = read_manifest(path) or {}
        except (LadleError, ValueError, OSError):
            record = {}
        if "head_keys" in record:
            heads.update(record["head_keys"])
        elif isinstance(record.get("model"), str):
            from ladle.models import build_model

            key = (record["model"], record.get("num_classes"))
            if key not in built:
                built[key] = head_keys(build_model(*key))
            heads.update(built[key])
        else:
            raise LadleError("--encoder-only: its record names no head (head_keys) and no model; leave the head out "
                             "with --exclude PATTERN instead", file=path)
    return [glob.escape(k) for k in sorted(heads)]


def _manifest(recipe, params, plan, ings, base_ing, digests, keys, include, exclude, accumulate, out_dtype,
              int_policy, int_disagreements, carried=None, created: str | None = None) -> dict:
    scored = RECIPES[recipe].needs_scorer
    return {
        "recipe": recipe,
        "parameters": params,
        "ingredients": [describe_ingredient(i, digests) for i in ings],
        "base": describe_ingredient(base_ing, digests) if base_ing else None,
        "weights": plan.weights,
        "base_weight": plan.base_weight,
        "notes": plan.notes,
        "selection": {"include": list(include), "exclude": list(exclude), "tensors": len(keys)},
        "dtype_policy": {"accumulate": accumulate,
                         "output": out_dtype or "same as the ingredients"},
        "integer_policy": {"policy": int_policy, "rule": "never averaged",
                           "disagreeing_keys": int_disagreements},
        "trace": plan.trace(),
        **(carried.manifest() if carried is not None else {}),
        "created": created or dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(scored),
    }


def load_soup(path) -> dict:
    """A soup (or any checkpoint ladle reads) as a plain state dict."""
    return open_ingredient(path).state_dict()
