"""Tasting at real scale: `ladle taste` and `ladle cook greedy` of a timm ResNet-18 on a JPEG ImageFolder, whole processes.

    .venv/bin/python bench/data.py [--workers 2] [--repeats 1] [--quick] [--work bench/work-data]

Why: a new user's `ladle taste` of one ResNet-18 on 1,000 JPEGs took 46 s and 6.8 GB against 30 s and 1.3 GB for a
hand-written torchvision loop. This measures both in one run, on the same generated folders (bench/make_imagefolder.py:
256 px photos, 10 classes), each command a fresh process with nothing cached:

1. the baseline, bench/data_loop.py: torchvision ImageFolder + timm's eval transform + DataLoader(--workers) + model;
2. `ladle taste CKPT --model timm:resnet18 --num-classes 10 --data DIR:test --image-size 224 [--workers W]` on the
   same 1,000 val images (val/ is the test split): targets wall ≤ 1.1× the loop, peak memory ≤ the loop's + 256 MiB;
3. the same taste with 8,000 val images, and with a train/ of 12,000 (val 1,000): peak memory flat, ≤ 64 MiB apart;
4. `ladle cook greedy` of 4 ingredients (the checkpoint + 3 noisy copies) on DIR:heldout, with `--cache-data` and
   with `--no-cache-data` (when ladle has these flags).

Memory is sampled every 0.2 s over the whole process tree (the command and every descendant, e.g. DataLoader
workers, found through /proc/PID/task/*/children): the peak of the summed PSS is the headline figure (shared pages
counted once), the peak of the summed RSS is beside it, and so is ru_maxrss (from /usr/bin/time -f %M, else wait4),
which is the largest single process, not a sum. Each run gets a fresh LADLE_CACHE_DIR and LADLE_LOGIT_CACHE=0, so
nothing is reused between runs. A run whose tree exceeds --rss-cap-gib is killed (the machine is shared) and
reported as "≥". This parent never imports torch; the checkpoints are written by a child.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_imagefolder import make_imagefolder  # noqa: E402
from proctree import descendants  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
KiB = 1 << 10
N_INGREDIENTS = 4
WALL_RATIO_MAX = 1.1  # ladle taste wall / the loop's
RSS_ABOVE_LOOP_MIB = 256  # ladle taste peak − the loop's
RSS_FLAT_MIB = 64  # peak(8k val) − peak(1k val); peak(12k train) − peak(3k train)


# ---------------------------------------------------------------- memory of a process tree



def _memory(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in bytes, from smaps_rollup; (0, 0) if it is gone."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * KiB
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * KiB
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return rss, pss


class TreeSampler(threading.Thread):
    """Every 0.2 s, sum RSS and PSS over the tree under pid; keep the peaks; kill the tree above `cap` bytes."""

    def __init__(self, pid: int, cap: int):
        super().__init__(daemon=True)
        self.pid, self.cap = pid, cap
        self.peak_rss = self.peak_pss = self.most_processes = 0
        self.killed = False
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            pids = descendants(self.pid)
            mem = [_memory(p) for p in pids]
            rss, pss = sum(m[0] for m in mem), sum(m[1] for m in mem)
            self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
            self.most_processes = max(self.most_processes, sum(1 for m in mem if m[0]))
            if pss > self.cap and not self.killed:
                self.killed = True
                try:
                    os.killpg(self.pid, signal.SIGKILL)  # the child leads its own session: its group is its tree
                except ProcessLookupError:
                    pass
            self.done.wait(0.2)


def run(cmd: list[str], log: Path, cap: int, env: dict[str, str]) -> dict:
    """Run cmd as a whole process (output to log); wall time, tree memory peaks, ru_maxrss, exit code."""
    timer = shutil.which("time", path="/usr/bin")
    maxrss_file = log.with_suffix(".maxrss")
    full = [timer, "-f", "%M", "-o", str(maxrss_file), *cmd] if timer else cmd
    with open(log, "w") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        start = time.perf_counter()
        child = subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        sampler = TreeSampler(child.pid, cap)
        sampler.start()
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        sampler.done.set()
        sampler.join()
    rc = os.waitstatus_to_exitcode(status)
    maxrss = usage.ru_maxrss * KiB  # wait4: the largest process of the tree (here /usr/bin/time's, if used)
    if timer:
        try:
            maxrss = int(maxrss_file.read_text().split()[-1]) * KiB
        except (OSError, ValueError, IndexError):
            pass
    return {"wall": wall, "pss": sampler.peak_pss, "rss": sampler.peak_rss, "maxrss": maxrss, "rc": rc,
            "killed": sampler.killed, "processes": sampler.most_processes, "log": str(log)}


# ---------------------------------------------------------------- data and checkpoints

def make_checkpoints(folder: Path, n: int) -> None:
    """Child mode: resnet18 (10 classes, seed 0) and n−1 copies with 1e-3 × std Gaussian noise on every float tensor."""
    import timm
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    state = timm.create_model("resnet18", num_classes=10).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "ckpt-0.safetensors"))
    for i in range(1, n):
        g = torch.Generator().manual_seed(i)
        noisy = {k: (v + 1e-3 * v.float().std().nan_to_num(0.0) * torch.randn(v.shape, generator=g)).to(v.dtype)
                 if v.is_floating_point() and v.numel() > 1 else v.clone() for k, v in state.items()}
        save_file({k: v.contiguous() for k, v in noisy.items()}, str(folder / f"ckpt-{i}.safetensors"))


def checkpoints(work: Path) -> list[Path]:
    paths = [work / "ckpts" / f"ckpt-{i}.safetensors" for i in range(N_INGREDIENTS)]
    if not all(p.is_file() for p in paths):
        subprocess.run([sys.executable, __file__, "--make-checkpoints", str(work / "ckpts")], check=True)
    return paths


def has_flag(help_text: str, flag: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text) is not None


# ---------------------------------------------------------------- the report

def mib(x: float) -> str:
    return f"{x / MiB:,.0f}"


def summarize(results: list[dict]) -> dict:
    """Medians over repeats; a failed or killed repeat makes the figure a lower bound or a failure."""
    ok = [r for r in results if r["rc"] == 0 and not r["killed"]]
    killed = any(r["killed"] for r in results)
    use = ok or results
    med = {k: statistics.median(r[k] for r in use) for k in ("wall", "pss", "rss", "maxrss")}
    med.update(killed=killed, failed=not ok and not killed, rc=[r["rc"] for r in results], n=len(results),
               processes=max(r["processes"] for r in results), log=results[-1]["log"])
    if killed:
        med.update(pss=max(r["pss"] for r in results), rss=max(r["rss"] for r in results))
    return med


def cell(s: dict, key: str) -> str:
    if s["failed"]:
        return "failed"
    value = f"{s[key]:.1f}" if key == "wall" else mib(s[key])
    return ("≥ " + value) if s["killed"] else value


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the loop and of ladle (default 2)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of every command, interleaved; medians (default 1)")
    parser.add_argument("--quick", action="store_true", help="small folders (300 train / 100 val; 800 and 1,200)")
    parser.add_argument("--work", default=str(ROOT / "bench" / "work-data"), help="folders, checkpoints, logs")
    parser.add_argument("--rss-cap-gib", type=float, default=None,
                        help="kill a run whose tree PSS exceeds this (default: min(12, half the available memory))")
    parser.add_argument("--make-checkpoints", help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    if args.make_checkpoints:
        make_checkpoints(Path(args.make_checkpoints), N_INGREDIENTS)
        return

    t0, load0 = time.perf_counter(), f"{os.getloadavg()[0]:.1f}"
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    scale = 10 if args.quick else 1
    train, val, big_val, big_train = 3000 // scale, 1000 // scale, 8000 // scale, 12000 // scale
    folders = {"main": (train, val), "big-val": (train, big_val), "big-train": (big_train, val)}
    paths = {}
    for name, (n_train, n_val) in folders.items():
        start = time.perf_counter()
        paths[name] = make_imagefolder(work / f"imagefolder-t{n_train}-v{n_val}", n_train, n_val, seed=0)
        print(f"folder {paths[name]}: {n_train} train + {n_val} val ({time.perf_counter() - start:.1f} s)", flush=True)
    ckpts = checkpoints(work)
    with open("/proc/meminfo") as f:
        available = next(int(line.split()[1]) * KiB for line in f if line.startswith("MemAvailable:"))
    cap = int((args.rss_cap_gib if args.rss_cap_gib else min(12.0, available / 2 / (1 << 30))) * (1 << 30))

    bindir = Path(sys.executable).parent
    ladle = str(bindir / "ladle") if (bindir / "ladle").exists() else shutil.which("ladle")
    taste_help = subprocess.run([ladle, "taste", "--help"], capture_output=True, text=True).stdout
    greedy_help = subprocess.run([ladle, "cook", "greedy", "--help"], capture_output=True, text=True).stdout
    notes = []
    common = ["--model", "timm:resnet18", "--num-classes", "10", "--image-size", "224"]
    taste_extra = ["--no-uniform"] if has_flag(taste_help, "--no-uniform") else []
    if has_flag(taste_help, "--workers"):
        taste_extra += ["--workers", str(args.workers)]
    else:
        notes.append(f"`ladle taste` has no --workers yet: run without it (the loop uses {args.workers} workers)")
    greedy_extra = ["--workers", str(args.workers)] if has_flag(greedy_help, "--workers") else []
    cache_flags = has_flag(greedy_help, "--cache-data") and has_flag(greedy_help, "--no-cache-data")
    if not cache_flags:
        notes.append("`ladle cook greedy` has no --cache-data / --no-cache-data yet: run once as it is, "
                     "the cached vs uncached comparison is not possible yet")
    for note in notes:
        print("warning:", note, flush=True)

    main_dir = paths["main"]
    soup = work / "tmp" / "soup.safetensors"
    commands: dict[str, tuple[str, list[str]]] = {
        "loop": (f"hand-written loop, val {val}", [sys.executable, str(ROOT / "bench" / "data_loop.py"),
                                                   str(main_dir / "val"), str(ckpts[0]), "--workers", str(args.workers)]),
        "taste": (f"ladle taste, val {val} (train {train})",
                  [ladle, "taste", str(ckpts[0]), *common, "--data", f"{main_dir}:test", *taste_extra]),
        "taste-big-val": (f"ladle taste, val {big_val} (train {train})",
                          [ladle, "taste", str(ckpts[0]), *common, "--data", f"{paths['big-val']}:test", *taste_extra]),
        "taste-big-train": (f"ladle taste, val {val} (train {big_train})",
                            [ladle, "taste", str(ckpts[0]), *common, "--data", f"{paths['big-train']}:test", *taste_extra]),
    }
    greedy = [ladle, "cook", "greedy", *map(str, ckpts), *common, "--data", f"{main_dir}:heldout", *greedy_extra,
              "-o", str(soup), "--force"]
    n_heldout = max(1, round(0.1 * train))
    if cache_flags:
        commands["greedy-cache"] = (f"ladle cook greedy ×{N_INGREDIENTS}, heldout {n_heldout}, --cache-data",
                                    greedy + ["--cache-data"])
        commands["greedy-nocache"] = (f"ladle cook greedy ×{N_INGREDIENTS}, heldout {n_heldout}, --no-cache-data",
                                      greedy + ["--no-cache-data"])
    else:
        commands["greedy"] = (f"ladle cook greedy ×{N_INGREDIENTS}, heldout {n_heldout} (as it is)", greedy)

    logs = work / ("logs-quick" if args.quick else "logs")
    logs.mkdir(exist_ok=True)
    soup.parent.mkdir(exist_ok=True)
    results: dict[str, list[dict]] = {k: [] for k in commands}
    for r in range(args.repeats):
        order = list(commands) if r % 2 == 0 else list(reversed(commands))  # alternate, so drift hits both sides
        for key in order:
            cache_dir = Path(tempfile.mkdtemp(prefix="cache-", dir=soup.parent))
            env = {**os.environ, "LADLE_CACHE_DIR": str(cache_dir), "LADLE_LOGIT_CACHE": "0"}
            res = run(commands[key][1], logs / f"{key}-{r}.log", cap, env)
            shutil.rmtree(cache_dir, ignore_errors=True)
            results[key].append(res)
            state = "killed at the cap" if res["killed"] else ("ok" if res["rc"] == 0 else f"FAILED rc {res['rc']}")
            print(f"[{r + 1}/{args.repeats}] {key}: {res['wall']:.1f} s, tree PSS {mib(res['pss'])} MiB, "
                  f"tree RSS {mib(res['rss'])} MiB, ru_maxrss {mib(res['maxrss'])} MiB, {state}", flush=True)
            if res["rc"] != 0 and not res["killed"]:
                tail = Path(res["log"]).read_text().strip().splitlines()[-6:]
                print("    " + "\n    ".join(tail), flush=True)
    s = {k: summarize(v) for k, v in results.items()}

    # ---- the report
    versions = ", ".join(f"{p} {metadata.version(p)}" for p in ("torch", "torchvision", "timm", "ladle"))
    lines = [f"### bench/data.py{' --quick' if args.quick else ''}: timm resnet18 at 224 px, {args.workers} workers, "
             f"median of {args.repeats} run(s) per command",
             "",
             f"{os.cpu_count()} cores; {versions}. Folders: 256 px JPEG photos, 10 classes, under `{work}`. "
             "Every command a fresh process, fresh `LADLE_CACHE_DIR`, `LADLE_LOGIT_CACHE=0`. "
             "Memory: peak of the sum over the process tree (command + descendants such as DataLoader workers), "
             "sampled every 0.2 s from /proc; PSS counts shared pages once (the headline), RSS counts them in every "
             "process; ru_maxrss is the largest single process (/usr/bin/time -f %M).",
             "",
             "| run | wall s | tree PSS MiB | tree RSS MiB | ru_maxrss MiB | processes |",
             "|---|---:|---:|---:|---:|---:|"]
    for key, (label, _) in commands.items():
        x = s[key]
        lines.append(f"| {label} | {cell(x, 'wall')} | {cell(x, 'pss')} | {cell(x, 'rss')} | {cell(x, 'maxrss')} "
                     f"| {x['processes']} |")

    def usable(*keys: str) -> bool:
        return all(k in s and not s[k]["failed"] for k in keys)

    def bound(*keys: str) -> str:
        return " (lower bound: a run was killed at the cap)" if any(s[k]["killed"] for k in keys) else ""

    targets = ["", "| target | measured | limit | result |", "|---|---:|---:|---|"]
    if usable("loop", "taste"):
        ratio = s["taste"]["wall"] / s["loop"]["wall"]
        targets.append(f"| ladle taste wall / loop wall | {ratio:.2f}×{bound('taste')} | ≤ {WALL_RATIO_MAX}× "
                       f"| {verdict(ratio <= WALL_RATIO_MAX and not s['taste']['killed'])} |")
        for m, name in (("pss", "PSS"), ("rss", "RSS")):
            d = (s["taste"][m] - s["loop"][m]) / MiB
            targets.append(f"| ladle taste − loop, tree {name} | {d:+,.0f} MiB{bound('taste')} | ≤ +{RSS_ABOVE_LOOP_MIB} MiB "
                           f"| {verdict(d <= RSS_ABOVE_LOOP_MIB and not s['taste']['killed'])} |")
    for big, what in (("taste-big-val", f"val {big_val} − val {val}"), ("taste-big-train", f"train {big_train} − train {train}")):
        if usable("taste", big):
            d = (s[big]["pss"] - s["taste"]["pss"]) / MiB
            flat = abs(d) <= RSS_FLAT_MIB and not s[big]["killed"] and not s["taste"]["killed"]
            targets.append(f"| ladle taste flat: {what}, tree PSS | {d:+,.0f} MiB{bound('taste', big)} "
                           f"| ≤ {RSS_FLAT_MIB} MiB apart | {verdict(flat)} |")
    if usable("greedy-cache", "greedy-nocache"):
        c, n = s["greedy-cache"], s["greedy-nocache"]
        targets.append(f"| cook greedy wall, cached / uncached | {c['wall'] / n['wall']:.2f}× | (information) | |")
        targets.append(f"| cook greedy tree PSS, cached − uncached | {(c['pss'] - n['pss']) / MiB:+,.0f} MiB | (information) | |")
    lines += targets
    failed = [k for k in commands if s[k]["failed"]]
    lines += [""] + [f"- note: {n}" for n in notes]
    lines += [f"- {k} failed (exit {s[k]['rc']}); see {s[k]['log']}" for k in failed]
    if any(s[k]["killed"] for k in commands):
        lines.append(f"- runs marked ≥ were killed when their tree PSS passed the cap of {cap / (1 << 30):.1f} GiB")
    lines.append(f"- whole benchmark: {(time.perf_counter() - t0) / 60:.1f} min (folders and checkpoints included); "
                 f"load average at the start {load0}, at the end {os.getloadavg()[0]:.1f} (1 min)")
    report = "\n".join(lines)
    print("\n" + report)
    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(exist_ok=True)
    name = "data-quick.md" if args.quick else "data.md"
    (results_dir / name).write_text(report + "\n")
    (results_dir / name.replace(".md", ".json")).write_text(json.dumps({"summary": s, "runs": results}, indent=1))
    print(f"\nwritten to {results_dir / name}")


if __name__ == "__main__":
    main()
