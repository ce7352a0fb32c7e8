"""Self-supervised training speed per objective, and self-seasoning's peak memory against the number of ingredients.

Part 1 times one training step of each self-supervised objective at the CPU default (the built-in stock
efficientnet-lite0 at 64 px on the digits' train split, batch 32, BatchNorm "frozen", AdamW + cosine, one torch
thread) through `ladle.training.loop.train`, beside the supervised cross-entropy step measured in the same run
(before and after the others, so drift shows): mocov3, its simplified form (no momentum encoder, no predictor),
mmcr with 2 views and with 2 + 2 local views, masked (mask 0.6, 8 px patches); and mae on a small timm ViT
(vit_tiny_patch16_224 at 64 px, 8 px patches) beside cross-entropy on that same ViT. Each objective gets a fresh
model; a warm-up call of 2 steps is timed on its own, then a call of `--steps` steps, whose in-loop time (first
step's loss to last step's update, per-call setup such as building heads excluded) gives steps/s.

Part 2 writes N encoder-only ingredients (the stock's parameters + 1e-3 × seeded noise, heads dropped, the record
naming them) and the stock itself (full state dict, the first ingredient), then runs
`ladle.cook("self-season", [stock, *ingredients], encoder_only=True, epochs=1, batch_size=64)` scored on the test
digits, in a fresh child process per N. Peak RSS (ru_maxrss, cross-checked with VmHWM) is compared with a baseline
child that does the same imports and builds the same scorer (model and data) but opens no ingredient. Target: about
one model of memory per ingredient ((N + 2) models in all). A thread samples RSS during the cook and splits the peak
into its file-backed part (the memory-mapped ingredients, the frozen references) and the rest (activations).

    .venv/bin/python bench/self_supervised.py [--steps 10] [--ns 2,4,8] [--workdir bench/results/ssl] [--skip-vit]

Every part runs in child processes; the parent imports no torch, so that a child's ru_maxrss (which on Linux
starts from the parent's high-water mark when the child is spawned) is the child's own. ~3–4 min on 2 cores.
"""

from __future__ import annotations

import os
import sys
import argparse
import json
import resource
import subprocess
import time
from pathlib import Path

MODEL = "efficientnet-lite0"
LR, WEIGHT_DECAY, BATCH, IMAGE_SIZE, WARMUP = 2e-4, 0.05, 32, 64, 2
CNN_OBJECTIVES = [  # (label, objective name, knobs)
    ("cross_entropy", "cross_entropy", {}),
    ("mocov3", "mocov3", {}),
    ("mocov3 simplified", "mocov3", {"simplified": True}),
    ("mmcr 2 views", "mmcr", {"views": 2}),
    ("mmcr 2 + 2 local", "mmcr", {"views": 2, "local_views": 2}),
    ("masked 0.6 / 8 px", "masked", {"mask_ratio": 0.6, "patch_size": 8}),
    ("cross_entropy (again)", "cross_entropy", {}),
]
VIT_OBJECTIVES = [
    ("ViT cross_entropy", "cross_entropy", {}),
    ("ViT mae", "mae", {"decoder_dim": 128, "decoder_depth": 2, "decoder_heads": 4}),
]


# ---------------------------------------------------------------- children


def peak_rss() -> dict:
    """ru_maxrss and VmHWM of this process, in MiB (Linux: ru_maxrss is in KiB)."""
    out = {"ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("VmHWM:", "VmRSS:")):
                out[line.split(":")[0] + "_mib"] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def time_objective(build, name: str, knobs: dict, data, mean, std, steps: int) -> dict:
    """A fresh model; a timed warm-up call of WARMUP steps, then a call of `steps` steps timed inside the loop."""
    import functools

    import torch

    from ladle.training.loop import adamw, cosine, train
    from ladle.training.objectives import make_objective

    torch.manual_seed(0)  # a fresh head (10 classes) is drawn from the global RNG, which torch seeds per process
    model = build()
    objective = make_objective(name, **knobs)
    marks: list[float] = []
    loss_fn, after_fn = objective.loss, objective.after_step

    def loss(m, batch):  # step start
        marks.append(time.perf_counter())
        return loss_fn(m, batch)

    def after_step(m, step, total):  # step end (after the optimiser's and the schedule's step)
        after_fn(m, step, total)
        marks.append(time.perf_counter())

    object.__setattr__(objective, "loss", loss)
    object.__setattr__(objective, "after_step", after_step)
    kwargs = dict(optimiser=functools.partial(adamw, lr=LR, weight_decay=WEIGHT_DECAY),
                  schedule=functools.partial(cosine, lr=LR), bn="frozen", epochs=1 << 20, batch_size=BATCH, seed=0,
                  mean=mean, std=std)
    t0 = time.perf_counter()
    train(model, objective, data, max_steps=WARMUP, **kwargs)
    warmup_s = time.perf_counter() - t0
    marks.clear()
    t0 = time.perf_counter()
    losses = train(model, objective, data, max_steps=steps, **kwargs)
    call_s = time.perf_counter() - t0
    loop_s = marks[-1] - marks[0]
    per_step = [marks[2 * i + 1] - marks[2 * i] for i in range(steps)]
    return {"objective": name, "knobs": knobs, "warmup_s": warmup_s, "call_s": call_s, "loop_s": loop_s,
            "setup_s": call_s - loop_s, "steps": steps, "steps_per_s": steps / loop_s,
            "median_step_s": sorted(per_step)[steps // 2], "last_loss": losses[-1],
            "finite": all(map(lambda v: v == v and abs(v) != float("inf"), losses)), "threads": torch.get_num_threads()}


def child_speed(steps: int, vit: bool) -> None:
    import torch

    torch.set_num_threads(1)
    from ladle.data import load_data
    from ladle.models.specs import model_spec

    data = load_data("digits:train", image_size=IMAGE_SIZE, seed=0)
    spec = model_spec(MODEL, 10)
    emit({"data": len(data), "shape": list(data.x.shape)})
    for label, name, knobs in CNN_OBJECTIVES:
        timed = time_objective(spec.build, name, knobs, data, spec.mean, spec.std, steps)
        emit({"label": label, "model": MODEL, **timed})
    if vit:
        import timm

        def build_vit():
            return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=IMAGE_SIZE, patch_size=8,
                                     num_classes=10)

        cfg = build_vit().pretrained_cfg
        mean, std = cfg.get("mean", (0.5,) * 3), cfg.get("std", (0.5,) * 3)
        for label, name, knobs in VIT_OBJECTIVES:
            emit({"label": label, "model": "vit_tiny 64px/8",
                  **time_objective(build_vit, name, knobs, data, mean, std, steps)})


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)
    print("  " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()),
          file=sys.stderr, flush=True)


def write(path: Path, tensors: dict, record: dict) -> str:
    """A safetensors file with ladle's writer, so that its manifest carries `record` (tests/test_encoder_soups.py)."""
    from ladle.io.checkpoints import TensorInfo
    from ladle.io.writer import SoupWriter

    with SoupWriter(path, {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in tensors.items()}, force=True) as w:
        for k, v in tensors.items():
            w.add(k, v.contiguous())
        w.finish(record)
    return str(path)


def child_write(folder: Path, n: int) -> None:
    import torch

    from ladle.models.encoder import encoder_state, head_keys
    from ladle.models.specs import model_spec

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)  # the stock's fresh 10-class head
    model = model_spec(MODEL, 10).build().eval()
    stock = {k: v.detach().clone() for k, v in model.state_dict().items()}
    write(folder / "stock.safetensors", stock, {"role": "stock", "model": MODEL, "num_classes": 10})
    heads = head_keys(model)
    params = {k for k, _ in model.named_parameters()}
    for i in range(n):
        g = torch.Generator().manual_seed(1000 + i)
        perturbed = {k: v + 1e-3 * torch.randn(v.shape, generator=g) if k in params and v.is_floating_point() else v
                     for k, v in stock.items()}
        model.load_state_dict(perturbed)
        write(folder / f"ingredient-{i}.safetensors", encoder_state(model),
              {"role": "ingredient", "encoder_only": True, "head_keys": heads, "model": MODEL})
    encoder = encoder_state(model)
    print(json.dumps({"model_mib": sum(v.numel() * v.element_size() for v in stock.values()) / 2**20,
                      "encoder_mib": sum(v.numel() * v.element_size() for v in encoder.values()) / 2**20,
                      "parameter_mib": sum(stock[k].numel() * stock[k].element_size() for k in params) / 2**20,
                      "head_keys": heads}))


class RssSampler:
    """Samples this process's RSS every few ms in a thread: when, within the cook, the peak came."""

    def __init__(self, every: float = 0.005):
        import threading

        self.every, self.samples, self.stop = every, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.page_mib = os.sysconf("SC_PAGE_SIZE") / 2**20

    def _run(self):
        with open("/proc/self/statm") as f:
            while not self.stop.is_set():
                f.seek(0)
                fields = f.read().split()  # size resident shared(file-backed) ...: pages
                resident, shared = int(fields[1]) * self.page_mib, int(fields[2]) * self.page_mib
                self.samples.append((time.perf_counter(), resident, shared))
                self.stop.wait(self.every)

    def __enter__(self):
        self.start = time.perf_counter()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.end = time.perf_counter()
        self.stop.set()
        self.thread.join()

    def summary(self) -> dict:
        t, rss, file = max(self.samples, key=lambda s: s[1])
        return {"start_mib": self.samples[0][1], "peak_mib": rss, "peak_file_mib": file,
                "start_file_mib": self.samples[0][2], "end_mib": self.samples[-1][1],
                "peak_at": (t - self.start) / (self.end - self.start), "samples": len(self.samples)}


def child_season(folder: Path, n: int, out: Path) -> None:
    """n = 0: the baseline (imports and scorer only)."""
    import torch  # the same imports in every child

    import ladle
    from ladle.evaluation.tasting import make_scorer

    scorer = make_scorer(MODEL, ["digits:test"], image_size=IMAGE_SIZE, split="test")
    before = peak_rss()
    record = {"n": n, "before": before}
    if n:
        paths = [str(folder / "stock.safetensors"), *(str(folder / f"ingredient-{i}.safetensors") for i in range(n))]
        out.parent.mkdir(parents=True, exist_ok=True)
        sampler = RssSampler()
        t0 = time.perf_counter()
        with sampler:
            soup = ladle.cook("self-season", paths, scorer=scorer, out=out, encoder_only=True, epochs=1, batch_size=64,
                              force=True)
        record["seconds"] = time.perf_counter() - t0
        record["weights"] = soup.manifest.get("weights")
        record["sampled"] = sampler.summary()
    record["after"] = peak_rss()
    record["threads"] = torch.get_num_threads()
    print(json.dumps(record))


# ---------------------------------------------------------------- parent (no torch here)


def run_child(*args: str, show: bool = False) -> list[dict]:
    proc = subprocess.run([sys.executable, __file__, *args], stdout=subprocess.PIPE,
                          stderr=None if show else subprocess.PIPE, text=True)
    if proc.returncode:
        sys.exit(f"child {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr or ''}{proc.stdout[-2000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def speed(args) -> None:
    print(f"== 1. training speed: {MODEL} at {IMAGE_SIZE} px on digits:train, batch {BATCH}, bn frozen, AdamW, "
          f"1 thread; warm-up {WARMUP} steps, then {args.steps} timed", flush=True)
    vit = ["--skip-vit"] if args.skip_vit else []
    rows = run_child("--child", "speed", "--steps", str(args.steps), *vit, show=True)
    info, rows = rows[0], rows[1:]
    ce = [r for r in rows if r["label"].startswith("cross_entropy")]
    base = sum(r["steps_per_s"] for r in ce) / len(ce)
    vit_ce = next((r["steps_per_s"] for r in rows if r["label"] == "ViT cross_entropy"), None)
    print(f"\n{info['data']} training images {info['shape'][1:]}; cross-entropy baseline {base:.2f} steps/s "
          f"(mean of {' and '.join('%.2f' % r['steps_per_s'] for r in ce)}, measured first and last)")
    print(f"{'objective':<24}{'steps/s':>9}{'s/step':>8}{'median':>8}{'× slower':>10}{'warm-up s':>11}{'setup s':>9}"
          f"{'loss':>9}")
    for r in rows:
        ref = vit_ce if r["label"].startswith("ViT") else base
        print(f"{r['label']:<24}{r['steps_per_s']:>9.2f}{1 / r['steps_per_s']:>8.3f}{r['median_step_s']:>8.3f}"
              f"{ref / r['steps_per_s']:>10.2f}{r['warmup_s']:>11.2f}{r['setup_s']:>9.2f}{r['last_loss']:>9.3f}"
              + ("" if r["finite"] else "  NON-FINITE LOSS"))
    print("(× slower: time per step over cross-entropy's on the same model; ViT rows against ViT cross-entropy)")


def memory(args) -> None:
    ns = sorted({int(n) for n in args.ns.split(",")})
    print(f"\n== 2. self-seasoning peak memory: {MODEL}, stock + N encoder-only ingredients, digits:test at "
          f"{IMAGE_SIZE} px, 1 epoch, batch 64; a fresh child per N", flush=True)
    sizes = run_child("--child", "write", "--n", str(max(ns)), "--workdir", args.workdir)[-1]
    model = sizes["model_mib"]
    print(f"one model: {model:.2f} MiB of tensors (encoder {sizes['encoder_mib']:.2f} MiB, parameters "
          f"{sizes['parameter_mib']:.2f} MiB; head {sizes['head_keys']})", flush=True)
    runs = {}
    for n in [0, *ns]:
        runs[n] = run_child("--child", "season", "--n", str(n), "--workdir", args.workdir)[-1]
        r = runs[n]
        after = r["after"]
        line = f"  N = {n}: ru_maxrss {after['ru_maxrss_mib']:.0f} MiB, VmHWM {after.get('VmHWM_mib', 0):.0f} MiB"
        if n:
            sm = r["sampled"]
            line += (f", {r['seconds']:.1f} s; sampled RSS {sm['start_mib']:.0f} at the start of cook, peak "
                     f"{sm['peak_mib']:.0f} ({sm['peak_file_mib'] - sm['start_file_mib']:+.0f} file-backed) at "
                     f"{100 * sm['peak_at']:.0f} % of its time, {sm['end_mib']:.0f} at the end; "
                     f"weights {[round(w, 3) for w in r['weights'] or []]}")
        print(line if n else line + " (baseline)", flush=True)
    base = runs[0]["after"]["ru_maxrss_mib"]
    base_hwm = runs[0]["after"].get("VmHWM_mib", base)
    print(f"\nbaseline (imports + scorer, no ingredient): {base:.0f} MiB ru_maxrss, {base_hwm:.0f} MiB VmHWM")
    print(f"{'N':>3}{'files':>7}{'peak MiB':>10}{'VmHWM':>8}{'beyond':>9}{'models':>8}{'N+2':>6}{'file-backed':>13}"
          f"{'anon':>7}{'s':>7}")
    points, files = [], []
    for n in ns:
        r = runs[n]
        peak, sampled = r["after"]["ru_maxrss_mib"], r["sampled"]
        beyond = peak - base
        file = sampled["peak_file_mib"] - sampled["start_file_mib"]
        points.append((n, beyond / model))
        files.append((n, file / model))
        print(f"{n:>3}{n + 1:>7}{peak:>10.0f}{r['after'].get('VmHWM_mib', 0):>8.0f}{beyond:>9.0f}{beyond / model:>8.1f}"
              f"{n + 2:>6}{file / model:>13.1f}{(sampled['peak_mib'] - sampled['start_mib'] - file) / model:>7.1f}"
              f"{r['seconds']:>7.1f}")
    print("(files: the stock + N ingredients; beyond: peak − baseline, MiB; models: beyond / one model; at the "
          "sampled peak, in models, growth since the cook began: file-backed = the mmapped ingredients, "
          "anon = the rest)")
    for n, m in points:
        print(f"N = {n}: {m:.1f} models of memory beyond baseline")
    if len(points) >= 2:
        for what, pts in (("peak RSS", points), ("file-backed at the peak", files)):
            slope, intercept = fit(pts)
            print(f"slope of {what}: {slope:.2f} models per added ingredient (target ≈ 1), "
                  f"intercept {intercept:.1f} models")
        print("(the peak's intercept is the training step's activations and workspace at batch 64, which the baseline "
              "does not run; their run-to-run spread of a few models is what makes the peak's slope noisy)")


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return slope, my - slope * mx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per objective (after 2 warm-up steps)")
    parser.add_argument("--ns", default="2,4,8", help="numbers of encoder-only ingredients (beside the stock)")
    parser.add_argument("--workdir", default="bench/results/ssl")
    parser.add_argument("--skip-vit", action="store_true", help="leave out the ViT rows (mae and its baseline)")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--child", choices=["speed", "write", "season"], help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.workdir)
    if args.child == "speed":
        return child_speed(args.steps, not args.skip_vit)
    if args.child == "write":
        return child_write(work / "ingredients", args.n)
    if args.child == "season":
        return child_season(work / "ingredients", args.n, work / f"season-{args.n}" / "seasoned.safetensors")
    print(f"machine: {os.cpu_count()} CPUs, no GPU used; python {sys.version.split()[0]}; load average "
          f"{os.getloadavg()[0]:.1f} (other processes share the CPUs when it is above 0)")
    start = time.perf_counter()
    if not args.skip_speed:
        speed(args)
    if not args.skip_memory:
        memory(args)
    print(f"\ntotal {time.perf_counter() - start:.0f} s; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
