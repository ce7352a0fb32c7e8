"""Cook a soup of LoRA adapters (and, with a base, full fine-tuned checkpoints): open and check them, find the
weights (evaluation-driven recipes taste the base with each candidate's update), mix each module's updates, and
write an adapter folder (exact or low-rank) or a merged model, atomically, with a manifest."""

from __future__ import annotations

import datetime as dt
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ladle.errors import LadleError
from ladle.io.checkpoints import TensorInfo, open_ingredient
from ladle.io.dtypes import is_float, to_torch
from ladle.io.hashing import sha256_file
from ladle.io.writer import SoupWriter, check_destination, is_file_output
from ladle.progress import progress_bar
from ladle.soup.adapters import (AdapterMix, UpdatedModel, adapter_config, cast, check_bases, check_fits,
                                 describe_updates, missing_modules, module_keys, open_updates, stored_key, weights_for)
from ladle.soup.check_parts import select_keys
from ladle.soup.recipes import BASE_NONE


def cook_adapters(spec, sources: list, *, out, options: dict, params: dict, scorer=None, progress: bool = False):
    """`cook` when LoRA adapters are among the ingredients (see ladle.soup.adapters for what is computed)."""
    from ladle.heap import steady_heap
    from ladle.soup.record import ACCUMULATORS, Soup, parse_dtype, reproduce_command

    steady_heap()  # module-sized temporaries of growing size would otherwise stay in a fragmented heap
    base_path = _base_path(options)
    if options["encoder_only"]:
        raise LadleError("encoder_only: not for LoRA adapters (leave modules out with --exclude)")
    rank = options["rank"]
    if rank is not None and rank < 1:
        raise LadleError(f"rank: must be at least 1, got {rank}")
    ups = [open_updates(s, base_path) for s in sources]
    full = [up for up in ups if up.checkpoint is not None]
    if full and base_path is None:
        raise LadleError("a full checkpoint souped with adapters needs the base they share (--base): each adapter "
                         "becomes its full update", file=full[0].name)
    check_bases(ups, base_path)
    base = open_ingredient(base_path) if base_path is not None else None
    check_fits(ups, base)
    merged = options["merge_into"] is not None or bool(full)
    if merged and rank is not None:
        raise LadleError("rank: a merged model has no rank; drop --rank or --merge-into")
    if out is not None:
        if not merged and is_file_output(out):
            raise LadleError("an adapter soup is a folder (adapter_config.json + adapter_model.safetensors): give a "
                             "directory as output, or --merge-into BASE for a merged model", file=out)
        check_destination(Path(out), options["force"])
    keys = select_keys(base.keys() if merged else module_keys(ups, base), options["include"], options["exclude"])
    if not keys:
        raise LadleError("no tensors selected" + (" by --include/--exclude" if options["include"] or options["exclude"] else ""),
                         file=ups[0].name)
    if spec.needs_scorer:
        if base is None:
            raise LadleError(f"recipe '{spec.name}' tastes the base with each adapter's update: give the base (--base)")
        scorer.bind([UpdatedModel(base, up) for up in ups], base.keys(), base=base)
    plan = spec.make_plan(len(ups), **params, **({"scorer": scorer} if scorer is not None else {}))
    if not merged and rank is None and weights_for(plan, keys[0]) is None:
        raise LadleError(f"recipe '{spec.name}' does not mix updates linearly, so no exact adapter exists: give --rank R "
                         "for a low-rank adapter, or --merge-into BASE for a merged model")
    accumulate = ACCUMULATORS[options["accumulate"]]
    mix = AdapterMix(plan, ups, base, accumulate, uses_base=spec.base != BASE_NONE)
    out_dtype = parse_dtype(options["dtype"])

    files = [f for up in ups for f in up.files] + (list(base.files) if base is not None else [])
    writer, sha = None, {}
    with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        hashes = {} if options["no_hash"] else {f: pool.submit(sha256_file, f) for f in files}
        try:
            if merged:
                state, writer, carried = _write_merged(mix, base, keys, out, out_dtype, options, progress, spec.name)
            else:
                state, writer = _write_adapter(mix, keys, rank, out, out_dtype, options, progress, spec.name)
            digests = {str(f): h.result() for f, h in hashes.items()}
            manifest = _manifest(spec, params, plan, ups, base, digests, keys, options, merged, rank, mix)
            if writer is not None:  # the files go in last: they name the inputs' hashes
                command = reproduce_command(spec.name, sources, out, options, params, scorer)
                sha = writer.finish(manifest, _extras(manifest, out, command, ups, base_path, carried if merged else None))
        except BaseException:
            for h in hashes.values():
                h.cancel()
            if writer is not None:
                writer.abort()
            raise
    return Soup(manifest, state, Path(out) if out is not None else None, sha, _notes(plan, ups, manifest))


def _extras(manifest: dict, out, command, ups, base_path, carried) -> dict:
    """The folder's other files: a merged model's carried config and tokenizer, or an adapter's config; a card."""
    import json

    from ladle.io.hf import model_card

    if carried is not None:
        return {**{f.name: f for f in carried.files},
                "README.md": model_card(manifest, Path(out).name, command, carried.config)}
    config = adapter_config(ups, manifest["output"]["ranks"], _base_name(ups, base_path))
    return {"adapter_config.json": json.dumps(config, indent=2, sort_keys=True) + "\n",
            "README.md": model_card(manifest, Path(out).name, command, {"library_name": "peft"})}


def _base_path(options: dict):
    base, merge_into = options["base"], options["merge_into"]
    if base is not None and merge_into is not None and Path(base).resolve() != Path(merge_into).resolve():
        raise LadleError(f"merge_into: names another base than --base ({base}); give one of them", file=merge_into)
    return base if base is not None else merge_into


def _base_name(ups, base_path) -> str | None:
    names = [up.adapter.base_name for up in ups if up.adapter is not None]
    return names[0] if len(set(names)) == 1 and names[0] else (str(base_path) if base_path is not None else names[0])


def _write_adapter(mix: AdapterMix, keys, rank, out, out_dtype, options, progress, recipe):
    """The adapter's tensors: each module's factors (exact or truncated), tensors saved whole, base copies."""
    ups = mix.ups
    modules = [k for k in keys if any(up.has_factors(k) for up in ups)]
    whole = [k for k in keys if k not in modules]
    ranks = {}
    for key in modules:
        module = mix.module(key)
        w = weights_for(mix.plan, key)
        exact = sum(up.adapter.modules[key].rank for i, up in enumerate(ups) if up.has_factors(key) and w[i] != 0.0) \
            if w is not None and rank is None else 0
        fan_out, fan_in = _lora_dims(module)
        ranks[key] = exact if rank is None else min(rank, fan_out, fan_in)
    mix.dropped = [k for k, r in ranks.items() if r == 0]
    ranks = {k: r for k, r in ranks.items() if r > 0}
    first = next(up.adapter for up in ups if up.adapter is not None)
    dtype = out_dtype or first.weights.info(next(iter(first.modules.values())).a_key).dtype
    infos: dict[str, TensorInfo] = {}
    for key, r in ranks.items():
        module = mix.module(key)
        fan_out, _ = _lora_dims(module)
        a_tail = tuple(module.shape[1:]) if module.kind == "conv" else (_lora_dims(module)[1],)
        infos[stored_key(module, "A")] = TensorInfo((r, *a_tail), dtype)
        infos[stored_key(module, "B")] = TensorInfo((fan_out, r, *((1,) * (len(module.shape) - 2) if module.kind == "conv" else ())), dtype)
    whole_stored = {}
    for key in whole:
        holder = next(up.adapter for up in ups if up.adapter is not None and key in up.adapter.full)
        whole_stored[key] = holder.full[key]
        info = holder.weights.info(holder.full[key])
        infos[holder.full[key]] = TensorInfo(info.shape, out_dtype if out_dtype and is_float(info.dtype) else info.dtype)
    copies = {}
    for up in ups:
        for key, stored in (up.adapter.base_copies.items() if up.adapter is not None else ()):
            if key in ranks and stored not in copies:
                copies[stored] = up.adapter
                infos[stored] = up.adapter.weights.info(stored)
    mix.ranks, mix.saved_whole = ranks, sorted(whole)
    writer = None
    if out is not None:
        writer = SoupWriter(out, infos, force=options["force"], max_shard_size=options["max_shard_size"],
                            manifest_reserve=0, hash_output=not options["no_hash"], weights_name="adapter_model")
    state = {}

    def put(name, array):
        if writer is not None:
            writer.add(name, array)
        else:
            state[name] = to_torch(np.ascontiguousarray(array))

    try:
        for key in progress_bar(list(ranks) + whole, desc=f"cook {recipe} (adapters)", unit="module", enabled=progress):
            if key in ranks:
                module = mix.module(key)
                a, b = mix.exact_factors(key) if rank is None else mix.lowrank(key, ranks[key])
                a = a.reshape(infos[stored_key(module, "A")].shape)  # a convolution's factors are 4-D
                b = b.reshape(infos[stored_key(module, "B")].shape)
                put(stored_key(module, "A"), cast(a, infos[stored_key(module, "A")].dtype))
                put(stored_key(module, "B"), cast(b, infos[stored_key(module, "B")].dtype))
            else:
                put(whole_stored[key], cast(mix.whole(key), infos[whole_stored[key]].dtype))
        for stored, adapter in copies.items():
            put(stored, adapter.weights.array(stored))
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return (state if writer is None else None), writer


def _lora_dims(module) -> tuple[int, int]:
    """(fan_out, fan_in) of a module's update in LoRA's layout."""
    if module.kind == "conv":
        return module.shape[0], int(np.prod(module.shape[1:]))
    return (module.shape[1], module.shape[0]) if module.transposed else (module.shape[0], module.shape[1])


def _write_merged(mix: AdapterMix, base, keys, out, out_dtype, options, progress, recipe):
    """base + mixed update of every selected tensor someone changes; every other tensor the base's own."""
    from ladle.io.hf import plan_carry

    selected = set(keys)
    infos = {k: TensorInfo(base.info(k).shape, out_dtype if out_dtype and is_float(base.info(k).dtype) else base.info(k).dtype)
             for k in base.keys()}
    writer, carried = None, None
    if out is not None:
        if not is_file_output(out):
            carried = plan_carry([_base_path(options)], options["config_from"])
        writer = SoupWriter(out, infos, force=options["force"], max_shard_size=options["max_shard_size"],
                            hash_output=not options["no_hash"])
        writer.begin()  # a directory's shards: headers first, then the tensors in file order, hashed as written
    state = {}
    try:
        for key in progress_bar(writer.order if writer else base.keys(), desc=f"cook {recipe} (merge)",
                                unit="tensor", enabled=progress):
            original = base.array(key)
            if key in selected and is_float(base.info(key).dtype) and mix.holders(key):
                acc = np.float64 if original.dtype == np.float64 else mix.accumulate
                tensor = cast(original.astype(acc) + mix.delta(key).astype(acc, copy=False), infos[key].dtype)
            else:
                tensor = cast(original, infos[key].dtype) if is_float(infos[key].dtype) else original
            if writer is not None:
                writer.add(key, tensor)
            else:
                state[key] = to_torch(np.array(tensor))
            base.release(key)
            del tensor
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if carried is None:
        from ladle.io.hf import Carried

        carried = Carried()
    return (state if writer is None else None), writer, carried


def _manifest(spec, params, plan, ups, base, digests, keys, options, merged, rank, mix) -> dict:
    from ladle.soup.record import describe_ingredient, versions

    errors = {k: round(v, 8) for k, v in mix.errors.items()}
    worst = max(errors.items(), key=lambda kv: kv[1]) if errors else None
    w = weights_for(plan, keys[0])
    return {
        "recipe": spec.name,
        "parameters": params,
        "ingredients": [describe_updates(up, digests) for up in ups],
        "base": describe_ingredient(base, digests) if base is not None else None,
        "weights": plan.weights,
        "base_weight": 1.0 if w is not None else None,  # updates are mixed; the base stays whole
        "output": {"kind": "merged model" if merged else "adapter",
                   "rank": None if merged else (rank if rank is not None else "exact (sum of the ingredients' ranks)"),
                   "ranks": mix.ranks, "saved_whole": mix.saved_whole,
                   "dropped_modules": mix.dropped,
                   "relative_error": errors, "worst_relative_error": {"module": worst[0], "error": worst[1]} if worst else None,
                   "svd": {k: v for k, v in mix.methods.items()}},
        "missing_modules": missing_modules(ups, keys),
        "notes": plan.notes,
        "selection": {"include": list(options["include"]), "exclude": list(options["exclude"]), "tensors": len(keys)},
        "dtype_policy": {"accumulate": options["accumulate"], "output": options["dtype"] or "same as the inputs"},
        "trace": plan.trace(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(spec.needs_scorer),
    }


def _notes(plan, ups, manifest) -> list[str]:
    notes = list(plan.notes)
    w = weights_for(plan, "")
    if w is not None and abs(sum(w) + (plan.base_weight or 0.0) - 1.0) > 1e-9 and not hasattr(plan, "lambda_"):
        notes.append(f"the weights sum to {sum(w):.6g}: the updates are mixed with them and the base kept whole")
    worst = manifest["output"]["worst_relative_error"]
    if worst:
        notes.append(f"low-rank adapter: worst relative error {worst['error']:.4g} in '{worst['module']}' "
                     f"(every module's in the manifest)")
    lacking = manifest["missing_modules"]
    if lacking:
        notes.append(f"{len(lacking)} adapter(s) lack some modules the others adapt: zero updates there (the manifest "
                     "lists them)")
    if manifest["output"]["dropped_modules"]:
        notes.append(f"{len(manifest['output']['dropped_modules'])} modules have only zero-weight updates: left out")
    notes += [f"{up.name}: {n}" for up in ups for n in up.notes]
    return notes
