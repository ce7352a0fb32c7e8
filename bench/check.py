"""`ladle check` against `ladle cook uniform` on the same files: the preflight should cost no more than the soup.

    .venv/bin/python bench/check.py [--count 3] [--size-mb 512] [--repeats 3] [--workdir bench/results/check]

N float32 checkpoints of a transformer-like layout (written once by numpy, reused) are checked and souped, each
command a fresh whole process (interpreter start and imports included), page cache warm, sha256 cache warm (a
first untimed run of each fills it). Peak RSS is each child's own (wait4; this parent imports neither torch nor
numpy, since an exec'd child inherits its parent's peak). Medians of --repeats, interleaved.
Targets (issue 11): check ≤ the time of the cook; check's peak RSS ≤ 128 MiB above a bare process that only
imports what the commands import.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20


def make(count: int, size_mb: int, folder: Path) -> list[Path]:
    """`count` checkpoints of about `size_mb` MiB: 4096-wide matrices and their bias vectors, seeded."""
    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"ckpt-{i}-{size_mb}mb.safetensors" for i in range(count)]
    rows = max(1, size_mb * MiB // (4 * 4096 * 1024))  # 1024-row blocks of 4096 float32
    for i, path in enumerate(paths):
        if path.is_file():
            continue
        rng = np.random.default_rng(i)
        tensors = {}
        for b in range(rows):
            tensors[f"layers.{b}.weight"] = rng.standard_normal((1024, 4096), dtype=np.float32)
            tensors[f"layers.{b}.bias"] = rng.standard_normal(1024, dtype=np.float32)
        save_file(tensors, str(path))
    return paths


def run(args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one fresh `ladle ARGS` process (`python -c …` for the bare one)."""
    start = time.perf_counter()
    argv = [sys.executable, *args] if args[0] == "-c" else [sys.executable, "-m", "ladle.cli.main", *args]
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, env={**os.environ, "LADLE_PROGRESS": "0"})
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"ladle {' '.join(args)} failed: {child.stderr.read().decode()}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--size-mb", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=str(ROOT / "bench" / "results" / "check"))
    parser.add_argument("--make", action="store_true", help=argparse.SUPPRESS)  # the child that writes the files
    args = parser.parse_args()
    work = Path(args.workdir)
    if args.make:
        make(args.count, args.size_mb, work)
        return
    subprocess.run([sys.executable, __file__, "--make", "--count", str(args.count), "--size-mb", str(args.size_mb),
                    "--workdir", str(work)], check=True)
    paths = [str(work / f"ckpt-{i}-{args.size_mb}mb.safetensors") for i in range(args.count)]
    out = str(work / "soup.safetensors")
    commands = {"check": ["check", *paths], "cook uniform": ["cook", "uniform", *paths, "-o", out, "--force"],
                "bare (imports only)": ["-c", "import ladle.cli.main, ladle.soup.check, ladle.soup.cook"]}
    for argv in commands.values():
        run(argv)  # warm the page cache and the sha256 cache
    times = {name: [] for name in commands}
    peaks = {name: [] for name in commands}
    for _ in range(args.repeats):
        for name, argv in commands.items():
            wall, rss = run(argv)
            times[name].append(wall)
            peaks[name].append(rss)
    Path(out).unlink(missing_ok=True)
    Path(out + ".json").unlink(missing_ok=True)
    med = {n: statistics.median(v) for n, v in times.items()}
    rss = {n: max(v) for n, v in peaks.items()}
    size = sum(os.path.getsize(p) for p in paths) / 1e9
    print(f"{args.count} × {args.size_mb} MiB float32 checkpoints ({size:.2f} GB), whole process, median of "
          f"{args.repeats}, caches warm")
    print(f"{'command':<24}{'wall s':>9}{'peak RSS MiB':>14}{'above bare':>12}")
    for name in commands:
        print(f"{name:<24}{med[name]:>9.2f}{rss[name]:>14.0f}{rss[name] - rss['bare (imports only)']:>12.0f}")
    ratio = med["check"] / med["cook uniform"]
    above = rss["check"] - rss["bare (imports only)"]
    print(f"check / cook: {ratio:.2f} (target ≤ 1: {'PASS' if ratio <= 1 else 'FAIL'}); check RSS above bare: "
          f"{above:.0f} MiB (target ≤ 128: {'PASS' if above <= 128 else 'FAIL'})")
    (work / "check.json").write_text(json.dumps({"median_s": med, "peak_rss_mib": rss, "ratio": ratio,
                                                 "above_bare_mib": above}, indent=2) + "\n")


if __name__ == "__main__":
    main()
