"""Benchmark `ladle cook uniform` against the I/O bound, a naive load_file-and-average script and mergekit.

    .venv/bin/python bench/mix.py                 # sweep: N = 2, 4, 8, 16; float32 and bf16; ~256 MiB files
    .venv/bin/python bench/mix.py --quick         # N = 2, 4 only
    .venv/bin/python bench/mix.py --sizes-mb 64   # smaller ingredients
    .venv/bin/python bench/mix.py --llama         # whole processes on 4 Llama-style 1.08 GB checkpoints, + mergekit
    .venv/bin/python bench/mix.py --llama --llama-size-mb 512   # the same on 4 x 512 MiB (64: a smoke test)

Why it is built this way:
- Every measurement runs in a fresh child process, so peak RSS belongs to that run alone. Two kinds:
  * in-process (`--one MODE`): the child times only the work, not the interpreter start or `import torch`.
    Peak RSS is VmHWM, reset just before the work (`ru_maxrss` is not usable there: an exec'd child
    inherits its parent's peak), minus the RSS at that moment ("idle": python + torch + ladle imported).
  * whole process: a command is timed from exec to exit (interpreter start + imports + work) under GNU
    /usr/bin/time, whose own small fork execs the command, so its %M (ru_maxrss) is the command's own peak.
    ladle's whole-process peak is also reported above a "bare process" that imports what `ladle cook`
    imports and does nothing else (mode `imports`).
- The page cache is warmed the same way before every timed run of every mode: the parent reads each
  input file once. Outputs are deleted and `sync` is called before each run, and every mode fsyncs
  its output (as ladle does; mergekit does not, so the parent fsyncs its files, timed), so all modes
  pay the same write cost.
- ladle is timed twice in-process: 'ladle' finds the inputs' sha256 in its cache (primed, untimed, in a
  private cache under --workdir), as when souping files seen before; 'cold' (LADLE_HASH_CACHE=0) hashes every
  input byte, as for a first soup of new files. sha256 runs at ~1.5-1.8 GB/s per core, below the
  page-cache read rate, so 'cold' cannot reach the I/O bound on a few cores. The whole-process `ladle cook`
  uses the same primed cache (it still hashes its output); `cook --no-hash` hashes nothing.
- --llama reports the I/O bound of the run itself: `python -c pass` + `cat` of the inputs + `dd` of one soup-sized
  file with conv=fsync (medians of the same run), and every whole-process mode's median wall as a ratio to it and
  to `ladle cook`'s, beside the targets: cook <= 1.3x the bound (hashing on), cook >= 4x faster than mergekit,
  >= 3x faster than the model-soups loop, `ladle check` of the same files <= 1.0x the cook.
- Before each run it waits (up to --max-wait, --wait-budget in all) for the machine to be quiet, and
  each run records the CPU time other processes took meanwhile; a disturbed run is repeated
  (--retries), then flagged.
- Modes are interleaved (ladle, cold, io, naive, python, imports, ...) and the median of `--repeats` runs is
  kept, after `--warmup` rounds that are run and discarded (default: 1 with --llama, 0 for the sweep).
- Ingredients are generated once with a fixed seed and reused while their recorded spec and size match.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "ladle-bench"  # outside the repository: several GB
MODES = ("ladle", "cold", "io", "naive")  # in-process; cold: ladle with no sha256 cache (a first soup of new files)
WHOLE_MODES = ("python", "imports", "cat-dd", "cook")  # whole processes, exec to exit, beside every sweep row
LLAMA_MODES = ("python", "imports", "cat-dd", "cook", "cook-nohash", "check", "soups-loop", "mergekit", "ladle", "io")
NO_INPUTS = ("python", "imports")  # read no ingredient
SOUPS = ("cook", "cook-nohash", "soups-loop", "mergekit", "ladle")  # modes whose output is checked (--llama)
DTYPES = ("float32", "bfloat16")
LAYOUT_VERSION = 1
MiB = 1 << 20
CHUNK = 8 * MiB
TIME = "/usr/bin/time"  # GNU time: %M is the command's own ru_maxrss

# Targets from the issues (#11; #22 measures (a) at 512 MiB too and adds `ladle check`).
MIN_IO_RATIO = {"float32": 0.9, "bfloat16": 0.8}  # (b) in-process ladle throughput / I/O-bound throughput, every N
RSS_ABOVE_BARE_MIB = 128  # (c) ladle peak RSS above the bare process (what `ladle cook` imports, nothing else)
RSS_FLAT_MIB = 64  # (c) "flat in N": max - min of that over N
MAX_WHOLE_RATIO = 1.3  # (a) whole `ladle cook` of 4 x 1.08 GB (#22: and 4 x 512 MiB) / (cat-and-dd bound + bare python)
MIN_VS_MERGEKIT = 4.0  # (a) mergekit linear wall time / ladle cook wall time
MIN_VS_SOUPS_LOOP = 3.0  # (a) model-soups loop wall time / ladle cook wall time
MAX_CHECK_VS_COOK = 1.0  # (#22) whole `ladle check` of the same files / whole `ladle cook` (hashing on)
MAX_ABS_ERR = 1e-5  # every soup must equal the mean of its inputs (float32, checked on a few tensors)

# The bare process: the modules `ladle cook` imports and nothing else (the CLI's parser, which imports every
# command's module, the cook and the text report; the same sys.modules as a real `ladle cook`, checked by hand).
IMPORTS = "from ladle.cli.main import build_parser; build_parser(); import ladle.soup.cook, ladle.results.text"

# The I/O bound as a shell would measure it: read every input once, write one soup-sized file and fsync it.
CAT_DD = ('out=$1; bytes=$2; shift 2; cat "$@" > /dev/null && '
          'dd if=/dev/zero of="$out" bs=8M count="$bytes" iflag=count_bytes conv=fsync status=none')

# The model-soups repository's uniform soup (main.py: `v * (1./NUM_MODELS) + uniform_soup[k]`), with
# safetensors' load_file/save_file instead of torch.load/save, then an fsync as ladle does.
SOUPS_LOOP = """\
import os, sys
from safetensors.torch import load_file, save_file
out, paths = sys.argv[1], sys.argv[2:]
soup = None
for path in paths:
    state = load_file(path)
    if soup is None:
        soup = {k: v * (1.0 / len(paths)) for k, v in state.items()}
    else:
        soup = {k: v * (1.0 / len(paths)) + soup[k] for k, v in state.items()}
save_file(soup, out, metadata={"format": "pt"})
fd = os.open(out, os.O_RDONLY)
os.fsync(fd)
os.close(fd)
"""

# --llama: Llama-style float32 models, chosen by --llama-size-mb (the nominal size of one checkpoint). The MLP width
# follows Llama's own rule (8/3 x hidden, rounded up to a multiple of 256); no grouped-query attention; untied
# embeddings (embed_tokens and lm_head).
LLAMA_MODELS = {
    # 271,090,688 parameters, 1.084 GB per file: embeddings 2 x 32.8 M; 16 layers of 12.85 M (attention 4.19 M, MLP 8.65 M)
    1080: ("llama-271m-fp32", {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 16,
                               "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 32000}),
    # 134,105,856 parameters, 536 MB (511.6 MiB) per file: embeddings 2 x 24.6 M; 12 layers of 7.08 M
    512: ("llama-134m-fp32", {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 12,
                              "num_attention_heads": 12, "num_key_value_heads": 12, "vocab_size": 32000}),
    # 16,717,056 parameters, 66.9 MB (63.8 MiB) per file, for smoke tests: embeddings 2 x 4.1 M; 10 layers of 0.85 M
    64: ("llama-17m-fp32", {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 10,
                            "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 16000}),
}
LLAMA_COMMON = {"max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
LLAMA_COUNT = 4
MERGEKIT_VENV_GB = 6.0  # free disk wanted before installing mergekit (torch with its CUDA wheels is ~4.5 GB)


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


def llama_config(size_mb: int) -> tuple[str, dict]:
    """The name and the LlamaConfig fields of the --llama-size-mb model."""
    name, shape = LLAMA_MODELS[size_mb]
    return name, {**shape, **LLAMA_COMMON}


def llama_check_keys(size_mb: int) -> tuple[str, ...]:
    """The tensors every soup is checked on: the final norm, the first layer's q_proj and the last layer's down_proj."""
    last = LLAMA_MODELS[size_mb][1]["num_hidden_layers"] - 1
    return ("model.norm.weight", "model.layers.0.self_attn.q_proj.weight", f"model.layers.{last}.mlp.down_proj.weight")


def llama_shapes(size_mb: int):
    """The LlamaConfig and the (key, shape) list of LlamaForCausalLM's state dict, built on the meta device."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**llama_config(size_mb)[1], architectures=["LlamaForCausalLM"], dtype="float32")
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    return config, [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def ensure_llama(workdir: Path, seed: int, size_mb: int) -> tuple[list[Path] | None, str]:
    """LLAMA_COUNT checkpoints of the --llama-size-mb model in save_pretrained layout (a directory with
    model.safetensors and config.json), generated once. Returns the directories, or None and why they could not
    be made (not enough disk)."""
    import torch
    from safetensors.torch import save_file

    name, fields = llama_config(size_mb)
    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    record_path = folder / "inputs.json"
    spec = {"layout": LAYOUT_VERSION, "config": fields, "dtype": "float32", "seed": seed}
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    if record.get("spec") != spec:
        record = {"spec": spec, "sizes": {}}
    config, shapes = llama_shapes(size_mb)
    nbytes = 4 * sum(math.prod(s) for _, s in shapes)
    dirs = [folder / f"ckpt-{i}" for i in range(LLAMA_COUNT)]

    def ready(d: Path) -> bool:
        f = d / "model.safetensors"
        return (d / "config.json").is_file() and f.is_file() and record["sizes"].get(d.name) == f.stat().st_size

    missing = [d for d in dirs if not ready(d)]
    need = len(missing) * nbytes * 1.01 + 1.2 * nbytes + 256 * MiB  # inputs still to write + one soup at a time
    free = shutil.disk_usage(folder).free
    if free < need:
        return None, (f"not enough free disk in {folder}: {free / 1e9:.1f} GB free, {need / 1e9:.1f} GB needed "
                      f"({len(missing)} of {LLAMA_COUNT} inputs of {nbytes / 1e9:.2f} GB to write, plus one output)")
    for i, d in enumerate(dirs):
        if d not in missing:
            continue
        log(f"generating {d} ({nbytes / 1e9:.2f} GB) ...")
        d.mkdir(exist_ok=True)
        g = torch.Generator().manual_seed(seed * 1000 + 500 + i)
        tensors = {}
        for name, shape in shapes:
            t = torch.randn(shape, generator=g).mul_(0.02)
            if name.endswith("norm.weight"):
                t.add_(1.0)
            tensors[name] = t
        tmp = d / "model.safetensors.tmp"
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        del tensors
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, d / "model.safetensors")
        config.save_pretrained(d)
        record["sizes"][d.name] = (d / "model.safetensors").stat().st_size
        record_path.write_text(json.dumps(record, indent=1) + "\n")
    return dirs, ""


def ensure_mergekit(args) -> tuple[Path | None, str]:
    """mergekit-yaml from a side venv (--mergekit-venv), created and filled with `pip install mergekit` once.
    Returns its path, or None and why it is not there."""
    if args.no_mergekit:
        return None, "not run (--no-mergekit)"
    venv = args.mergekit_venv
    exe = venv / "bin" / "mergekit-yaml"
    if exe.exists():
        return exe, ""
    want = 2.0 if args.mergekit_pip else MERGEKIT_VENV_GB
    free = shutil.disk_usage(venv.parent).free / 1e9
    if free < want:
        return None, f"not installed: {free:.1f} GB free beside {venv}, {want:.0f} GB wanted for the side venv"
    log(f"installing mergekit into {venv} (once; --mergekit-venv reuses it) ...")
    base = getattr(sys, "_base_executable", "") or shutil.which("python3") or sys.executable
    deadline = time.monotonic() + args.mergekit_install_timeout
    try:
        subprocess.run([base, "-m", "venv", str(venv)], check=True, capture_output=True, text=True, timeout=120)
        proc = subprocess.run([str(venv / "bin" / "pip"), "install", "mergekit", *args.mergekit_pip],
                              capture_output=True, text=True, timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return None, f"not installed: pip install mergekit took more than {args.mergekit_install_timeout:.0f} s"
    except (OSError, subprocess.CalledProcessError) as e:
        return None, f"not installed: could not create the venv {venv} ({e})"
    if proc.returncode != 0 or not exe.exists():
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-2:])
        return None, f"not installed: pip install mergekit failed ({tail[:300]})"
    return exe, ""


def mergekit_versions(exe: Path) -> str:
    code = "import importlib.metadata as m; print('mergekit', m.version('mergekit') + ', torch', m.version('torch'))"
    proc = subprocess.run([str(exe.parent / "python"), "-c", code], capture_output=True, text=True)
    return proc.stdout.strip() or "unknown"


def write_mergekit_config(path: Path, models: list[Path]) -> Path:
    """mergekit's `linear` merge, equal weights (normalised: the mean), float32."""
    lines = ["merge_method: linear", "dtype: float32", "parameters:", "  normalize: true", "models:"]
    for m in models:
        lines += [f"  - model: {m}", "    parameters:", "      weight: 1.0"]
    path.write_text("\n".join(lines) + "\n")
    return path


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


def reference(files: list[Path], keys: tuple[str, ...]) -> dict:
    """The mean of a few tensors over the inputs (float64), to check every soup against."""
    import numpy as np
    from safetensors import safe_open

    total: dict = {}
    for f in files:
        with safe_open(str(f), framework="np") as s:
            for k in keys:
                total[k] = total.get(k, 0) + s.get_tensor(k).astype(np.float64)
    return {k: v / len(files) for k, v in total.items()}


def soup_error(out: Path, expected: dict) -> float:
    """Largest |soup - mean| over the checked tensors (inf if the soup lacks one)."""
    import numpy as np
    from safetensors import safe_open

    found = {}
    for f in [out] if out.is_file() else sorted(out.glob("*.safetensors")):
        with safe_open(str(f), framework="np") as s:
            found.update({k: s.get_tensor(k) for k in expected if k in s.keys()})
    if set(found) != set(expected):
        return math.inf
    return max(float(np.max(np.abs(found[k].astype(np.float64) - v))) for k, v in expected.items())


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
    importlib.import_module("safetensors.torch")  # every mode pays the same imports

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


# --------------------------------------------------------------------------- whole processes (parent side)


class WholeFailed(RuntimeError):
    pass


def ladle_command() -> list[str]:
    """The `ladle` console script beside this interpreter (else `python -m ladle.cli`)."""
    script = Path(sys.executable).with_name("ladle")
    return [str(script)] if script.exists() else [sys.executable, "-m", "ladle.cli"]


def whole_command(mode: str, inputs: list[Path], files: list[Path], out: Path, ctx: dict) -> tuple[list[str], dict | None]:
    """The command line a whole-process mode runs (and its environment, when not the parent's)."""
    if mode == "python":
        return [sys.executable, "-c", "pass"], None
    if mode == "imports":
        return [sys.executable, "-c", IMPORTS], None
    if mode == "cat-dd":
        return ["sh", "-c", CAT_DD, "cat-dd", str(out), str(files[0].stat().st_size), *map(str, files)], None
    if mode in ("cook", "cook-nohash"):
        flags = ["--no-hash"] if mode == "cook-nohash" else []
        return [*ladle_command(), "cook", "uniform", *map(str, inputs), "-o", str(out), *flags], None
    if mode == "check":  # the preflight of the same inputs; writes nothing
        return [*ladle_command(), "check", *map(str, inputs)], None
    if mode == "soups-loop":
        return [sys.executable, "-c", SOUPS_LOOP, str(out), *map(str, files)], None
    if mode == "mergekit":
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # local models only
        return [str(ctx["mergekit"]), str(ctx["mergekit_config"]), str(out), "--no-copy-tokenizer"], env
    raise ValueError(mode)


def fsync_tree(path: Path) -> None:
    """fsync every file under `path` (and the directory): what ladle's writer does before it returns."""
    targets = [path] if path.is_file() else [*sorted(p for p in path.rglob("*") if p.is_file()), path]
    for p in targets:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def run_whole(cmd: list[str], env: dict | None, out: Path, fsync_after: bool) -> dict:
    """Time a command from exec to exit under GNU time (+ an fsync of its output for tools that do not)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "time"
        busy0, start = busy_cpu_s(), time.perf_counter()
        proc = subprocess.run([TIME, "-f", "%e %U %S %M", "-o", str(report), *cmd],
                              capture_output=True, text=True, env=env)
        exited = time.perf_counter()
        if proc.returncode == 0 and fsync_after:
            fsync_tree(out)
        wall = time.perf_counter() - start
        busy = busy_cpu_s() - busy0
        fields = report.read_text().split() if report.exists() else []
    if proc.returncode != 0 or len(fields) < 4:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise WholeFailed(f"{Path(cmd[0]).name} exited with {proc.returncode}: {tail[-500:]}")
    e, u, s, m = fields[-4:]
    cpu = float(u) + float(s)
    return {"wall_s": wall, "process_s": exited - start, "fsync_s": wall - (exited - start), "time_e_s": float(e),
            "cpu_s": cpu, "other_cpu_s": max(0.0, busy - cpu), "peak_rss_mib": int(m) / 1024}


# --------------------------------------------------------------------------- the sweep (parent side)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def clear(out: Path) -> None:
    for stale in out.parent.glob(out.name + "*"):
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()


def output_bytes(out: Path) -> int:
    if out.is_file():
        return out.stat().st_size
    return sum(p.stat().st_size for p in out.glob("*.safetensors")) if out.is_dir() else 0


def run_child(mode: str, files: list[Path], out: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", mode, "--out", str(out),
           "--inputs", *map(str, files)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{mode} run failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(mode: str, inputs: list[Path], files: list[Path], out: Path, max_wait_s: float, ctx: dict) -> dict:
    """One run of one mode: same starting state (no old outputs, nothing dirty, hot inputs) for every mode.
    `inputs` are what ladle is given (files or checkpoint directories), `files` the bytes they hold."""
    clear(out)
    os.sync()  # previous outputs' writeback and discards finish before the clock starts
    waited = wait_until_quiet(max_wait_s)
    if mode not in NO_INPUTS:
        warm(files)
    if mode in MODES:
        result = run_child(mode, files, out)
    else:
        cmd, env = whole_command(mode, inputs, files, out, ctx)
        result = run_whole(cmd, env, out, fsync_after=mode == "mergekit")
    result["mode"] = mode
    result["in_bytes"] = 0 if mode in NO_INPUTS else sum(p.stat().st_size for p in files)
    result["gbps"] = result["in_bytes"] / result["wall_s"] / 1e9 if result["in_bytes"] else None
    if "idle_rss_mib" in result:
        result["rss_mib"] = result["peak_rss_mib"] - result["idle_rss_mib"]
    result["out_bytes"] = output_bytes(out)
    if ctx.get("expected") and mode in SOUPS:
        result["max_abs_err"] = soup_error(out, ctx["expected"])
    result["waited_s"] = waited
    clear(out)  # a 1 GB output left behind per mode would need several GB of disk
    return result


def timed(mode: str, inputs: list[Path], files: list[Path], out: Path, args, ctx: dict, label: str) -> dict:
    """measure(), again (up to --retries times) when other processes took CPU during the run."""
    for _ in range(1 + args.retries):
        res = measure(mode, inputs, files, out, min(args.max_wait, args.budget), ctx)
        args.budget = max(0.0, args.budget - res["waited_s"])  # seconds of waiting (and retrying) left
        if not noisy_run(res) or args.budget <= 0:
            break
        log(f"  {label} {mode}: other processes took {res['other_cpu_s']:.1f} CPU-s; running it again")
    noisy = f"  (others used {res['other_cpu_s']:.1f} CPU-s)" if noisy_run(res) else ""
    speed = f"{res['gbps']:6.2f} GB/s" if res["gbps"] else " " * 11
    rss = f"+{res['rss_mib']:6.0f} MiB above idle" if "rss_mib" in res else f"peak {res['peak_rss_mib']:6.0f} MiB"
    log(f"{label} {mode:<11} {res['wall_s']:7.2f} s {speed}  {rss}{noisy}")
    return res


def summarise(runs: list[dict]) -> dict:
    """Median of each number over the repeats (plus the raw runs)."""
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and k not in ("in_bytes", "out_bytes") and all(r.get(k) is not None for r in runs)]
    summary = {k: statistics.median(r[k] for r in runs) for k in keys}
    summary["gbps"] = summary.get("gbps")
    summary.update(in_bytes=runs[0]["in_bytes"], out_bytes=runs[0]["out_bytes"], runs=runs)
    return summary


def sweep(args) -> list[dict]:
    rows = []
    scratch = args.workdir / f"soups-{os.getpid()}"  # private: two sweeps sharing a workdir must not collide
    scratch.mkdir(parents=True, exist_ok=True)
    modes = MODES + WHOLE_MODES
    for size in args.sizes_mb:
        for dtype in args.dtypes:
            paths = ensure_inputs(args.workdir, size, dtype, max(args.ns), args.seed)
            prime_hash_cache(paths)
            for n in args.ns:
                runs: dict[str, list[dict]] = {m: [] for m in modes}
                for r in range(args.warmup + args.repeats):
                    tag = f"warm-up {r + 1}" if r < args.warmup else f"#{r - args.warmup + 1}"
                    for mode in modes:
                        res = timed(mode, paths[:n], paths[:n], scratch / f"{mode}.safetensors", args, {},
                                    f"{dtype:>8} {size} MiB N={n:<2} {tag}")
                        if r >= args.warmup:
                            runs[mode].append(res)
                rows.append({"size_mib": size, "dtype": dtype, "n": n, **{m: summarise(runs[m]) for m in modes}})
    shutil.rmtree(scratch, ignore_errors=True)
    return rows


def llama(args) -> dict:
    """Whole processes on LLAMA_COUNT Llama-style checkpoints: ladle cook (+ --no-hash), ladle check, the cat-and-dd
    bound, bare python, the bare-process baseline, the model-soups loop and mergekit's linear merge."""
    size = args.llama_size_mb
    dirs, why = ensure_llama(args.workdir, args.seed, size)
    if dirs is None:
        log(f"--llama skipped: {why}")
        return {"skipped": why}
    files = [d / "model.safetensors" for d in dirs]
    prime_hash_cache(files)
    mergekit, mergekit_note = ensure_mergekit(args)
    scratch = args.workdir / f"llama-soups-{os.getpid()}"
    scratch.mkdir(parents=True, exist_ok=True)
    ctx = {"expected": reference(files, llama_check_keys(size)), "mergekit": mergekit,
           "mergekit_config": write_mergekit_config(scratch / "mergekit.yml", dirs)}
    modes = [m for m in LLAMA_MODES if m != "mergekit" or mergekit]
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for r in range(args.warmup + args.repeats):
        tag = f"warm-up {r + 1}" if r < args.warmup else f"#{r - args.warmup + 1}"
        for mode in list(modes):
            out = scratch / ("mergekit-out" if mode == "mergekit" else f"{mode}.safetensors")
            try:
                res = timed(mode, dirs, files, out, args, ctx, f"llama N={LLAMA_COUNT} {tag}")
            except WholeFailed as e:
                clear(out)
                if mode != "mergekit":
                    sys.exit(f"{mode} failed: {e}")
                mergekit_note = f"failed: {e}"
                log(f"mergekit row dropped: {e}")
                modes.remove(mode)
                del runs[mode]
                continue
            if r >= args.warmup:
                runs[mode].append(res)
    shutil.rmtree(scratch, ignore_errors=True)
    _, shapes = llama_shapes(size)
    row = {"model": llama_config(size)[0], "size_mb": size, "config": llama_config(size)[1], "n": LLAMA_COUNT,
           "params": sum(math.prod(s) for _, s in shapes), "file_bytes": files[0].stat().st_size,
           "inputs": [str(d) for d in dirs],
           "mergekit_version": mergekit_versions(mergekit) if mergekit and "mergekit" in runs else None,
           "mergekit_note": mergekit_note, **{m: summarise(v) for m, v in runs.items()}}
    # The I/O bound of this run (medians of its own python and cat-dd runs), and every mode's ratios to it and to cook.
    row["bound_s"] = row["python"]["wall_s"] + row["cat-dd"]["wall_s"]
    for m in runs:
        row[m]["x_bound"] = whole_ratio(row, m)
        row[m]["x_cook"] = row[m]["wall_s"] / row["cook"]["wall_s"]
    return row


def noisy_run(res: dict) -> bool:
    """Other processes took more than a tenth of one core while this run was timed (and more than /proc/stat's
    granularity of a few 10 ms ticks, which alone would flag every run of `python -c pass`)."""
    return res["other_cpu_s"] > max(0.1 * res["wall_s"], 0.05)


# --------------------------------------------------------------------------- targets and reports


def above_bare(row: dict, mode: str) -> float:
    """Peak RSS of a whole-process ladle run above the bare process (imports only), both medians."""
    return row[mode]["peak_rss_mib"] - row["imports"]["peak_rss_mib"]


def whole_ratio(row: dict, mode: str = "cook") -> float:
    """Whole-process wall time / (cat-and-dd bound + bare python)."""
    return row[mode]["wall_s"] / (row["cat-dd"]["wall_s"] + row["python"]["wall_s"])


def llama_target(row: dict, mode: str) -> tuple[str, str, bool] | None:
    """The issue's target on a --llama mode's ratio, if it has one: (target, measured, met)."""
    if mode in ("cook", "cook-nohash"):
        ratio = whole_ratio(row, mode)
        return f"<= {MAX_WHOLE_RATIO}x bound", f"{ratio:.2f}x", ratio <= MAX_WHOLE_RATIO
    if mode == "check":
        ratio = row["check"]["wall_s"] / row["cook"]["wall_s"]
        return f"<= {MAX_CHECK_VS_COOK}x cook", f"{ratio:.2f}x", ratio <= MAX_CHECK_VS_COOK
    if mode in ("mergekit", "soups-loop"):
        want = MIN_VS_MERGEKIT if mode == "mergekit" else MIN_VS_SOUPS_LOOP
        speedup = row[mode]["wall_s"] / row["cook"]["wall_s"]
        return f"cook >= {want:.0f}x faster", f"{speedup:.2f}x", speedup >= want
    return None


def _failing(cells: list[str]) -> str:
    return "failing: " + ", ".join(cells) if cells else ""


def evaluate(rows: list[dict]) -> list[tuple[str, bool | None, str]]:
    """The sweep's targets, (b) and (c), each with PASS/FAIL and the cells that fail it."""
    checks = []
    ns = sorted({r["n"] for r in rows})
    unmeasured = sorted({2, 4, 8, 16} - set(ns))
    scope = f"N = {', '.join(map(str, ns))}" + (f"; N = {', '.join(map(str, unmeasured))} not measured" if unmeasured else "")
    for dtype in sorted({r["dtype"] for r in rows}, key=DTYPES.index):
        want = MIN_IO_RATIO[dtype]
        slow = [f"N={r['n']} ({r['ladle']['gbps'] / r['io']['gbps']:.2f}x)" for r in rows
                if r["dtype"] == dtype and r["ladle"]["gbps"] < want * r["io"]["gbps"]]
        checks.append((f"(b) in-process ladle throughput >= {want}x the I/O bound, {dtype}, every N ({scope})",
                       not slow, _failing(slow)))
    fat = [f"{r['dtype']} N={r['n']} (+{r['ladle']['rss_mib']:.0f} MiB)" for r in rows
           if r["ladle"]["rss_mib"] > RSS_ABOVE_BARE_MIB]
    checks.append((f"(c) in-process ladle peak RSS <= {RSS_ABOVE_BARE_MIB} MiB above idle (torch + ladle imported) "
                   "at every N", not fat, _failing(fat)))
    fat = [f"{r['dtype']} N={r['n']} (+{above_bare(r, 'cook'):.0f} MiB)" for r in rows
           if above_bare(r, "cook") > RSS_ABOVE_BARE_MIB]
    checks.append((f"(c) whole-process `ladle cook` peak RSS <= {RSS_ABOVE_BARE_MIB} MiB above the bare process "
                   "at every N", not fat, _failing(fat)))
    for what, value in (("in-process", lambda r: r["ladle"]["rss_mib"]), ("whole-process", lambda r: above_bare(r, "cook"))):
        spread = []
        for key in sorted({(r["size_mib"], r["dtype"]) for r in rows}):
            values = [value(r) for r in rows if (r["size_mib"], r["dtype"]) == key]
            if max(values) - min(values) > RSS_FLAT_MIB:
                spread.append(f"{key[1]} {key[0]} MiB: {min(values):.0f}..{max(values):.0f} MiB")
        checks.append((f"(c) {what} ladle peak RSS flat in N (max - min <= {RSS_FLAT_MIB} MiB)", not spread,
                       _failing(spread)))
    lost = [f"{r['dtype']} N={r['n']}" for r in rows if r["ladle"]["wall_s"] >= r["naive"]["wall_s"]]
    checks.append(("in-process ladle faster than naive at every N", not lost, _failing(lost)))
    # The throughput target for a first soup of files never hashed before (no sha256 cache).
    slow = [f"{r['dtype']} N={r['n']} ({r['cold']['gbps'] / r['io']['gbps']:.2f}x)" for r in rows
            if r["cold"]["gbps"] < MIN_IO_RATIO[r["dtype"]] * r["io"]["gbps"]]
    checks.append(("hashing all inputs: in-process throughput >= the (b) ratio of the I/O bound at every N", not slow,
                   _failing(slow)))
    lost = [f"{r['dtype']} N={r['n']}" for r in rows if r["cold"]["wall_s"] >= r["naive"]["wall_s"]]
    checks.append(("hashing all inputs: faster than naive at every N", not lost, _failing(lost)))
    checks.append(("(a) whole process, 4 x 1.08 GB: not measured by the sweep (run with --llama)", None, ""))
    return checks


def evaluate_llama(row: dict) -> list[tuple[str, bool | None, str]]:
    """Target (a), `ladle check` against the cook, and the Llama-size part of (c)."""
    size = f"{row['n']} x {row['file_bytes'] / 1e9:.2f} GB"
    checks = []
    for mode, label in (("cook", "(a) {}: whole process `ladle cook`"),
                        ("cook-nohash", "(a) {}: whole process `ladle cook --no-hash`"),
                        ("mergekit", "(a) {}: against mergekit linear,"),
                        ("soups-loop", "(a) {}: against the model-soups loop,"),
                        ("check", "(#22) {}: whole process `ladle check`")):
        if mode not in row:  # mergekit not installed, or it failed
            checks.append((f"(a) {size}: against mergekit linear, cook >= {MIN_VS_MERGEKIT:.0f}x faster", None,
                           f"mergekit {row['mergekit_note']}"))
            continue
        target, measured, ok = llama_target(row, mode)
        checks.append((f"{label.format(size)} {target}", ok, f"measured {measured}"))
    for mode, label in (("cook", "`ladle cook`"), ("cook-nohash", "`ladle cook --no-hash`")):
        extra = above_bare(row, mode)
        checks.append((f"(c) {label} peak RSS <= {RSS_ABOVE_BARE_MIB} MiB above the bare process, N = {row['n']}",
                       extra <= RSS_ABOVE_BARE_MIB, f"measured +{extra:.0f} MiB"))
    if "ladle" in row:  # the same targets measured in-process at this size (work only, RSS above idle)
        ratio = row["ladle"]["gbps"] / row["io"]["gbps"]
        checks.append((f"(b) at this size: in-process ladle throughput >= {MIN_IO_RATIO['float32']}x the I/O bound, "
                       f"float32, N = {row['n']}", ratio >= MIN_IO_RATIO["float32"], f"measured {ratio:.2f}x"))
        checks.append((f"(c) at this size: in-process ladle peak RSS <= {RSS_ABOVE_BARE_MIB} MiB above idle, "
                       f"N = {row['n']}", row["ladle"]["rss_mib"] <= RSS_ABOVE_BARE_MIB,
                       f"measured +{row['ladle']['rss_mib']:.0f} MiB"))
    wrong = [f"{m} ({row[m]['max_abs_err']:.1e})" for m in SOUPS if m in row
             and max(r["max_abs_err"] for r in row[m]["runs"]) > MAX_ABS_ERR]
    checks.append((f"every soup equals the mean of its inputs (max |error| <= {MAX_ABS_ERR:g} on {len(llama_check_keys(row['size_mb']))} "
                   "tensors)", not wrong, _failing(wrong)))
    return checks


def check_lines(checks) -> list[str]:
    return [f"- {'SKIP' if ok is None else 'PASS' if ok else 'FAIL'}: {name}" + (f" — {detail}" if detail else "")
            for name, ok, detail in checks]


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "—" if x is None else format(x, spec)


def markdown(rows: list[dict], checks, env: dict) -> str:
    head = ("| dtype | MiB/file | N | ladle s | ladle GB/s | ladle GB/s, hashing all | I/O-bound GB/s | naive GB/s "
            "| ladle / I/O | target | ladle vs naive | ladle RSS MiB | naive RSS MiB |")
    lines = ["In-process (only the work is timed; RSS above the child's idle RSS):", "", head,
             "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        lad, io, nai = r["ladle"], r["io"], r["naive"]
        lines.append(
            f"| {r['dtype']} | {r['size_mib']} | {r['n']} | {lad['wall_s']:.2f} | {lad['gbps']:.2f} "
            f"| {r['cold']['gbps']:.2f} | {io['gbps']:.2f} "
            f"| {nai['gbps']:.2f} | {lad['gbps'] / io['gbps']:.2f} | {MIN_IO_RATIO[r['dtype']]} "
            f"| {nai['wall_s'] / lad['wall_s']:.2f}x | {lad['rss_mib']:.0f} | {nai['rss_mib']:.0f} |")
    head = ("| dtype | MiB/file | N | `python -c pass` s | bare process s | cat-and-dd s | `ladle cook` s "
            "| cook / (cat-dd + python) | cook peak RSS MiB | bare process peak RSS MiB | cook above bare MiB |")
    lines += ["", "Whole process (exec to exit; peak RSS = the process's ru_maxrss):", "", head,
              "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        lines.append(
            f"| {r['dtype']} | {r['size_mib']} | {r['n']} | {r['python']['wall_s']:.3f} | {r['imports']['wall_s']:.2f} "
            f"| {r['cat-dd']['wall_s']:.2f} | {r['cook']['wall_s']:.2f} | {whole_ratio(r):.2f} "
            f"| {r['cook']['peak_rss_mib']:.0f} | {r['imports']['peak_rss_mib']:.0f} | {above_bare(r, 'cook'):+.0f} |")
    notes = [
        "",
        "GB/s = input bytes (all N files, 10^9) / wall time. In-process RSS = peak RSS of the child minus its RSS just "
        f"before the work (idle: python + torch + ladle, ~{env['idle_rss_mib']:.0f} MiB). Bare process = "
        f"`python -c '{IMPORTS}'` (what `ladle cook` imports, nothing else). cat-and-dd = `cat inputs > /dev/null` then "
        "`dd` of one soup-sized file with `conv=fsync`. "
        f"Median of {env['repeats']} runs ({env['warmup']} warm-up rounds discarded); page cache warmed before every "
        "run by reading each input once; every mode fsyncs its output. Naive = timm-style avg_checkpoints (load_file "
        "each, float32 sum, save_file). ladle = sha256 of the inputs from its cache (files seen before); "
        "'hashing all' = LADLE_HASH_CACHE=0, every input byte hashed during the soup.",
        "",
        f"Machine: {env['machine']}; torch {env['torch']} ({env['torch_threads']} threads), safetensors {env['safetensors']}; "
        f"sha256 {env['sha256_gbps_per_core']:.2f} GB/s per core.",
        "",
    ]
    return report_text(lines, notes, checks, env)


def report_text(lines: list[str], notes: list[str], checks, env: dict) -> str:
    """A table, its notes, a warning when runs stayed disturbed, and the PASS/FAIL lines."""
    if env["noisy_runs"]:
        notes = notes + [f"Warning: in {env['noisy_runs']} of {env['runs']} runs other processes took more than a tenth "
                         "of a core even after retries; those timings are unreliable (see `other_cpu_s` in the JSON).", ""]
    return "\n".join(lines + notes + check_lines(checks)) + "\n"


LLAMA_WHAT = {
    "python": "`python -c pass` (bare interpreter)",
    "imports": "bare process: imports what `ladle cook` imports",
    "cat-dd": "`cat inputs > /dev/null; dd … conv=fsync` (I/O bound)",
    "cook": "`ladle cook uniform A B C D -o soup.safetensors`",
    "cook-nohash": "the same with `--no-hash`",
    "check": "`ladle check A B C D` (the preflight)",
    "soups-loop": "model-soups loop: load_file each, running sum, save_file",
    "mergekit": "`mergekit-yaml` linear, float32 (+ fsync of its files)",
    "ladle": "in-process `ladle.cook` (work only; RSS above idle)",
    "io": "in-process I/O bound (readinto, write, fsync; work only)",
}


def markdown_llama(row: dict, checks, env: dict) -> str:
    if "skipped" in row:
        return f"--llama skipped: {row['skipped']}\n"
    bound, cook = row["bound_s"], row["cook"]["wall_s"]
    head = ("| mode | what | wall s (median) | x bound | x cook | target | runs s | peak RSS MiB "
            "| above bare (or idle) MiB | CPU s | input GB/s |")
    lines = [f"{row['n']} x {row['file_bytes'] / 1e9:.3f} GB ({row['model']}). I/O bound of this run = `python -c pass` "
             f"{row['python']['wall_s']:.3f} s + cat-and-dd {row['cat-dd']['wall_s']:.3f} s = **{bound:.3f} s**.", "",
             head, "|" + "---|" * head.count(" | ") + "---|",
             f"| bound | `python -c pass` + cat-and-dd (medians of this run) | {bound:.3f} | 1.00 | {bound / cook:.2f} "
             "| | | | | | |"]
    for mode in LLAMA_MODES:
        if mode not in row:
            lines.append(f"| {mode} | {LLAMA_WHAT[mode]} | — (mergekit {row['mergekit_note']}) | | | | | | | | |")
            continue
        m = row[mode]
        runs = ", ".join(f"{x['wall_s']:.2f}" for x in m["runs"])
        above = (f"{above_bare(row, mode):+.0f}" if mode in ("cook", "cook-nohash") else
                 f"{m['rss_mib']:+.0f} (idle)" if "rss_mib" in m else "")
        ratios = "— | —" if mode in MODES else f"{m['x_bound']:.2f} | {m['x_cook']:.2f}"  # in-process: work only
        target = llama_target(row, mode)
        target = f"{target[0]}: {'PASS' if target[2] else 'FAIL'}" if target else ""
        lines.append(f"| {mode} | {LLAMA_WHAT[mode]} | {m['wall_s']:.3f} | {ratios} | {target} | {runs} "
                     f"| {m['peak_rss_mib']:.0f} | {above} | {m['cpu_s']:.2f} | {fmt(m['gbps'])} |")
    c = row["config"]
    notes = [
        "",
        f"{row['n']} checkpoints of a Llama-style model, {row['params']:,} float32 parameters, {row['file_bytes'] / 1e9:.3f} GB "
        f"each, in save_pretrained layout (`model.safetensors` + `config.json`): hidden {c['hidden_size']}, intermediate "
        f"{c['intermediate_size']}, {c['num_hidden_layers']} layers, {c['num_attention_heads']} heads "
        f"({c['num_key_value_heads']} key/value heads), vocab {c['vocab_size']}, "
        f"{'tied' if c['tie_word_embeddings'] else 'untied'} embeddings. ladle (cook, check) and mergekit are given the directories; the inputs' sha256 is primed "
        f"(untimed) in a private cache, {os.environ['LADLE_CACHE_DIR']}.",
        "x bound = median wall / this run's I/O bound; x cook = median wall / `ladle cook`'s (the targets: cook <= "
        f"{MAX_WHOLE_RATIO}x bound with hashing on, cook >= {MIN_VS_MERGEKIT:.0f}x faster than mergekit and "
        f">= {MIN_VS_SOUPS_LOOP:.0f}x than the soups loop, check <= {MAX_CHECK_VS_COOK}x cook). "
        f"`ladle cook` minus the bare process (imports) = {cook - row['imports']['wall_s']:.2f} s of work."
        + (f" In-process, ladle / I/O bound = {row['ladle']['gbps'] / row['io']['gbps']:.2f}." if "ladle" in row else ""),
        f"Above bare = peak RSS minus the bare process's peak ({row['imports']['peak_rss_mib']:.0f} MiB: "
        f"`python -c '{IMPORTS}'`).",
        f"Wall = exec to exit (mergekit: + the parent's fsync of its output files, median "
        f"{row['mergekit']['fsync_s']:.2f} s). " if "mergekit" in row else "Wall = exec to exit. ",
        f"Median of {env['repeats']} runs after {env['warmup']} warm-up round(s), modes interleaved; page cache warmed and "
        "`sync` before every run. mergekit: " + (row["mergekit_version"] or row["mergekit_note"]) + ".",
        "",
        f"Machine: {env['machine']}; python {env['python']}; torch {env['torch']}, safetensors {env['safetensors']}.",
        "",
    ]
    return report_text(lines, notes, checks, env)


def environment(rows: list[dict], args) -> dict:
    import safetensors
    import torch

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    runs = [x for r in rows for v in r.values() if isinstance(v, dict) and "runs" in v for x in v["runs"]]
    sample = os.urandom(64 * MiB)
    start = time.perf_counter()
    hashlib.sha256(sample).digest()
    sha_gbps = len(sample) / (time.perf_counter() - start) / 1e9
    inproc = [r["ladle"] for r in rows if "ladle" in r]
    return {
        "machine": f"{platform.machine()} {platform.processor() or platform.system()}, {os.cpu_count()} cores, {mem:.0f} GiB RAM",
        "python": platform.python_version(), "torch": torch.__version__, "safetensors": safetensors.__version__,
        "torch_threads": inproc[0]["runs"][0]["torch_threads"] if inproc else None,
        "ladle": inproc[0]["runs"][0]["ladle"] if inproc else " ".join(ladle_command()),
        "idle_rss_mib": statistics.median(x["idle_rss_mib"] for x in inproc) if inproc else None,
        "repeats": args.repeats, "warmup": args.warmup,
        "runs": len(runs), "noisy_runs": sum(noisy_run(x) for x in runs), "sha256_gbps_per_core": sha_gbps,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                   help=f"where generated ingredients (reused) and scratch soups go (default {DEFAULT_WORKDIR}); "
                        "a real disk, not tmpfs, and not inside the repository")
    p.add_argument("--report", type=Path, default=None,
                   help="markdown report; the JSON goes next to it (.json) (default bench/results/mix.md; with "
                        "--llama, mix-llama.md at 1080 MB and mix-llama-SIZE.md at other sizes)")
    p.add_argument("--sizes-mb", type=int, nargs="+", default=[256], help="MiB per ingredient file (default 256)")
    p.add_argument("--ns", type=int, nargs="+", default=[2, 4, 8, 16], help="numbers of ingredients")
    p.add_argument("--quick", action="store_true", help="N = 2, 4 only, and at most 60 s of waiting for quiet")
    p.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES))
    p.add_argument("--llama", action="store_true",
                   help=f"instead of the sweep: whole processes on {LLAMA_COUNT} Llama-style fp32 checkpoints "
                        "(--llama-size-mb), including mergekit and `ladle check`")
    p.add_argument("--llama-size-mb", type=int, choices=sorted(LLAMA_MODELS), default=1080,
                   help="size of each --llama checkpoint: 1080 (271M parameters, 1.084 GB; ~5.5 GB of disk with one "
                        "output; the default), 512 (134M, 511.6 MiB) or 64 (17M, 63.8 MiB: smoke tests)")
    p.add_argument("--mergekit-venv", type=Path, default=Path(tempfile.gettempdir()) / "mergekit-venv",
                   help="side venv holding mergekit (default %(default)s; created with `pip install mergekit` if missing, "
                        "then reused)")
    p.add_argument("--mergekit-pip", nargs="*", default=[], metavar="REQ",
                   help="extra requirements for that install, e.g. 'torch==2.13.0+cpu' for a CPU-only torch")
    p.add_argument("--mergekit-install-timeout", type=float, default=900.0,
                   help="seconds the mergekit install may take before its row is skipped (default 900)")
    p.add_argument("--no-mergekit", action="store_true", help="skip the mergekit row")
    p.add_argument("--repeats", type=int, default=3, help="runs per measurement; the median is reported (default 3)")
    p.add_argument("--warmup", type=int, default=None,
                   help="rounds run and discarded before the timed ones (default 1 with --llama, else 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-wait", type=float, default=30.0,
                   help="seconds to wait, before each run, for other processes to leave the CPU idle")
    p.add_argument("--retries", type=int, default=2, help="times to re-run a run that other processes disturbed")
    p.add_argument("--wait-budget", type=float, default=None,
                   help="total seconds the run may spend waiting for quiet; then it measures (and flags) regardless "
                        "(default 300, 60 with --quick)")
    p.add_argument("--one", choices=MODES, help=argparse.SUPPRESS)  # child: one in-process measurement
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--inputs", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        return child(args.one, args.inputs, args.out)
    if not Path(TIME).exists():
        sys.exit(f"needs GNU time at {TIME} for whole-process peak RSS (apt-get install time)")
    if args.quick:
        args.ns = [2, 4]
    if args.warmup is None:
        args.warmup = 1 if args.llama else 0
    args.budget = args.wait_budget if args.wait_budget is not None else (60.0 if args.quick else 300.0)
    args.workdir = args.workdir.resolve()
    if args.workdir.is_relative_to(ROOT):
        sys.exit(f"--workdir {args.workdir} is inside the repository; give a directory outside it")
    args.workdir.mkdir(parents=True, exist_ok=True)
    name = "mix.md" if not args.llama else "mix-llama.md" if args.llama_size_mb == 1080 else f"mix-llama-{args.llama_size_mb}.md"
    args.report = args.report or ROOT / "bench" / "results" / name
    os.environ.setdefault("LADLE_CACHE_DIR", str(args.workdir / "hash-cache"))  # the children's sha256 cache

    started = time.perf_counter()
    if args.llama:
        row = llama(args)
        checks = [] if "skipped" in row else evaluate_llama(row)
        env = environment([row], args)
        report = markdown_llama(row, checks, env)
        data = {"environment": env, "llama": row}
    else:
        rows = sweep(args)
        checks = evaluate(rows)
        env = environment(rows, args)
        report = markdown(rows, checks, env)
        data = {"environment": env, "rows": rows}
    data["targets"] = [{"target": n, "pass": ok, "detail": why} for n, ok, why in checks]
    print(report)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(report)
    args.report.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    log(f"wrote {args.report} and {args.report.with_suffix('.json')} ({(time.perf_counter() - started) / 60:.1f} min)")


if __name__ == "__main__":
    main()
