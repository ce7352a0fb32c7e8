"""Evaluation throughput: ladle's evaluator against plain eager inference of the same model on the same images.

    .venv/bin/python bench/eval.py [--image-size 64] [--repeats 3] [--compile]

The built-in stock (EfficientNet-Lite0, 10-class head) on the 1,197 test digits. The baseline is what a user
would write: model.eval(), torch.no_grad(), NCHW batches of 256, normalised per batch. ladle's `Evaluator.run`
is timed at batch 256 (and 64, the CPU default, and 1,024), then with one setting changed at a time (threads, channels-last off,
no_grad instead of inference_mode, torch.compile with --compile); every variant's logits must equal the
baseline's within float32 tolerance. Images/s are medians of --repeats after one warm-up pass.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from ladle.data import load_data
from ladle.evaluation import evaluator as evaluation
from ladle.evaluation.evaluator import Evaluator
from ladle.models import BUILTIN_STOCK, model_spec
from ladle.training.loop import torch_threads

ROOT = Path(__file__).resolve().parent.parent


def timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    out = fn()  # warm-up (and the compile, for compiled models)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def eager(model, x, mean, std, batch: int = 256):
    with torch.no_grad():
        return torch.cat([model((x[i : i + batch] - mean) / std) for i in range(0, len(x), batch)])


@contextmanager
def without_channels_last():
    original = evaluation.channels_last
    evaluation.channels_last = lambda x: x
    try:
        yield
    finally:
        evaluation.channels_last = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile on CPU)")
    args = parser.parse_args()
    spec = model_spec(BUILTIN_STOCK, 10)
    data = load_data("digits:test", image_size=args.image_size)
    torch.manual_seed(0)
    model = spec.build().eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    n = len(data)
    cores = torch.get_num_threads()

    base_s, reference = timed(lambda: eager(model, data.x, mean, std), args.repeats)
    rows = [("plain eager (no_grad, NCHW, batch 256)", base_s, 0.0)]

    def ladle_run(batch: int = 256, compile_model: bool = False):
        net = spec.build()
        ev = Evaluator(net, {"test": data}, mean=spec.mean, std=spec.std, batch_size=batch)
        ev.prepare(state)
        if compile_model:
            ev.model = torch.compile(ev.model)
        return lambda: ev.run("test")

    variants = [("ladle, batch 256 (inference_mode, channels-last)", {}),
                ("ladle, batch 64", {"batch": 64}), ("ladle, batch 1024", {"batch": 1024})]
    for label, kw in variants:
        seconds, logits = timed(ladle_run(**kw), args.repeats)
        rows.append((label, seconds, (logits - reference).abs().max().item()))
    with torch_threads(1):
        seconds, logits = timed(ladle_run(), args.repeats)
        rows.append(("ladle, batch 256, 1 thread", seconds, (logits - reference).abs().max().item()))
    with without_channels_last():
        seconds, logits = timed(ladle_run(), args.repeats)
        rows.append(("ladle, batch 256, channels-last off", seconds, (logits - reference).abs().max().item()))
    original = Evaluator.run
    Evaluator.run = torch.no_grad()(original.__wrapped__)  # the same body under no_grad
    try:
        seconds, logits = timed(ladle_run(), args.repeats)
        rows.append(("ladle, batch 256, no_grad instead of inference_mode", seconds, (logits - reference).abs().max().item()))
    finally:
        Evaluator.run = original
    if args.compile:
        start = time.perf_counter()
        run = ladle_run(compile_model=True)
        run()
        compile_s = time.perf_counter() - start
        seconds, logits = timed(run, args.repeats)
        rows.append((f"ladle, batch 256, torch.compile (first pass {compile_s:.0f} s)", seconds, (logits - reference).abs().max().item()))

    scale = reference.abs().max().item()
    print(f"{BUILTIN_STOCK} on {n} test digits at {args.image_size} px, {cores} threads, median of {args.repeats}")
    print(f"{'':<62}{'images/s':>10}{'vs eager':>10}{'max |Δlogit|':>14}")
    for label, seconds, diff in rows:
        print(f"{label:<62}{n / seconds:>10.0f}{base_s / seconds:>9.2f}x{diff:>14.2e}")
    ok = all(diff <= 1e-4 * max(scale, 1.0) for _, _, diff in rows)
    print(f"logits equal to eager within float32 tolerance (1e-4 relative): {'yes' if ok else 'NO'}")
    out = ROOT / "bench" / "results" / "eval.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"images": n, "image_size": args.image_size, "threads": cores,
                               "rows": [{"variant": l, "seconds": s, "images_per_s": n / s, "vs_eager": base_s / s,
                                         "max_abs_diff": d} for l, s, d in rows]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
