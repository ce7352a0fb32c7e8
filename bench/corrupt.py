"""Corruption suites: how fast each corruption builds, and what the cache saves when tasting.

1. Throughput: images per second of every corruption (ImageNet-C's 15 + 4 through imagecorruptions-imaug,
   the six LAION-C-style ones in torch), at severities 1, 3 and 5, on digits at 64 px. The baseline,
   measured in the same run, is one forward pass of the evaluation model per image: the ratio says
   whether building a corrupted set or evaluating one model on it costs more.
2. Cached vs uncached evaluation: a taste-style study of M models on a suite grid. Uncached builds every
   set, then evaluates; cached reads the same sets back from the cache (checksums verified) and evaluates.
   Prints wall times and the ratio, and checks that both runs give identical accuracies.

    .venv/bin/python bench/corrupt.py [--images 200] [--models 4] [--model efficientnet-lite0|tiny]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from ladle.shifts.corruptions import SUITES, CorruptionCache, SuiteSpec, corrupt_images, corrupted_sets
from ladle.data import load_data, stratified_split
from ladle.evaluation.evaluator import Evaluator
from ladle.models import BUILTIN_STOCK, model_spec

SIZE = 64


def throughput(x: torch.Tensor, severities=(1, 3, 5)) -> dict[str, float]:
    """Images per second of each corruption, over the given severities (a warm-up call first: numba compiles)."""
    out = {}
    for suite in ("imagenet-c-all", "laion-c"):
        for name in SUITES[suite]:
            corrupt_images(x[:2], suite, name, 1)
            start = time.perf_counter()
            for s in severities:
                corrupt_images(x, suite, name, s, seed=s)
            out[name] = len(x) * len(severities) / (time.perf_counter() - start)
    return out


def forward_rate(ev: Evaluator, state: dict, split: str) -> float:
    ev.prepare(state)
    ev.run(split)
    start = time.perf_counter()
    ev.run(split)
    return len(ev.splits[split]) / (time.perf_counter() - start)


def study(ev: Evaluator, data, states: dict, suite: SuiteSpec, cache_dir: Path) -> tuple[float, float, float, dict]:
    """Build-or-load every set of the grid, then evaluate every model on it: (total, building, evaluating, accuracies)."""
    start = time.perf_counter()
    sets = corrupted_sets(data, suite, cache=CorruptionCache(cache_dir))
    built = time.perf_counter() - start
    ev.cache.clear()
    for (name, sev), part in sets.items():
        ev.add_split(f"{name}/{sev}", part)
    accuracies = {}
    for model, state in states.items():
        ev.logits_many(model, state, [f"{n}/{s}" for n, s in sets])
        accuracies[model] = {f"{n}/{s}": ev.score(model, None, f"{n}/{s}").accuracy for n, s in sets}
    total = time.perf_counter() - start
    return total, built, total - built, accuracies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="test images per corrupted set (default 200)")
    parser.add_argument("--models", type=int, default=4, help="models in the cached/uncached study (default 4)")
    parser.add_argument("--model", choices=["efficientnet-lite0", "tiny"], default="efficientnet-lite0")
    parser.add_argument("--workdir", type=Path, default=Path("bench/results/corrupt"))
    args = parser.parse_args()

    test = load_data("digits:test", image_size=SIZE)
    data = test.subset(stratified_split(test.y.numpy(), [args.images], 0)[0], "bench")
    spec = model_spec(BUILTIN_STOCK if args.model == "efficientnet-lite0" else "ladle.models:tiny_cnn", 10)
    ev = Evaluator(spec.build(), {"clean": data}, mean=spec.mean, std=spec.std)
    stock = {k: v.clone() for k, v in ev.model.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    states = {f"model-{i}": {k: v + 0.01 * v.std().nan_to_num() * torch.randn(v.shape, generator=gen)
                             if v.is_floating_point() and v.numel() > 1 else v for k, v in stock.items()}
              for i in range(args.models)}

    forward = forward_rate(ev, stock, "clean")
    rates = throughput(data.x)
    print(f"throughput on {len(data)} digits at {SIZE} px, severities 1, 3, 5 (baseline: {args.model} forward "
          f"{forward:.0f} images/s)")
    print(f"{'corruption':<24}{'images/s':>10}{'vs forward':>12}")
    for name, rate in sorted(rates.items(), key=lambda kv: kv[1]):
        print(f"{name:<24}{rate:>10.0f}{rate / forward:>11.2f}×")

    suite = SuiteSpec("imagenet-c", SUITES["imagenet-c"], (1, 3, 5))
    cache_dir = args.workdir / "cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    cold = study(ev, data, states, suite, cache_dir)
    warm = study(ev, data, states, suite, cache_dir)
    assert cold[3] == warm[3], "cached sets gave other accuracies"
    print(f"\ntaste-style study: {args.models} models × {len(suite.cells())} sets of {len(data)} images ({suite.suite}, "
          f"severities 1, 3, 5)")
    print(f"{'':<10}{'total s':>9}{'build/load s':>14}{'evaluate s':>12}")
    for label, (total, built, evaluated, _) in (("uncached", cold), ("cached", warm)):
        print(f"{label:<10}{total:>9.1f}{built:>14.1f}{evaluated:>12.1f}")
    print(f"cached is {cold[0] / warm[0]:.2f}× faster overall; loading a set is {cold[1] / max(warm[1], 1e-9):.0f}× "
          f"faster than building it; accuracies identical")
    args.workdir.mkdir(parents=True, exist_ok=True)
    (args.workdir / "corrupt.json").write_text(json.dumps(
        {"images": len(data), "model": args.model, "forward_images_per_s": forward, "images_per_s": rates,
         "uncached": cold[:3], "cached": warm[:3]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
