"""Benchmark `ladle.cook("uniform", ...)` against the I/O bound and a naive load_file-and-average script.

    .venv/bin/python bench/mix.py                 # full sweep: N = 2, 4, 8, 16; float32 and bf16; ~256 MiB files
    .venv/bin/python bench/mix.py --quick         # N = 2, 4 only
    .venv/bin/python bench/mix.py --sizes-mb 64   # smaller ingredients

Why it is built this way:
- Every measurement runs in a fresh child process (`--one MODE`), so peak RSS belongs to that run alone.
  The child times only the work, not the interpreter start or `import torch`. Peak RSS is VmHWM, reset
  just before the work: `ru_maxrss` is not usable, as an exec'd child inherits its parent's peak.
- Python + torch cost a few hundred MiB of RSS before any work is done, so the RSS figures reported
  are the child's peak minus its resident size just before the work starts ("idle"); raw values are
  in the JSON.
- The page cache is warmed the same way before every timed run of every mode: the parent reads each
  input file once. Outputs are deleted and `sync` is called before each run, and every mode fsyncs
  its output (as ladle does), so all modes pay the same write cost.
- ladle is timed twice: 'ladle' finds the inputs' sha256 in its cache (primed, untimed, in a private
  cache under --workdir), as when souping files seen before; 'cold' (LADLE_HASH_CACHE=0) hashes every
  input byte, as for a first soup of new files. sha256 runs at ~1.5-1.8 GB/s per core, below the
  page-cache read rate, so 'cold' cannot reach the I/O bound on a few cores.
- Before each run it waits (up to --max-wait, --wait-budget in all) for the machine to be quiet, and
  each run records the CPU time other processes took meanwhile; a disturbed run is repeated
  (--retries), then flagged.
- Modes are interleaved (ladle, cold, io, naive, ladle, ...) and the median of `--repeats` runs is kept.
- Ingredients are generated once with a fixed seed and reused while their recorded spec and size match.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = ("ladle", "cold", "io", "naive")  # cold: ladle with no sha256 cache (a first soup of new files)
DTYPES = ("float32", "bfloat16")
LAYOUT_VERSION = 1
MiB = 1 << 20
CHUNK = 8 * MiB

# Targets from the issue.
MIN_IO_RATIO = 0.8  # ladle throughput / I/O-bound throughput
RSS_SLACK_MIB = 256  # ladle peak RSS may exceed the output size by this much
RSS_FLAT_MIB = 64  # max - min of ladle peak RSS over N


# --------------------------------------------------------------------------- ingredients


def layout(size_bytes: int, dtype_name: str) -> list[tuple[str, tuple[int, ...], str]]:
    """A transformer-like state dict of about `size_bytes`: big matrices, many small vectors, int64 buffers."""
    itemsize = 4 if dtype_name == "float32" else 2
    budget = size_bytes // itemsize
    d = 768
    while d > 64 and 12 * d * d > budget // 4:
        d //= 2
    per_layer = 12 * d * d + 13 * d
    head = 1000 * d + 1000
    layers = max(1, round(0.7 * budget / per_layer))
    vocab = max(1, (budget - layers * per_layer - head - 2 * d) // d)
    f = dtype_name
    entries = [("embeddings.word_embeddings.weight", (vocab, d), f)]
    for i in range(layers):
        p = f"encoder.layers.{i}."
        entries += [
            (p + "attn.qkv.weight", (3 * d, d), f), (p + "attn.qkv.bias", (3 * d,), f),
            (p + "attn.proj.weight", (d, d), f), (p + "attn.proj.bias", (d,), f),
            (p + "mlp.fc1.weight", (4 * d, d), f), (p + "mlp.fc1.bias", (4 * d,), f),
            (p + "mlp.fc2.weight", (d, 4 * d), f), (p + "mlp.fc2.bias", (d,), f),
            (p + "norm1.weight", (d,), f), (p + "norm1.bias", (d,), f),
            (p + "norm2.weight", (d,), f), (p + "norm2.bias", (d,), f),
        ]
    entries += [
        ("encoder.norm.weight", (d,), f), ("encoder.norm.bias", (d,), f),
        ("head.weight", (1000, d), f), ("head.bias", (1000,), f),
        ("embeddings.position_ids", (1, 1024), "int64"), ("head.num_batches_tracked", (), "int64"),
    ]
    return entries


def ensure_inputs(workdir: Path, size_mib: int, dtype_name: str, count: int, seed: int) -> list[Path]:
    """Generate `count` ingredients once; later runs reuse them while spec and file size match."""
    import torch
    from safetensors.torch import save_file

    folder = workdir / f"{dtype_name}-{size_mib}MiB"
    folder.mkdir(parents=True, exist_ok=True)
    record_path = folder / "inputs.json"
    spec = {"layout": LAYOUT_VERSION, "size_mib": size_mib, "dtype": dtype_name, "seed": seed}
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    if record.get("spec") != spec:
        record = {"spec": spec, "sizes": {}}
    entries = layout(size_mib * MiB, dtype_name)
    paths = []
    for i in range(count):
        path = folder / f"ingredient-{i:02d}.safetensors"
        paths.append(path)
        if path.exists() and record["sizes"].get(path.name) == path.stat().st_size:
            continue
        need = size_mib * MiB * 1.1
        if shutil.disk_usage(folder).free < need:
            sys.exit(f"not enough free disk in {folder} for {path.name} ({need / 1e9:.1f} GB needed)")
        log(f"generating {path} ...")
        g = torch.Generator().manual_seed(seed * 1000 + i)
        tensors = {}
        for name, shape, dt in entries:
            if dt == "int64":
                tensors[name] = torch.arange(max(1, torch.Size(shape).numel()), dtype=torch.int64).reshape(shape)
            else:
                t = torch.randn(shape, generator=g).mul_(0.02)
                if name.endswith("norm1.weight") or name.endswith("norm2.weight"):
                    t.add_(1.0)
                tensors[name] = t.to(getattr(torch, dt))
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp))
        del tensors
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # no writeback of fresh inputs during the timed runs
        os.replace(tmp, path)
        record["sizes"][path.name] = path.stat().st_size
        record_path.write_text(json.dumps(record, indent=1) + "\n")
    return paths


def prime_hash_cache(paths: list[Path]) -> None:
    """Hash the inputs into ladle's sha256 cache (untimed), so every timed 'ladle' run finds them there."""
    try:
        from ladle.io.hashing import sha256_file
    except ImportError:  # a ladle without a hash cache: 'ladle' and 'cold' measure the same thing
        return
    for p in paths:
        sha256_file(p)


def warm(paths: list[Path]) -> None:
    """Read every input once so each timed run starts from the same, hot page cache."""
    buf = bytearray(CHUNK)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


# --------------------------------------------------------------------------- the measured work (child side)


def run_ladle(inputs: list[str], out: str) -> None:
    import ladle

    ladle.cook("uniform", inputs, out=out, force=True)


def run_io(inputs: list[str], out: str) -> None:
    """The I/O bound: read each input byte once, write (and fsync) one output-sized file."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    for p in inputs:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    remaining = os.path.getsize(inputs[0])  # the soup holds the same tensors as one ingredient
    with open(out, "wb", buffering=0) as f:
        while remaining:
            remaining -= f.write(view[: min(remaining, CHUNK)])
        os.fsync(f.fileno())


def run_naive(inputs: list[str], out: str) -> None:
    """What a script does without ladle (timm's avg_checkpoints, float32 accumulator): load_file each
    ingredient fully, add it, divide, cast back, save_file (then fsync, to pay what ladle pays)."""
    import torch
    from safetensors.torch import load_file, save_file

    acc: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for i, path in enumerate(inputs):
        state = load_file(path)
        for k, v in state.items():
            if not v.is_floating_point():
                acc.setdefault(k, v)  # integer buffers are kept from the first ingredient
            elif i == 0:
                dtypes[k] = v.dtype
                acc[k] = v.to(torch.float32, copy=True)
            else:
                acc[k].add_(v)
        del state
    result = {k: (v.div_(len(inputs)).to(dtypes[k]) if k in dtypes else v) for k, v in acc.items()}
    del acc
    save_file(result, out, metadata={"format": "pt"})
    fd = os.open(out, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _status_mib(field: str) -> float | None:
    """A memory figure from /proc/self/status (Linux), in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> float:
    """Current RSS, after resetting the peak to it (Linux). ru_maxrss cannot be used as is: a child
    started by fork/vfork + exec inherits its parent's high-water mark, so the parent's peak leaks in."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    rss = _status_mib("VmRSS")
    return rss if rss is not None else _ru_maxrss_mib()


def peak_rss_mib() -> float:
    hwm = _status_mib("VmHWM")
    return hwm if hwm is not None else _ru_maxrss_mib()


def _ru_maxrss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MiB if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def busy_cpu_s() -> float:
    """CPU-seconds the whole machine has spent busy since boot (Linux /proc/stat; 0 elsewhere)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_until_quiet(max_wait_s: float, threshold: float = 0.1) -> float:
    """Wait (at most max_wait_s) for a second in which other processes use < `threshold` of a core:
    on a shared machine, a neighbour's CPU load would otherwise decide the result. Returns the wait."""
    start = time.perf_counter()
    while time.perf_counter() - start < max_wait_s:
        before = busy_cpu_s()
        time.sleep(1.0)
        if busy_cpu_s() - before < threshold:
            break
    return time.perf_counter() - start


def child(mode: str, inputs: list[str], out: str) -> None:
    """Run one measurement and print it as JSON on the last line of stdout."""
    import gc

    import torch  # noqa: F401  (every mode pays the same import, so idle RSS is comparable)

    try:
        import ladle
    except ImportError:  # not installed: use the checkout this script lives in
        sys.path.append(str(ROOT / "src"))
        import ladle
    import safetensors.torch  # noqa: F401

    if mode == "cold":
        os.environ["LADLE_HASH_CACHE"] = "0"  # hash every input byte, as for files never seen before
    work = {"ladle": run_ladle, "cold": run_ladle, "io": run_io, "naive": run_naive}[mode]
    gc.collect()
    idle = reset_peak_rss()
    busy0, cpu0, start = busy_cpu_s(), time.process_time(), time.perf_counter()
    work(inputs, out)
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    other = max(0.0, busy_cpu_s() - busy0 - cpu)  # CPU that other processes took while we ran
    peak = peak_rss_mib()
    print(json.dumps({"mode": mode, "wall_s": wall, "cpu_s": cpu, "other_cpu_s": other,
                      "peak_rss_mib": peak, "idle_rss_mib": idle,
                      "out_bytes": os.path.getsize(out), "ladle": ladle.__file__,
                      "torch_threads": torch.get_num_threads()}))


# --------------------------------------------------------------------------- the sweep (parent side)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measure(mode: str, inputs: list[Path], out: Path, max_wait_s: float) -> dict:
    for stale in out.parent.glob(out.name + "*"):
        stale.unlink()
    os.sync()  # previous outputs' writeback and discards finish before the clock starts
    waited = wait_until_quiet(max_wait_s)
    warm(inputs)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", mode, "--out", str(out),
           "--inputs", *map(str, inputs)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{mode} run failed ({proc.returncode}):\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["in_bytes"] = sum(p.stat().st_size for p in inputs)
    result["gbps"] = result["in_bytes"] / result["wall_s"] / 1e9
    result["rss_mib"] = result["peak_rss_mib"] - result["idle_rss_mib"]
    result["waited_s"] = waited
    return result


def summarise(runs: list[dict]) -> dict:
    """Median of each number over the repeats (plus the raw runs)."""
    keys = ("wall_s", "cpu_s", "gbps", "peak_rss_mib", "idle_rss_mib", "rss_mib")
    summary = {k: statistics.median(r[k] for r in runs) for k in keys}
    summary.update(in_bytes=runs[0]["in_bytes"], out_bytes=runs[0]["out_bytes"], runs=runs)
    return summary


def sweep(args) -> list[dict]:
    rows = []
    budget = args.wait_budget  # seconds of waiting for quiet (and retrying) left for the whole sweep
    scratch = args.workdir / f"soups-{os.getpid()}"  # private: two sweeps sharing a workdir must not collide
    scratch.mkdir(parents=True, exist_ok=True)
    for size in args.sizes_mb:
        for dtype in args.dtypes:
            paths = ensure_inputs(args.workdir, size, dtype, max(args.ns), args.seed)
            prime_hash_cache(paths)
            for n in args.ns:
                runs: dict[str, list[dict]] = {m: [] for m in MODES}
                for r in range(args.repeats):
                    for mode in MODES:
                        for _ in range(1 + args.retries):  # a run another process disturbed is run again
                            res = measure(mode, paths[:n], scratch / f"{mode}.safetensors",
                                          min(args.max_wait, budget))
                            budget = max(0.0, budget - res["waited_s"])
                            if not noisy_run(res) or budget <= 0:
                                break
                            log(f"  {mode} N={n}: other processes took {res['other_cpu_s']:.1f} CPU-s; running it again")
                        runs[mode].append(res)
                        noisy = f"  (others used {res['other_cpu_s']:.1f} CPU-s)" if noisy_run(res) else ""
                        log(f"{dtype:>8} {size} MiB N={n:<2} #{r + 1} {mode:<5} {res['wall_s']:7.2f} s "
                            f"{res['gbps']:6.2f} GB/s  +{res['rss_mib']:7.0f} MiB RSS{noisy}")
                rows.append({"size_mib": size, "dtype": dtype, "n": n, **{m: summarise(runs[m]) for m in MODES}})
    shutil.rmtree(scratch, ignore_errors=True)
    return rows


def noisy_run(res: dict) -> bool:
    """Other processes took more than a tenth of one core while this run was timed."""
    return res["other_cpu_s"] > 0.1 * res["wall_s"]


def evaluate(rows: list[dict]) -> list[tuple[str, bool, str]]:
    """The issue's targets, each with PASS/FAIL and the cells that fail it."""
    checks = []
    slow = [f"{r['dtype']} N={r['n']} ({r['ladle']['gbps'] / r['io']['gbps']:.2f}x)" for r in rows
            if r["ladle"]["gbps"] < MIN_IO_RATIO * r["io"]["gbps"]]
    checks.append((f"ladle throughput >= {MIN_IO_RATIO}x the I/O bound at every N", not slow, ", ".join(slow)))
    fat = [f"{r['dtype']} N={r['n']} (+{r['ladle']['rss_mib'] - r['ladle']['out_bytes'] / MiB:.0f} MiB)" for r in rows
           if r["ladle"]["rss_mib"] > r["ladle"]["out_bytes"] / MiB + RSS_SLACK_MIB]
    checks.append((f"ladle peak RSS <= output size + {RSS_SLACK_MIB} MiB at every N", not fat, ", ".join(fat)))
    spread = []
    for key in sorted({(r["size_mib"], r["dtype"]) for r in rows}):
        values = [r["ladle"]["rss_mib"] for r in rows if (r["size_mib"], r["dtype"]) == key]
        if max(values) - min(values) > RSS_FLAT_MIB:
            spread.append(f"{key[1]} {key[0]} MiB: {min(values):.0f}..{max(values):.0f} MiB")
    checks.append((f"ladle peak RSS flat in N (max - min <= {RSS_FLAT_MIB} MiB)", not spread, ", ".join(spread)))
    lost = [f"{r['dtype']} N={r['n']}" for r in rows if r["ladle"]["wall_s"] >= r["naive"]["wall_s"]]
    checks.append(("ladle faster than naive at every N", not lost, ", ".join(lost)))
    # The same two speed targets for a first soup of files never hashed before (no sha256 cache).
    slow = [f"{r['dtype']} N={r['n']} ({r['cold']['gbps'] / r['io']['gbps']:.2f}x)" for r in rows
            if r["cold"]["gbps"] < MIN_IO_RATIO * r["io"]["gbps"]]
    checks.append((f"hashing all inputs: throughput >= {MIN_IO_RATIO}x the I/O bound at every N", not slow, ", ".join(slow)))
    lost = [f"{r['dtype']} N={r['n']}" for r in rows if r["cold"]["wall_s"] >= r["naive"]["wall_s"]]
    checks.append(("hashing all inputs: faster than naive at every N", not lost, ", ".join(lost)))
    return checks


def markdown(rows: list[dict], checks, env: dict) -> str:
    head = ("| dtype | MiB/file | N | ladle s | ladle GB/s | ladle GB/s, hashing all | I/O-bound GB/s | naive GB/s "
            "| ladle / I/O | ladle vs naive | ladle RSS MiB | naive RSS MiB | RSS headroom MiB |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        lad, io, nai = r["ladle"], r["io"], r["naive"]
        lines.append(
            f"| {r['dtype']} | {r['size_mib']} | {r['n']} | {lad['wall_s']:.2f} | {lad['gbps']:.2f} "
            f"| {r['cold']['gbps']:.2f} | {io['gbps']:.2f} "
            f"| {nai['gbps']:.2f} | {lad['gbps'] / io['gbps']:.2f} | {nai['wall_s'] / lad['wall_s']:.2f}x "
            f"| {lad['rss_mib']:.0f} | {nai['rss_mib']:.0f} | {lad['rss_mib'] - lad['out_bytes'] / MiB:+.0f} |")
    notes = [
        "",
        "GB/s = input bytes (all N files, 10^9) / wall time. RSS = peak RSS of the child minus its RSS just before the "
        f"work (idle: python + torch, ~{env['idle_rss_mib']:.0f} MiB). Headroom = ladle RSS - output size. "
        f"Median of {env['repeats']} runs; page cache warmed before every run by reading each input once; "
        "every mode fsyncs its output. Naive = timm-style avg_checkpoints (load_file each, float32 sum, save_file). "
        "ladle = sha256 of the inputs from its cache (files seen before, as when souping a sweep's ingredients again); "
        "'hashing all' = LADLE_HASH_CACHE=0, every input byte hashed during the soup.",
        "",
        f"Machine: {env['machine']}; torch {env['torch']} ({env['torch_threads']} threads), safetensors {env['safetensors']}; "
        f"sha256 {env['sha256_gbps_per_core']:.2f} GB/s per core.",
        "",
    ]
    if env["noisy_runs"]:
        notes += [f"Warning: in {env['noisy_runs']} of {env['runs']} runs other processes took more than a tenth of a "
                  "core even after retries; those timings are unreliable (see `other_cpu_s` in the JSON).", ""]
    notes += [f"- {'PASS' if ok else 'FAIL'}: {name}" + (f" — failing: {why}" if why else "") for name, ok, why in checks]
    return "\n".join(lines + notes) + "\n"


def environment(rows: list[dict], repeats: int) -> dict:
    import safetensors
    import torch

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    runs = [x for r in rows for m in MODES for x in r[m]["runs"]]
    sample = os.urandom(64 * MiB)
    start = time.perf_counter()
    hashlib.sha256(sample).digest()
    sha_gbps = len(sample) / (time.perf_counter() - start) / 1e9
    return {
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}, {os.cpu_count()} cores, {mem:.0f} GiB RAM",
        "python": platform.python_version(), "torch": torch.__version__, "safetensors": safetensors.__version__,
        "torch_threads": rows[0]["ladle"]["runs"][0]["torch_threads"], "ladle": rows[0]["ladle"]["runs"][0]["ladle"],
        "idle_rss_mib": statistics.median(r["ladle"]["idle_rss_mib"] for r in rows), "repeats": repeats,
        "runs": len(runs), "noisy_runs": sum(noisy_run(x) for x in runs), "sha256_gbps_per_core": sha_gbps,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", type=Path, default=ROOT / "bench" / "results" / "data",
                   help="where generated ingredients (reused) and scratch soups go; use a real disk, not tmpfs")
    p.add_argument("--report", type=Path, default=ROOT / "bench" / "results" / "mix.md",
                   help="markdown report; the JSON goes next to it (.json)")
    p.add_argument("--sizes-mb", type=int, nargs="+", default=[256], help="MiB per ingredient file (default 256)")
    p.add_argument("--ns", type=int, nargs="+", default=[2, 4, 8, 16], help="numbers of ingredients")
    p.add_argument("--quick", action="store_true", help="N = 2, 4 only")
    p.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES))
    p.add_argument("--repeats", type=int, default=3, help="runs per measurement; the median is reported")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-wait", type=float, default=30.0,
                   help="seconds to wait, before each run, for other processes to leave the CPU idle")
    p.add_argument("--retries", type=int, default=2, help="times to re-run a run that other processes disturbed")
    p.add_argument("--wait-budget", type=float, default=300.0,
                   help="total seconds the sweep may spend waiting for quiet; then it measures (and flags) regardless")
    p.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)  # child: one measurement
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--inputs", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        return child(args.one, args.inputs, args.out)
    if args.quick:
        args.ns = [2, 4]
    args.workdir = args.workdir.resolve()
    os.environ.setdefault("LADLE_CACHE_DIR", str(args.workdir / "hash-cache"))  # the children's sha256 cache

    started = time.perf_counter()
    rows = sweep(args)
    checks = evaluate(rows)
    env = environment(rows, args.repeats)
    report = markdown(rows, checks, env)
    print(report)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(report)
    args.report.with_suffix(".json").write_text(json.dumps(
        {"environment": env, "rows": rows, "targets": [{"target": n, "pass": ok, "failing": why} for n, ok, why in checks]},
        indent=1) + "\n")
    log(f"wrote {args.report} and {args.report.with_suffix('.json')} ({(time.perf_counter() - started) / 60:.1f} min)")


if __name__ == "__main__":
    main()
