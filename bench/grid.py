"""Pairwise grids: soups per second, batched (vmap) against one soup at a time, and 1 against 2 local workers.

The model is the branch-point study's (small_resnet at its config's width and image size); its weights are
random draws of that model (speed does not depend on their values). Every soup is scored on the clean test
digits and on the corruption suite of the study's default config, as `ladle grid` scores them.

    .venv/bin/python bench/grid.py [--models 6] [--soups 32] [--workdir bench/results/grid]

Prints soups/s per mode and the ratios (target: batched ≥ 3× one-at-a-time), then the whole grid's wall time
on local:1 and local:2 (threads 1 per worker).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from ladle.models.specs import small_resnet
from ladle.studies.branch_points import load_branch_config
from ladle.studies.grid import GridSettings, build_context, mix_pair, run_grid, split_scores


def make_models(folder: Path, n: int, width: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        torch.manual_seed(i)
        state = small_resnet(10, width).state_dict()
        paths.append(folder / f"model-{i}.safetensors")
        save_file({k: v.contiguous() for k, v in state.items()}, str(paths[-1]))
    return paths


def soups_per_second(settings: GridSettings, soups: list[dict]) -> float:
    context = build_context(settings)
    split_scores(context, soups[:2])  # warm-up: first-call allocations
    start = time.perf_counter()
    split_scores(context, soups)
    return len(soups) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=6)
    parser.add_argument("--soups", type=int, default=32)
    parser.add_argument("--workdir", default="bench/results/grid")
    args = parser.parse_args()
    cfg = load_branch_config(None)
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    paths = make_models(work / "models", args.models, 16)  # the study's small_resnet width
    torch.set_num_threads(1)
    base = GridSettings(model=cfg.model, data=f"{cfg.data}:test", image_size=cfg.image_size,
                        corruptions=cfg.corruptions, severities=cfg.severities, threads=1)
    from safetensors.torch import load_file

    states = [load_file(str(p)) for p in paths]
    soups = [mix_pair(states[i % len(states)], states[(i + 1) % len(states)], 0.5) for i in range(args.soups)]
    context = build_context(base)
    images = sum(len(context.evaluator.splits[s]) for s in [context.clean, *context.corrupted])
    print(f"model {cfg.model} width 16 at {cfg.image_size} px; {images} images per soup "
          f"({len(context.corrupted)} corrupted sets); {args.soups} soups, 1 thread")
    modes = {"one at a time, batch 256": dict(soups_per_pass=1, batch_size=256),
             "one at a time, batch 2048": dict(soups_per_pass=1, batch_size=2048)}
    for k in (4, 8, 16):
        modes[f"vmap {k} soups, batch 256"] = dict(soups_per_pass=k, batch_size=256)
    rates = {}
    for name, change in modes.items():
        rates[name] = soups_per_second(dataclasses.replace(base, **change), soups)
    baseline = rates["one at a time, batch 256"]
    print(f"{'mode':<30} {'soups/s':>8} {'× one at a time':>16}")
    for name, rate in rates.items():
        print(f"{name:<30} {rate:>8.2f} {rate / baseline:>16.2f}")
    best = max((r for n, r in rates.items() if n.startswith("vmap")), default=0.0)
    print(f"batched (best vmap) vs one at a time: {best / baseline:.2f}× (target ≥ 3×): "
          f"{'PASS' if best / baseline >= 3 else 'FAIL'}")

    times = {}
    for workers in (1, 2):
        db = work / f"grid-{workers}.sqlite"
        start = time.perf_counter()
        result = run_grid(paths, dataclasses.replace(base, batch_size=2048), db=db, executor=f"local:{workers}",
                          soups_per_task=4)
        times[workers] = time.perf_counter() - start
        print(f"whole grid ({result.pairs} pairs) on local:{workers}: {times[workers]:.1f} s")
    print(f"2 workers vs 1: {times[1] / times[2]:.2f}× faster")


if __name__ == "__main__":
    main()
