"""Greedy soup: ladle's cached evaluation vs the reference algorithm, on the same ingredients and data.

The reference follows Recipe 1 as written (paper, Algorithm 1): for each candidate it compares
ValAcc(soup ∪ {candidate}) with ValAcc(soup), each evaluation building the data pipeline again (decode
every held-out image from disk — photo-sized JPEGs, 384 px, as a real held-out set would be — resize,
normalise, batch), building the model again and averaging the soup's state dicts from disk;
ingredients are ranked by evaluating each of them that way. ladle decodes the data once, keeps one model, caches every
ingredient's logits and mixes candidates tensor by tensor.

Both run the whole study a user wants: rank, greedy pass, and a final table of every ingredient and
the soup on held-out and test. ladle runs it twice through one persistent logit cache: cold (the first run; a
candidate that cannot be kept stops early) and warm (a re-run evaluates nothing). Prints wall times and the
ratios (targets: first run ≥ 3x the reference, warm re-run ≥ 20x).

    .venv/bin/python bench/greedy.py [--runs 6] [--workdir bench/results/greedy]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import ladle
from ladle.data import load_data
from ladle.evaluation.evaluator import Evaluator
from ladle.evaluation.scorer import Taster
from ladle.models import model_spec
from ladle.training import sweep

SIZE = 64


def write_image_folder(data, folder: Path, upscale: int = 384) -> None:
    """Held-out / test images as photo-sized JPEG files, as a real pipeline would find them on disk."""
    for i, (x, y) in enumerate(zip(data.x, data.y)):
        d = folder / str(int(y))
        d.mkdir(parents=True, exist_ok=True)
        arr = (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr).resize((upscale, upscale), Image.BILINEAR).save(d / f"{i:05d}.jpg", quality=90)


def reference_accuracy(spec, state: dict, folder: Path) -> float:
    """Everything from scratch: the data pipeline, the model, the forward passes."""
    data = load_data(f"{folder}:all", image_size=SIZE)  # decode every image again
    model = spec.build()
    model.load_state_dict(state)
    model.eval()
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.inference_mode():
        logits = torch.cat([model((data.x[i : i + 256] - mean) / std) for i in range(0, len(data), 256)])
    return (logits.argmax(-1) == data.y).float().mean().item()


def reference_average(paths: list[str]) -> dict:
    states = [ladle.load_soup(p) for p in paths]
    return {k: (sum(s[k].double() for s in states) / len(states)).to(states[0][k].dtype)
            if states[0][k].is_floating_point() else states[0][k] for k in states[0]}


def reference_study(spec, paths, heldout_dir: Path, test_dir: Path) -> dict:
    scores = {p: reference_accuracy(spec, ladle.load_soup(p), heldout_dir) for p in paths}
    ranked = sorted(paths, key=lambda p: -scores[p])
    soup, best = [ranked[0]], scores[ranked[0]]
    for p in ranked[1:]:
        acc = reference_accuracy(spec, reference_average(soup + [p]), heldout_dir)
        current = reference_accuracy(spec, reference_average(soup), heldout_dir)  # Recipe 1 compares both
        if acc >= current:
            soup, best = soup + [p], acc
    table = {p: (scores[p], reference_accuracy(spec, ladle.load_soup(p), test_dir)) for p in paths}
    final = reference_average(soup)
    table["greedy"] = (best, reference_accuracy(spec, final, test_dir))
    return {"soup": sorted(soup), "table": table}


def ladle_study(spec, paths, heldout, test, store) -> dict:
    """Rank, greedy pass (candidates stop early once they cannot be kept) and the final table, every evaluation
    through the persistent logit cache `store` (keyed by file sha256, weights, model and data)."""
    ev = Evaluator(spec.build(), {"heldout": heldout, "test": test}, mean=spec.mean, std=spec.std, store=store,
                   model_id="efficientnet-lite0|classes=10")
    taster = Taster(ev, "heldout")
    soup = ladle.cook("greedy", paths, scorer=taster)
    table = {p: tuple(taster.ingredient_metrics(i, s).accuracy for s in ("heldout", "test")) for i, p in enumerate(paths)}
    table["greedy"] = tuple(taster.soup_metrics(soup.manifest["weights"], s).accuracy for s in ("heldout", "test"))
    chosen = sorted(p for p, w in zip(paths, soup.manifest["weights"]) if w > 0)
    return {"soup": chosen, "table": table, "forward_images": ev.forward_passes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=6, help="ingredients (made once by a short sweep, then reused)")
    parser.add_argument("--workdir", default="bench/results/greedy")
    args = parser.parse_args()
    torch.set_num_threads(2)
    work = Path(args.workdir)
    spec = model_spec("efficientnet-lite0", 10)
    train, heldout, test = (load_data(f"digits:{s}", image_size=SIZE) for s in ("train", "heldout", "test"))
    test = test.subset(range(300), "test-300")  # keep the benchmark short; both sides use the same images
    records = sweep(spec, train, heldout, work / "ingredients", runs=args.runs, epochs=2, progress=False)
    paths = [r["path"] for r in records]
    heldout_dir, test_dir = work / "heldout-jpg", work / "test-jpg"
    if not heldout_dir.exists():
        write_image_folder(heldout, heldout_dir)
        write_image_folder(test, test_dir)
    # Both sides read the same decoded images: ladle from the PNG folders too, decoded once.
    heldout_png = load_data(f"{heldout_dir}:all", image_size=SIZE)
    test_png = load_data(f"{test_dir}:all", image_size=SIZE)

    from ladle.results.store import ResultStore

    cache = work / "logit-cache.sqlite"
    for side in ("", "-wal", "-shm"):
        Path(str(cache) + side).unlink(missing_ok=True)  # the first run starts cold
    with ResultStore(cache) as store:
        t0 = time.perf_counter()
        ours = ladle_study(spec, paths, heldout_png, test_png, store)
        t_ladle = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm = ladle_study(spec, paths, heldout_png, test_png, store)
        t_warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = reference_study(spec, paths, heldout_dir, test_dir)
    t_ref = time.perf_counter() - t0

    same = ours["soup"] == ref["soup"] == warm["soup"]
    first, again = t_ref / t_ladle, t_ref / t_warm
    print(f"greedy soup of {len(paths)} EfficientNet-Lite0 ingredients, {len(heldout_png)} held-out + {len(test_png)} test images (384 px JPEG)")
    print(f"{'':<36}{'wall s':>10}{'images':>10}")
    print(f"{'reference (Recipe 1, rebuild each)':<36}{t_ref:>10.1f}{'':>10}")
    print(f"{'ladle, first run (cold cache)':<36}{t_ladle:>10.1f}{ours['forward_images']:>10}")
    print(f"{'ladle, again (warm cache)':<36}{t_warm:>10.1f}{warm['forward_images']:>10}")
    print(f"first run: {first:.2f}x the reference (target ≥ 3x: {'PASS' if first >= 3 else 'FAIL'}); "
          f"again: {again:.1f}x (target ≥ 20x: {'PASS' if again >= 20 else 'FAIL'}); same greedy set: {same}; "
          f"greedy held-out ladle {100 * ours['table']['greedy'][0]:.2f}% vs reference {100 * ref['table']['greedy'][0]:.2f}%")
    out = work / "greedy.json"
    out.write_text(json.dumps({"ladle_s": t_ladle, "ladle_warm_s": t_warm, "reference_s": t_ref, "ratio": first,
                               "ratio_warm": again, "same_soup": same, "ingredients": len(paths),
                               "forward_images": {"first": ours["forward_images"], "warm": warm["forward_images"]}},
                              indent=2) + "\n")


if __name__ == "__main__":
    main()
