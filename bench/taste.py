"""Peak memory of `ladle taste` against the number of checkpoints: it should be flat in N.

    .venv/bin/python bench/taste.py [--counts 2,4,8] [--model timm:resnet50] [--workdir bench/results/taste]

N checkpoints of one model (random weights around a shared start, written once and reused) are tasted in a fresh
process each, on the 300 held-out digits at 32 px (the uniform soup and the ensemble included), with the
persistent logit cache off so every checkpoint is really read and evaluated. Peak RSS is the child's own
(wait4), beside the size of one checkpoint: holding every state dict would grow by one checkpoint per N. This
parent process never imports torch (the checkpoints are made by a child), since an exec'd child inherits its
parent's peak RSS as its own starting value.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20


def make_checkpoints(model: str, n: int, folder: Path) -> list[Path]:
    """n checkpoints of `model`: one random start plus small seeded perturbations (kept between runs)."""
    import torch
    from safetensors.torch import save_file

    from ladle.models import model_spec

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"ckpt-{i:02d}.safetensors" for i in range(n)]
    if all(p.is_file() for p in paths):
        return paths
    torch.manual_seed(0)
    base = model_spec(model, 10).build().state_dict()
    for i, path in enumerate(paths):
        if path.is_file():
            continue
        g = torch.Generator().manual_seed(i + 1)
        state = {k: (v + 0.01 * torch.randn(v.shape, generator=g) * v.float().std().nan_to_num(0.0)).to(v.dtype)
                 if v.is_floating_point() and v.numel() > 1 else v.clone() for k, v in base.items()}
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return paths


def peak_rss(args: list[str], ladle: bool = True) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of one fresh `ladle ARGS` process (or `python ARGS`)."""
    env = {**os.environ, "LADLE_LOGIT_CACHE": "0", "LADLE_PROGRESS": "0"}
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, *(["-m", "ladle.cli.main"] if ladle else []), *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"ladle {' '.join(args)} failed: {child.stderr.read().decode()}")
    return usage.ru_maxrss / 1024, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="2,4,8", help="numbers of checkpoints to taste")
    parser.add_argument("--model", default="timm:resnet50")
    parser.add_argument("--workdir", default=str(ROOT / "bench" / "results" / "taste"))
    parser.add_argument("--make", type=int, help=argparse.SUPPRESS)  # the child that writes the checkpoints
    args = parser.parse_args()
    work = Path(args.workdir)
    if args.make:
        make_checkpoints(args.model, args.make, work / "ckpts")
        return
    counts = [int(c) for c in args.counts.split(",")]
    subprocess.run([sys.executable, __file__, "--make", str(max(counts)), "--model", args.model, "--workdir", str(work)],
                   check=True)
    paths = [work / "ckpts" / f"ckpt-{i:02d}.safetensors" for i in range(max(counts))]
    one = paths[0].stat().st_size / MiB
    bare, _ = peak_rss(["-c", "import timm, ladle.cli.main, ladle.studies.taste"], ladle=False)  # what taste imports
    print(f"ladle taste of N × {args.model} ({one:.0f} MiB each) on 300 held-out digits at 32 px; "
          f"bare process (interpreter, torch, timm, ladle's taste imported): {bare:.0f} MiB")
    print(f"{'N':>4}{'peak RSS MiB':>14}{'above bare':>12}{'wall s':>9}{'all held would add':>20}")
    rows = []
    for n in counts:
        rss, wall = peak_rss(["taste", *map(str, paths[:n]), "--model", args.model, "--data", "digits:heldout",
                              "--image-size", "32", "--num-classes", "10"])
        rows.append({"n": n, "peak_rss_mib": rss, "above_bare_mib": rss - bare, "wall_s": wall})
        print(f"{n:>4}{rss:>14.0f}{rss - bare:>12.0f}{wall:>9.1f}{n * one:>20.0f}", flush=True)
    spread = max(r["peak_rss_mib"] for r in rows) - min(r["peak_rss_mib"] for r in rows)
    flat = spread <= one
    print(f"peak RSS spread over N: {spread:.0f} MiB (target: flat in N, i.e. less than one checkpoint, "
          f"{one:.0f} MiB: {'PASS' if flat else 'FAIL'})")
    (work / "taste.json").write_text(json.dumps({"model": args.model, "checkpoint_mib": one, "bare_mib": bare,
                                                 "rows": rows, "spread_mib": spread, "flat": flat}, indent=2) + "\n")


if __name__ == "__main__":
    main()
