"""Souping LoRA adapters of a ~1 B-parameter Llama: `ladle cook uniform` against PEFT's `add_weighted_adapter`.

    .venv/bin/python bench/lora.py                  # TinyLlama-1.1B shape, N = 2, 4, 8 (~65 min on 2 cores)
    .venv/bin/python bench/lora.py --quick          # a ~100 M-parameter shape, N = 2, 4 (2-9 min, by the load)
    .venv/bin/python bench/lora.py --n 2,4 --peft-n 2 --work /data/lora-bench --keep
    .venv/bin/python bench/lora.py --skip peft-svd --timeout 600
    .venv/bin/python bench/lora.py --reuse-peft bench/results/lora-run1.json --reuse-only peft-svd

What it generates (under --work, default a fresh temp folder; never inside the repository; deleted at the end
unless --keep):
- BASE/: a Hugging Face folder shaped like TinyLlama-1.1B (LlamaConfig: hidden 2048, intermediate 5632, 22 layers,
  32 heads, 4 key/value heads, vocab 32000, untied embeddings), bf16, random weights (N(0, 0.02); norms 1). The keys
  and shapes are LlamaForCausalLM's, built on the meta device; the safetensors files are written tensor by tensor
  (header first, then each tensor's bytes), in shards of at most --shard-mb with model.safetensors.index.json, as
  `save_pretrained` lays them out. config.json is `LlamaConfig(...).save_pretrained`.
- adapter-00/ ... : PEFT LoRA folders (adapter_config.json + adapter_model.safetensors): r 16, lora_alpha 32, the 7
  linear projections of every layer, float32 factors (what PEFT saves by default: it upcasts adapter weights to
  float32), A ~ U(+-1/sqrt(in)) (PEFT's own init), B ~ N(0, 0.02) (non-zero, as after training). Keys and config are
  checked once per run against a tiny adapter written by PEFT's own get_peft_model(...).save_pretrained, and one
  generated adapter is loaded with PeftModel.from_pretrained.

What it measures, each a whole process under /usr/bin/time (wall from exec to exit, perf_counter in this parent;
peak RSS = GNU time's %M, the command's own ru_maxrss; a 0.1 s poller also sums RSS over the process tree):
  ladle-adapter       ladle cook uniform A B ... -o OUT/                         (exact: rank = sum of ranks)
  ladle-merge         ladle cook uniform A B ... --merge-into BASE/ -o OUT/      (full HF folder, base + mean dW)
  ladle-merge-nohash  the same with --no-hash
  ladle-rank16        ladle cook uniform A B ... --rank 16 -o OUT/               (truncated SVD of the mean dW)
  peft-cat            load base + N adapters, add_weighted_adapter(weights 1/N, "cat"), save_pretrained the new one
  peft-svd            the same with combination_type "svd" (svd_rank default: 16), capped by --svd-timeout
  peft-merge          peft-cat's adapter, then merge_and_unload() and save_pretrained of the merged model
ladle runs from a `git archive` copy of src/ at --ladle-rev (default HEAD) put first on PYTHONPATH, so commits
landing during a long run do not change the code measured (--ladle-worktree: the working tree as it is).
Every run starts from the same state: outputs deleted, `sync`, every input read once (hot page cache). Every
run's output is fsynced inside the timed process (ladle fsyncs its own; the PEFT child fsyncs after saving).
Each ladle run gets a fresh, empty LADLE_CACHE_DIR, so its inputs are hashed as for a first soup. The PEFT child
reports its phases (imports, base load, adapter loads, the add_weighted_adapter call alone, save, ...).

After each run (untimed) the output is checked: adapters by dW = B @ A * scaling of three modules against the exact
mean of the inputs' dW (float64), and against each other (ladle's exact adapter vs PEFT's cat adapter: the same
product, columns in any order); merged folders by three target weights against round(base + mean dW) in units of
bf16 ulps, an untouched tensor against the base bit for bit, and the key set. Once, at the largest N, a child loads
ladle's adapter with PeftModel.from_pretrained on the base and compares PEFT's own get_delta_weight.

Results: a table (variant, N, wall, peak RSS, ratio to ladle's) and bench/results/lora.json (lora-quick.json with
--quick). Targets printed: ladle's peak RSS flat in N (max - min <= 64 MiB per variant), ladle faster and leaner
than PEFT at each N.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proctree import descendants  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MiB = 1 << 20
KiB = 1 << 10
TIME = "/usr/bin/time"
RSS_FLAT_MIB = 64  # ladle's peak RSS over N: max - min
SPEC_VERSION = 1

# TinyLlama-1.1B's shape (1,100,048,384 parameters; 2.2 GB in bf16), and a ~100 M-parameter one for --quick.
FULL_SHAPE = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
              "num_key_value_heads": 4, "vocab_size": 32000}
QUICK_SHAPE = {"hidden_size": 768, "intermediate_size": 2048, "num_hidden_layers": 8, "num_attention_heads": 12,
               "num_key_value_heads": 4, "vocab_size": 32000}
COMMON = {"max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
          "bos_token_id": 1, "eos_token_id": 2}
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
RANK, ALPHA = 16, 32
B_STD = 0.02
VARIANTS = ("ladle-adapter", "ladle-merge", "ladle-merge-nohash", "ladle-rank16", "peft-cat", "peft-svd", "peft-merge")
LADLE_OF = {"peft-cat": "ladle-adapter", "peft-svd": "ladle-rank16", "peft-merge": "ladle-merge"}
ADAPTER_OUT = ("ladle-adapter", "ladle-rank16", "peft-cat", "peft-svd")
LOW_RANK = ("ladle-rank16", "peft-svd")  # rank-16 approximations: checked against the optimal truncation


def log(msg: str) -> None:
    print(msg, flush=True)


def mib(b: float | None) -> str:
    return "—" if b is None else f"{b / MiB:,.0f}"


# --------------------------------------------------------------------------- generated inputs


def llama_config(shape: dict):
    from transformers import LlamaConfig

    return LlamaConfig(**shape, **COMMON, architectures=["LlamaForCausalLM"], dtype="bfloat16")


def llama_entries(shape: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of LlamaForCausalLM's state dict, built on the meta device (no memory)."""
    import torch
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(llama_config(shape))
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def write_safetensors(path: Path, entries: list[tuple[str, tuple[int, ...]]], make, dtype: str = "BF16") -> None:
    """A safetensors file written tensor by tensor: the header from the shapes, then each tensor's bytes as
    `make(key, shape)` returns them (a torch tensor). Memory: one tensor at a time."""
    import torch

    itemsize = {"BF16": 2, "F32": 4}[dtype]
    header, offset = {}, 0
    for key, shape in entries:
        n = math.prod(shape) * itemsize
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for key, shape in entries:
            t = make(key, shape).contiguous()
            assert tuple(t.shape) == tuple(shape), key
            f.write(t.view(-1).view(torch.uint8).numpy().data)
        f.flush()
        os.fsync(f.fileno())  # no writeback of fresh inputs during the timed runs
    os.replace(tmp, path)


def make_base(folder: Path, shape: dict, shard_bytes: int, seed: int) -> dict:
    """The base HF folder: config.json, bf16 shards of at most shard_bytes, model.safetensors.index.json."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    entries = llama_entries(shape)
    shards, cur, cur_bytes = [], [], 0
    for key, shp in entries:
        n = 2 * math.prod(shp)
        if cur and cur_bytes + n > shard_bytes:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append((key, shp))
        cur_bytes += n
    shards.append(cur)
    total = sum(2 * math.prod(s) for _, s in entries)
    names = ([f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
             if len(shards) > 1 else ["model.safetensors"])
    index = {k: {"i": i} for i, (k, _) in enumerate(entries)}
    t0 = time.perf_counter()

    def make(key: str, shp: tuple[int, ...]):
        g = torch.Generator().manual_seed(seed * 100_003 + index[key]["i"])
        if key.endswith("norm.weight"):
            return torch.ones(shp, dtype=torch.bfloat16)
        return torch.randn(shp, generator=g).mul_(0.02).to(torch.bfloat16)

    written = 0
    for name, part in zip(names, shards):
        nbytes = sum(2 * math.prod(s) for _, s in part)
        log(f"  base: writing {name} ({len(part)} tensors, {nbytes / 1e9:.2f} GB) ...")

        def make_logged(key, shp, _part=part):
            nonlocal written
            t = make(key, shp)
            written += t.numel() * 2
            if key.endswith("mlp.down_proj.weight") or key in ("model.embed_tokens.weight", "lm_head.weight"):
                log(f"    {key}: {written / 1e9:.2f} / {total / 1e9:.2f} GB, {time.perf_counter() - t0:.0f} s")
            return t

        write_safetensors(folder / name, part, make_logged)
    if len(shards) > 1:
        weight_map = {k: name for name, part in zip(names, shards) for k, _ in part}
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    llama_config(shape).save_pretrained(folder)
    params = sum(math.prod(s) for _, s in entries)
    return {"params": params, "bytes": total, "shards": names, "seconds": time.perf_counter() - t0}


def target_modules(shape: dict) -> list[tuple[str, int, int]]:
    """(module, in_features, out_features) of every LoRA target, in PEFT's key order (layer, then name)."""
    h, inter = shape["hidden_size"], shape["intermediate_size"]
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    dims = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
            "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}
    out = []
    for i in range(shape["num_hidden_layers"]):
        for name in TARGETS:
            part = "self_attn" if name in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            out.append((f"model.layers.{i}.{part}.{name}", *dims[name]))
    return out


def adapter_config(base: Path) -> dict:
    """adapter_config.json as PEFT writes it for LoraConfig(r=16, lora_alpha=32, target_modules=<7>,
    task_type="CAUSAL_LM"): the fields that matter, the rest left to PEFT's defaults."""
    from importlib import metadata

    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(base), "r": RANK,
            "lora_alpha": ALPHA, "target_modules": list(TARGETS), "lora_dropout": 0.0, "bias": "none",
            "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "init_lora_weights": True,
            "inference_mode": True, "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {},
            "layers_to_transform": None, "layers_pattern": None, "revision": None,
            "peft_version": metadata.version("peft")}


def make_adapter(folder: Path, base: Path, shape: dict, seed: int, dtype: str) -> None:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(10_000 + seed)
    tensors = {}
    for module, fin, fout in target_modules(shape):
        bound = 1.0 / math.sqrt(fin)
        a = torch.empty(RANK, fin).uniform_(-bound, bound, generator=g)
        b = torch.randn(fout, RANK, generator=g).mul_(B_STD)
        tensors[f"base_model.model.{module}.lora_A.weight"] = a.to(getattr(torch, dtype))
        tensors[f"base_model.model.{module}.lora_B.weight"] = b.to(getattr(torch, dtype))
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    with open(folder / "adapter_model.safetensors", "rb+") as f:
        os.fsync(f.fileno())
    (folder / "adapter_config.json").write_text(json.dumps(adapter_config(base), indent=2, sort_keys=True) + "\n")


def ensure_inputs(work: Path, shape: dict, count: int, shard_bytes: int, seed: int, dtype: str) -> dict:
    """Generate BASE/ and `count` adapters once; reused while the recorded spec matches (with --keep)."""
    spec = {"version": SPEC_VERSION, "shape": shape, "shard_bytes": shard_bytes, "seed": seed,
            "adapter_dtype": dtype, "rank": RANK, "alpha": ALPHA}
    record_path = work / "inputs.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    if record.get("spec") != spec:
        for stale in [work / "base", *work.glob("adapter-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        record = {"spec": spec, "base": None, "adapters": []}
    base = work / "base"
    if record["base"] is None:
        log(f"generating the base model in {base} ...")
        record["base"] = make_base(base, shape, shard_bytes, seed)
        record_path.write_text(json.dumps(record, indent=1) + "\n")
        log(f"  base: {record['base']['params']:,} parameters, {record['base']['bytes'] / 1e9:.2f} GB in "
            f"{len(record['base']['shards'])} file(s), {record['base']['seconds']:.0f} s")
    adapters = []
    for i in range(count):
        d = work / f"adapter-{i:02d}"
        adapters.append(d)
        if d.name in record["adapters"] and (d / "adapter_model.safetensors").is_file():
            continue
        t0 = time.perf_counter()
        make_adapter(d, base, shape, seed * 1000 + i, dtype)
        size = (d / "adapter_model.safetensors").stat().st_size
        log(f"  adapter {d.name}: {size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s")
        record["adapters"].append(d.name)
        record_path.write_text(json.dumps(record, indent=1) + "\n")
    return {"base": base, "adapters": adapters, "record": record}


# --------------------------------------------------------------------------- reading dW and weights


def find_lora(keys, module: str) -> tuple[str, str]:
    """The lora_A and lora_B keys of `module` among an adapter's keys (any prefix, any adapter-name infix)."""
    a = [k for k in keys if re.search(rf"(^|\.){re.escape(module)}\.lora_A(\.[^.]+)?\.weight$", k)]
    b = [k for k in keys if re.search(rf"(^|\.){re.escape(module)}\.lora_B(\.[^.]+)?\.weight$", k)]
    if len(a) != 1 or len(b) != 1:
        raise KeyError(f"{module}: lora_A keys {a}, lora_B keys {b}")
    return a[0], b[0]


def pattern_value(patterns: dict, module: str, default):
    """PEFT's rank_pattern / alpha_pattern lookup: the first pattern matching the end of the module's key."""
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def delta_weight(folder: Path, module: str):
    """dW = B @ A * scaling of one module of a PEFT adapter folder, in float64; and the rank and dtype found."""
    from safetensors import safe_open

    config = json.loads((folder / "adapter_config.json").read_text())
    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as f:
        ka, kb = find_lora(list(f.keys()), module)
        a, b = f.get_tensor(ka), f.get_tensor(kb)
    r = pattern_value(config.get("rank_pattern"), module, config["r"])
    alpha = pattern_value(config.get("alpha_pattern"), module, config["lora_alpha"])
    scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    dw = (b.double() @ a.double()) * scaling
    return dw, {"rank": a.shape[0], "config_r": r, "scaling": scaling, "dtype": str(a.dtype).replace("torch.", "")}


def mean_delta(adapters: list[Path], module: str):
    total = None
    for d in adapters:
        dw, _ = delta_weight(d, module)
        total = dw if total is None else total + dw
    return total / len(adapters)


def best_low_rank(adapters: list[Path], module: str, rank: int):
    """The optimal rank-`rank` approximation of the mean dW (Eckart-Young) and its relative error, from the
    factors: mean dW = Bc @ Ac with Bc = [s_i/N B_i], Ac = [A_i]; QR of both, SVD of the small core."""
    import torch
    from safetensors import safe_open

    bs, as_ = [], []
    for d in adapters:
        config = json.loads((d / "adapter_config.json").read_text())
        with safe_open(str(d / "adapter_model.safetensors"), framework="pt") as f:
            ka, kb = find_lora(list(f.keys()), module)
            a, b = f.get_tensor(ka).double(), f.get_tensor(kb).double()
        r = pattern_value(config.get("rank_pattern"), module, config["r"])
        alpha = pattern_value(config.get("alpha_pattern"), module, config["lora_alpha"])
        scaling = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        bs.append(b * scaling / len(adapters))
        as_.append(a)
    qb, rb = torch.linalg.qr(torch.cat(bs, dim=1))
    qa, ra = torch.linalg.qr(torch.cat(as_, dim=0).T)
    u, sv, vh = torch.linalg.svd(rb @ ra.T)
    best = (qb @ u[:, :rank] * sv[:rank]) @ (vh[:rank] @ qa.T)
    err = float(sv[rank:].pow(2).sum().sqrt() / sv.pow(2).sum().sqrt())
    return best, err


def weight_files(folder: Path) -> dict[str, Path]:
    """key -> file of a HF folder (sharded or not)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return {k: folder / v for k, v in json.loads(index.read_text())["weight_map"].items()}
    from safetensors import safe_open

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as s:
            out.update({k: f for k in s.keys()})
    return out


def read_weight(folder: Path, key: str, files: dict | None = None):
    from safetensors import safe_open

    files = files or weight_files(folder)
    with safe_open(str(files[key]), framework="pt") as s:
        return s.get_tensor(key)


def rel(x, ref) -> float:
    return float((x - ref).norm() / ref.norm())


def check_modules(shape: dict) -> list[str]:
    last = shape["num_hidden_layers"] - 1
    return ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", f"model.layers.{last}.mlp.down_proj"]


def check_adapter(out: Path, adapters: list[Path], modules: list[str], refs: dict) -> dict:
    """dW of each module against the exact mean; the rank; a tolerance by the factors' dtype."""
    res = {"modules": {}, "ok": True}
    if not (out / "adapter_config.json").is_file() or not (out / "adapter_model.safetensors").is_file():
        return {"ok": False, "error": f"no adapter_config.json + adapter_model.safetensors in {out}"}
    for m in modules:
        dw, info = delta_weight(out, m)
        err = rel(dw, refs[m])
        res["modules"][m] = {"rel_err": err, **info}
    return res


def check_merged(out: Path, base: Path, modules: list[str], refs: dict) -> dict:
    """Target weights against base + mean dW (float64) in bf16 ulps; one untouched tensor bit for bit; keys."""
    import torch

    if not (out / "config.json").is_file():
        return {"ok": False, "error": f"no config.json in {out}"}
    files_out, files_base = weight_files(out), weight_files(base)
    res = {"ok": True, "modules": {}}
    if set(files_out) != set(files_base):
        res["ok"] = False
        res["keys"] = {"missing": sorted(set(files_base) - set(files_out))[:5],
                       "extra": sorted(set(files_out) - set(files_base))[:5]}
    for m in modules:
        key = m + ".weight"
        w = read_weight(out, key, files_out)
        w0 = read_weight(base, key, files_base)
        ref = w0.double() + refs[m]
        once = ref.to(torch.bfloat16)  # rounded once, as an exact merge would
        # a bf16 ulp of each element, floored at the ulp of the tensor's RMS: near zero, bf16's spacing is far
        # finer than the float32 arithmetic of dW (B @ A) that any merge does, so a pure ulp count means nothing
        floor = ref.pow(2).mean().sqrt()
        _, exp = torch.frexp(torch.maximum(ref.abs(), floor))
        ulp = torch.ldexp(torch.ones_like(ref), exp - 8)
        err_ulp = float(((w.double() - ref).abs() / ulp).max())
        res["modules"][m] = {
            "dtype": str(w.dtype).replace("torch.", ""),
            "max_err_ulp": err_ulp,  # <= 0.5 when rounded once from the exact value; <= 1 allows a double rounding
            "equal_to_rounded_once": float((w == once).double().mean()),  # 1.0 (but for ties) if rounded once
            "delta_rel_err": rel(w.double() - w0.double(), refs[m]),  # bf16 rounding noise against mean dW
        }
        res["ok"] &= w.dtype == torch.bfloat16 and err_ulp <= 1.0
    norm = "model.norm.weight"
    same = torch.equal(read_weight(out, norm, files_out), read_weight(base, norm, files_base))
    emb = "model.embed_tokens.weight"
    same &= torch.equal(read_weight(out, emb, files_out), read_weight(base, emb, files_base))
    res["untouched_equal"] = bool(same)
    res["ok"] &= bool(same)
    return res


# --------------------------------------------------------------------------- whole-process runs




def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
        return 0


def _last_line(log_path: Path) -> str:
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, os.path.getsize(log_path) - 4096))
            tail = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [s.strip() for s in re.split(r"[\r\n]", tail) if s.strip()]
    return lines[-1][:110] if lines else ""


def run_whole(cmd: list[str], log_path: Path, env: dict, timeout: float, cap: int, label: str) -> dict:
    """cmd as a whole process under GNU time (in its own session); wall, ru_maxrss, CPU, tree RSS peak."""
    stats = log_path.with_suffix(".time")
    full = [TIME, "-f", "%e %U %S %M", "-o", str(stats), *cmd]
    peak = {"rss": 0, "killed": None}
    with open(log_path, "w") as out:
        out.write("$ " + " ".join(map(str, cmd)) + "\n")
        out.flush()
        start = time.perf_counter()
        child = subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        done = threading.Event()

        def poll():
            last_print = time.perf_counter()
            while not done.is_set():
                rss = sum(_rss(p) for p in descendants(child.pid))
                peak["rss"] = max(peak["rss"], rss)
                now = time.perf_counter()
                if peak["killed"] is None and (now - start > timeout or rss > cap):
                    peak["killed"] = "timeout" if now - start > timeout else "rss cap"
                    try:
                        os.killpg(child.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                if now - last_print >= 5:
                    last_print = now
                    log(f"    [{label} {now - start:5.0f} s, RSS {rss / MiB:,.0f} MiB] {_last_line(log_path)}")
                done.wait(0.1)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        _, status, _ = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        done.set()
        poller.join()
    rc = os.waitstatus_to_exitcode(status)  # GNU time exits with the command's status
    res = {"wall_s": wall, "rc": rc, "tree_rss_peak": peak["rss"], "killed": peak["killed"], "log": str(log_path),
           "cpu_s": None, "maxrss": None}
    try:
        e, u, s, m = stats.read_text().split()[-4:]  # after "Command exited with non-zero status N", if any
        res.update({"cpu_s": float(u) + float(s), "maxrss": int(m) * KiB})
    except (OSError, ValueError):
        pass
    res["peak_rss"] = max(res.get("maxrss") or 0, res["tree_rss_peak"])
    return res


def error_line(log_path: Path) -> str:
    """The one line that says why a run failed (ladle's 'error' line, else a Python exception, else the last line)."""
    lines = [s.strip() for s in Path(log_path).read_text(errors="replace").splitlines() if s.strip()]
    lines = [s for s in lines if not s.startswith("$ ")]
    for pat in (r"error", r"^\w*(Error|Exception)\b", r"Killed|Traceback"):
        hits = [s for s in lines if re.search(pat, s, re.I)]
        if hits:
            return hits[-1][:300]
    return (lines[-1] if lines else "(no output)")[:300]


def warm(paths: list[Path]) -> None:
    buf = bytearray(8 * MiB)
    for p in paths:
        for f in ([p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file())):
            with open(f, "rb", buffering=0) as fh:
                while fh.readinto(buf):
                    pass


def clear(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def ladle_exe() -> str:
    exe = Path(sys.executable).parent / "ladle"
    return str(exe) if exe.exists() else shutil.which("ladle") or "ladle"


def command(variant: str, base: Path, adapters: list[Path], out: Path, timings: Path) -> list[str]:
    ins = [str(a) for a in adapters]
    if variant == "ladle-adapter":
        return [ladle_exe(), "cook", "uniform", *ins, "-o", str(out)]
    if variant == "ladle-merge":
        return [ladle_exe(), "cook", "uniform", *ins, "--merge-into", str(base), "-o", str(out)]
    if variant == "ladle-merge-nohash":
        return [ladle_exe(), "cook", "uniform", *ins, "--merge-into", str(base), "-o", str(out), "--no-hash"]
    if variant == "ladle-rank16":
        return [ladle_exe(), "cook", "uniform", *ins, "--rank", str(RANK), "-o", str(out)]
    mode = {"peft-cat": "cat", "peft-svd": "svd", "peft-merge": "merge"}[variant]
    return [sys.executable, str(Path(__file__).resolve()), "--child", "peft", "--mode", mode, "--base", str(base),
            "--out", str(out), "--timings", str(timings), *ins]


# --------------------------------------------------------------------------- child modes (PEFT, checks)


def fsync_tree(folder: Path) -> None:
    for f in sorted(x for x in folder.rglob("*") if x.is_file()):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def child_peft(args) -> None:
    """What a PEFT user runs: load the base, the N adapters, add_weighted_adapter, save (then fsync)."""
    t = {}
    t0 = time.perf_counter()
    phase = time.perf_counter()

    def mark(name: str) -> None:
        nonlocal phase
        now = time.perf_counter()
        t[name] = now - phase
        phase = now
        print(f"child: {name} {t[name]:.2f} s", flush=True)

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    mark("import")
    base = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.bfloat16)
    mark("load_base")
    names = [f"a{i}" for i in range(len(args.inputs))]
    model = PeftModel.from_pretrained(base, args.inputs[0], adapter_name=names[0])
    for name, path in zip(names[1:], args.inputs[1:]):
        model.load_adapter(path, adapter_name=name)
    mark("load_adapters")
    combo = "svd" if args.mode == "svd" else "cat"
    print(f"child: add_weighted_adapter({len(names)} adapters, combination_type={combo!r}) ...", flush=True)
    model.add_weighted_adapter(names, [1.0 / len(names)] * len(names), "soup", combination_type=combo)
    mark("add_weighted_adapter")
    out = Path(args.out)
    if args.mode in ("cat", "svd"):
        model.save_pretrained(str(out), selected_adapters=["soup"])  # written to OUT/soup/
        mark("save")
        fsync_tree(out)
        mark("fsync")
    else:
        model.set_adapter("soup")
        merged = model.merge_and_unload()
        mark("merge_and_unload")
        merged.save_pretrained(str(out))  # safetensors is transformers 5's only format
        mark("save")
        fsync_tree(out)
        mark("fsync")
    t["total_in_process"] = time.perf_counter() - t0
    Path(args.timings).write_text(json.dumps(t) + "\n")
    sys.stdout.flush()
    os._exit(0)  # as a script ending here would, minus interpreter teardown of the model


def child_format(args) -> None:
    """Compare this script's adapter files with PEFT's own (tiny model), then load one of ours with PEFT."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    work = Path(args.out)
    tiny = {"hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": 128}
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(tiny))
    model.save_pretrained(str(work / "tiny-base"))
    peft_model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(TARGETS),
                                                  task_type="CAUSAL_LM"))
    peft_model.save_pretrained(str(work / "tiny-peft"))
    make_adapter(work / "tiny-ours", work / "tiny-base", tiny, 0, "float32")

    def describe(folder: Path):
        with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as f:
            keys = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
            meta = f.metadata()
        return keys, meta, json.loads((folder / "adapter_config.json").read_text())

    pk, pmeta, pcfg = describe(work / "tiny-peft")
    ok_, ometa, ocfg = describe(work / "tiny-ours")
    fields = ("peft_type", "task_type", "r", "lora_alpha", "bias", "fan_in_fan_out", "use_rslora", "use_dora",
              "lora_dropout", "rank_pattern", "alpha_pattern", "modules_to_save", "init_lora_weights")
    res = {
        "same_keys_shapes_dtypes": pk == ok_,
        "keys": len(pk),
        "key_example": next(iter(sorted(pk))),
        "same_metadata": pmeta == ometa,
        "config_field_differences": {f: [pcfg.get(f), ocfg.get(f)] for f in fields if pcfg.get(f) != ocfg.get(f)},
        "same_target_modules": sorted(pcfg["target_modules"]) == sorted(ocfg["target_modules"]),
        "fields_only_in_peft": sorted(set(pcfg) - set(ocfg)),
    }
    # load ours with PEFT: every lora_B must be the file's (a missing key would leave PEFT's zero init)
    base = AutoModelForCausalLM.from_pretrained(str(work / "tiny-base"))
    loaded = PeftModel.from_pretrained(base, str(work / "tiny-ours"))
    sd = {k: v for k, v in loaded.state_dict().items() if "lora_" in k}
    with safe_open(str(work / "tiny-ours" / "adapter_model.safetensors"), framework="pt") as f:
        want = {k: f.get_tensor(k) for k in f.keys()}
    matched = 0
    for k, v in sd.items():
        file_key = k.replace(".default.weight", ".weight")
        if file_key in want and torch.equal(v, want[file_key]):
            matched += 1
    res["peft_loaded_tensors_equal"] = f"{matched}/{len(want)}"
    layer = loaded.base_model.model.model.layers[1].mlp.down_proj
    ours_dw, _ = delta_weight(work / "tiny-ours", "model.layers.1.mlp.down_proj")
    res["peft_get_delta_weight_rel_err"] = rel(layer.get_delta_weight("default").double(), ours_dw)
    res["ok"] = (res["same_keys_shapes_dtypes"] and res["same_target_modules"] and not res["config_field_differences"]
                 and matched == len(want) and res["peft_get_delta_weight_rel_err"] < 1e-6)
    print(json.dumps(res), flush=True)


def child_loadcheck(args) -> None:
    """ladle's soup adapter on the generated base through PeftModel.from_pretrained: PEFT's own get_delta_weight
    of the checked modules against the exact mean of the inputs' dW; every lora_B loaded (none left at zero)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.bfloat16)
    model = PeftModel.from_pretrained(base, args.out)
    res = {"modules": {}}
    zero_b = sum(1 for k, v in model.state_dict().items() if "lora_B" in k and not bool(v.abs().sum()))
    res["lora_B_all_zero_modules"] = zero_b
    for m in json.loads(args.modules):
        layer = model.base_model.model.get_submodule(m)
        dw = layer.get_delta_weight("default").double()
        res["modules"][m] = rel(dw, mean_delta([Path(a) for a in args.inputs], m))
    res["ok"] = zero_b == 0 and all(v < 1e-5 for v in res["modules"].values())
    print(json.dumps(res), flush=True)


# --------------------------------------------------------------------------- the parent


def versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for p in ("torch", "transformers", "peft", "safetensors", "ladle"):
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    try:
        out["ladle_commit"] = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"],
                                             capture_output=True, text=True).stdout.strip()[:120]
        out["src_uncommitted"] = subprocess.run(["git", "-C", str(ROOT), "status", "--short", "src"],
                                                capture_output=True, text=True).stdout.split("\n")[:20]
    except OSError:
        pass
    return out


def json_child(kind: str, extra: list[str], label: str, timeout: float = 900) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, *extra]
    log(f"{label} ...")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"})
    lines = [s for s in proc.stdout.splitlines() if s.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"ok": False, "error": " | ".join(tail)[:500], "seconds": time.perf_counter() - t0}
    res = json.loads(lines[-1])
    res["seconds"] = time.perf_counter() - t0
    return res


def snapshot_ladle(rev: str, dest: Path, env: dict) -> dict:
    """`git archive REV src` unpacked into dest; env gets PYTHONPATH so `ladle` imports it (checked)."""
    clear(dest)
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "src"], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(dest / "src"), env.get("PYTHONPATH")]))
    found = subprocess.run([sys.executable, "-c", "import ladle; print(ladle.__file__)"], env=env,
                           capture_output=True, text=True).stdout.strip()
    if not found.startswith(str(dest)):
        sys.exit(f"ladle imports from {found}, not from the snapshot {dest}")
    commit = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h %ad %s", "--date=iso", rev],
                            capture_output=True, text=True).stdout.strip()[:140]
    return {"path": str(dest / "src"), "commit": commit}


def reused_peft(path: Path, shape: dict) -> dict:
    """(variant, n) -> row of the PEFT runs of an earlier results file of the same shape."""
    old = json.loads(path.read_text())
    if old.get("shape") != shape:
        sys.exit(f"--reuse-peft {path}: its shape {old.get('shape')} is not this run's {shape}")
    out = {}
    for r in old.get("runs", []):
        if r["variant"].startswith("peft"):
            out[(r["variant"], r["n"])] = {**r, "reused_from": f"{path} (started {old.get('started')})"}
    return out


def summarize_check(c: dict | None) -> str:
    if not c:
        return ""
    if c.get("error"):
        return "check: " + c["error"][:80]
    mods = c.get("modules", {})
    if mods and "max_err_ulp" in next(iter(mods.values())):
        worst = max(v["max_err_ulp"] for v in mods.values())
        same = min(v["equal_to_rounded_once"] for v in mods.values())
        return (f"{'ok' if c['ok'] else 'WRONG'}: ≤ {worst:.2f} bf16 ulp of base + mean dW, "
                f"{100 * same:.3f} % equal to it rounded once")
    if mods:
        worst = max(v["rel_err"] for v in mods.values())
        rank = next(iter(mods.values()))["rank"]
        dtype = next(iter(mods.values()))["dtype"]
        s = f"{'' if c.get('ok', True) else 'WRONG: '}rank {rank} {dtype}, dW rel err {worst:.1e}"
        if "optimal_rel_err" in next(iter(mods.values())):
            s += f" (optimum {max(v['optimal_rel_err'] for v in mods.values()):.1e}, " \
                 f"{max(v['vs_optimal'] for v in mods.values()):.1e} from it)"
        if "vs_other" in c:
            s += f"; vs {c['vs_other_name']} {c['vs_other']:.1e}"
        return s
    return ""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", default=None, help="numbers of adapters for ladle (default 2,4,8; --quick 2,4)")
    p.add_argument("--peft-n", default=None, help="numbers of adapters for PEFT (default: those of --n)")
    p.add_argument("--quick", action="store_true", help="a ~100 M-parameter Llama shape (~200 MB) instead of ~1.1 B")
    p.add_argument("--work", type=Path, default=None, help="where to generate (default: a new temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the generated files (reused by a later --work run)")
    p.add_argument("--svd-n", default=None,
                   help="numbers of adapters for peft-svd (default 2,4; its cost hardly depends on N: one SVD of each "
                        "full out x in dW)")
    p.add_argument("--svd-timeout", type=float, default=1800.0,
                   help="seconds before a peft-svd run is killed (default 1800); larger N are then skipped")
    p.add_argument("--generate-only", action="store_true", help="generate the inputs (with --work, --keep) and stop")
    p.add_argument("--skip", action="append", default=[], choices=VARIANTS, help="leave a variant out (repeatable)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds before a run is killed (default 900)")
    p.add_argument("--rss-cap-gib", type=float, default=None,
                   help="kill a run whose process tree exceeds this (default: min(16, 0.7 x available memory))")
    p.add_argument("--shard-mb", type=int, default=None, help="base shard size (default 2000; --quick 100)")
    p.add_argument("--adapter-dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", type=Path, default=None, help="results JSON (default bench/results/lora[-quick].json)")
    p.add_argument("--ladle-rev", default="HEAD",
                   help="run ladle from a `git archive` copy of src/ at this revision (default HEAD), so commits "
                        "landing during the run do not change the code measured")
    p.add_argument("--ladle-worktree", action="store_true", help="run ladle from the working tree as it is instead")
    p.add_argument("--reuse-peft", type=Path, default=None, metavar="JSON",
                   help="take the PEFT rows from an earlier results file of the same shape instead of running them")
    p.add_argument("--reuse-only", action="append", default=[], choices=[v for v in VARIANTS if v.startswith("peft")],
                   help="with --reuse-peft: reuse only this variant (repeatable; e.g. peft-svd, the slow one), "
                        "run the rest")
    p.add_argument("--child", choices=("peft", "format", "loadcheck"), help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--base", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--timings", help=argparse.SUPPRESS)
    p.add_argument("--modules", help=argparse.SUPPRESS)
    p.add_argument("inputs", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        {"peft": child_peft, "format": child_format, "loadcheck": child_loadcheck}[args.child](args)
        return

    shape = QUICK_SHAPE if args.quick else FULL_SHAPE
    ns = sorted({int(x) for x in (args.n or ("2,4" if args.quick else "2,4,8")).split(",")})
    peft_ns = sorted({int(x) for x in (args.peft_n or ",".join(map(str, ns))).split(",")})
    svd_ns = sorted({int(x) for x in (args.svd_n or "2,4").split(",")} & set(peft_ns))
    all_ns = sorted(set(ns) | set(peft_ns))
    shard_bytes = (args.shard_mb or (100 if args.quick else 2000)) * 1_000_000
    made_work = args.work is None
    work = (args.work or Path(tempfile.mkdtemp(prefix="ladle-lora-bench-"))).resolve()
    if work == ROOT or ROOT in work.parents:
        sys.exit(f"--work {work} is inside the repository; give a folder outside it")
    work.mkdir(parents=True, exist_ok=True)
    avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        avail = int(re.search(r"MemAvailable:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1)) * KiB
    except (OSError, AttributeError):
        pass
    cap = int((args.rss_cap_gib or min(16.0, 0.7 * avail / (1 << 30))) * (1 << 30))
    report_path = args.report or ROOT / "bench" / "results" / ("lora-quick.json" if args.quick else "lora.json")
    started = time.time()
    log(f"bench/lora.py: {'quick' if args.quick else 'full'} shape {shape}, ladle N {ns}, PEFT N {peft_ns}, "
        f"svd N {svd_ns}, work {work}, timeout {args.timeout:.0f} s (svd {args.svd_timeout:.0f} s), "
        f"RSS cap {cap / (1 << 30):.1f} GiB, "
        f"load average {os.getloadavg()[0]:.1f}")

    est_base = 2 * (2 * shape["vocab_size"] * shape["hidden_size"] + shape["num_hidden_layers"] * (
        2 * shape["hidden_size"] ** 2 + 2 * shape["hidden_size"] * shape["hidden_size"] // shape[
            "num_attention_heads"] * shape["num_key_value_heads"] + 3 * shape["hidden_size"] * shape[
            "intermediate_size"]))
    need = est_base * 3.2 + 1e9  # base + two merged outputs at a time + adapters
    free = shutil.disk_usage(work).free
    if free < need:
        sys.exit(f"not enough disk in {work}: {free / 1e9:.1f} GB free, ~{need / 1e9:.1f} GB needed")

    report = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": {
        "cpus": os.cpu_count(), "platform": platform.platform(), "mem_available_gib": avail / (1 << 30),
        "loadavg_start": os.getloadavg()}, "versions": versions(), "args": {k: str(v) for k, v in vars(args).items()
                                                                              if k not in ("inputs",)},
        "shape": shape, "ns": ns, "peft_ns": peft_ns, "svd_ns": svd_ns, "work": str(work), "runs": [], "checks": {},
        "notes": []}

    try:
        # 1. this script's adapter files against PEFT's own (a tiny model)
        fmt_dir = work / "format-check"
        clear(fmt_dir)
        fmt_dir.mkdir(parents=True)
        fmt = json_child("format", ["--out", str(fmt_dir)], "checking the generated adapter format against PEFT's "
                                                            "get_peft_model(...).save_pretrained (tiny Llama)")
        report["checks"]["format"] = fmt
        shown = json.dumps({k: v for k, v in fmt.items() if k != "ok"})[:400]
        log(f"  format: {'ok' if fmt.get('ok') else 'DIFFERS'} — {shown}")

        # 2. inputs
        inputs = ensure_inputs(work, shape, max(all_ns), shard_bytes, args.seed, args.adapter_dtype)
        base, adapters = inputs["base"], inputs["adapters"]
        report["base"] = inputs["record"]["base"]
        report["adapter_bytes"] = (adapters[0] / "adapter_model.safetensors").stat().st_size
        modules = check_modules(shape)

        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
               "TOKENIZERS_PARALLELISM": "false"}
        ladle_env = dict(env)
        if not args.ladle_worktree:
            report["ladle_code"] = snapshot_ladle(args.ladle_rev, work / "ladle-src", ladle_env)
            log(f"ladle runs from {report['ladle_code']['path']} = {report['ladle_code']['commit']}")
        else:
            report["ladle_code"] = {"path": str(ROOT / "src"), "commit": "working tree",
                                    "uncommitted": report["versions"].get("src_uncommitted")}
        reused = reused_peft(args.reuse_peft, shape) if args.reuse_peft else {}
        if args.reuse_only:
            reused = {k: v for k, v in reused.items() if k[0] in args.reuse_only}
        reusing = {k[0] for k in reused}
        if reused:
            report["reused_peft_from"] = str(args.reuse_peft)
        logs = work / "logs"
        logs.mkdir(exist_ok=True)
        rows = report["runs"]
        svd_timed_out = 0
        if args.generate_only:
            log(f"inputs ready in {work}")
            return

        for n in all_ns:
            ins = adapters[:n]
            log(f"\n=== N = {n} ===")
            refs = {m: mean_delta(ins, m) for m in modules}
            kept: dict[str, Path] = {}
            for variant in VARIANTS:
                if variant in args.skip:
                    continue
                if variant.startswith("ladle") and n not in ns or variant.startswith("peft") and n not in peft_ns:
                    continue
                if variant == "peft-svd" and (n not in svd_ns or svd_timed_out):
                    if svd_timed_out:
                        log(f"peft-svd, N = {n}: skipped, it was killed at N = {svd_timed_out} and costs as much here")
                        report["notes"].append(f"peft-svd N={n} skipped: killed at N={svd_timed_out}")
                    continue
                out = work / f"out-{variant}-{n}"
                timings = logs / f"{variant}-{n}.timings.json"
                for stale in (out, timings):
                    clear(stale)
                if (variant, n) in reused:
                    log(f"{variant}, N = {n}: reused from {args.reuse_peft} ({reused[(variant, n)]['wall_s']:.1f} s)")
                    rows.append(reused[(variant, n)])
                    if variant == "peft-svd" and reused[(variant, n)].get("killed") == "timeout":
                        svd_timed_out = n
                    continue
                if variant in reusing:
                    continue
                run_env = dict(ladle_env if variant.startswith("ladle") else env)
                if variant.startswith("ladle"):
                    cache = work / f"ladle-cache-{variant}-{n}"
                    clear(cache)
                    run_env["LADLE_CACHE_DIR"] = str(cache)
                subprocess.run(["sync"])
                warm([base, *ins])
                cmd = command(variant, base, ins, out, timings)
                shown = " ".join(Path(c).name if c.startswith(str(work)) else c for c in cmd[:4])
                log(f"{variant}, N = {n}: {shown} ...")
                timeout = args.svd_timeout if variant == "peft-svd" else args.timeout
                r = run_whole(cmd, logs / f"{variant}-{n}.log", run_env, timeout, cap, variant)
                if variant == "peft-svd" and r["killed"] == "timeout":
                    svd_timed_out = n
                r.update({"variant": variant, "n": n, "command": " ".join(cmd)})
                if timings.exists():
                    r["phases"] = json.loads(timings.read_text())
                ok_run = r["rc"] == 0 and not r["killed"]
                if not ok_run:
                    r["error"] = (f"killed ({r['killed']} after {r['wall_s']:.0f} s)" if r["killed"]
                                  else f"exit {r['rc']}: {error_line(logs / f'{variant}-{n}.log')}")
                    log(f"  FAILED: {r['error']}")
                else:
                    phases = r.get("phases", {})
                    extra = (" — " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items())) if phases else ""
                    log(f"  {r['wall_s']:.1f} s, peak RSS {mib(r['peak_rss'])} MiB{extra}")
                    # untimed checks of the output
                    try:
                        if variant in ADAPTER_OUT:
                            folder = out / "soup" if variant.startswith("peft") else out
                            c = check_adapter(folder, ins, modules, refs)
                            exact = variant not in LOW_RANK
                            if not exact and "modules" in c:
                                # the optimum: no rank-16 adapter can be closer to the exact mean dW
                                for m in modules:
                                    best, opt = best_low_rank(ins, m, RANK)
                                    dw, _ = delta_weight(folder, m)
                                    c["modules"][m].update({"optimal_rel_err": opt, "vs_optimal": rel(dw, best)})
                                c["ok"] = all(v["rel_err"] <= v["optimal_rel_err"] * 1.01 + 1e-6 and v["rank"] == RANK
                                              for v in c["modules"].values())
                            if exact and "modules" in c:
                                tol = 1e-5 if all(v["dtype"] == "float32" for v in c["modules"].values()) else 1e-2
                                c["tolerance"] = tol
                                c["ok"] = all(v["rel_err"] <= tol for v in c["modules"].values())
                                c["rank_ok"] = all(v["rank"] == RANK * n for v in c["modules"].values())
                            other = {"ladle-adapter": "peft-cat", "peft-cat": "ladle-adapter",
                                     "ladle-rank16": "peft-svd", "peft-svd": "ladle-rank16"}.get(variant)
                            if other in kept and "modules" in c:
                                c["vs_other_name"] = other
                                c["vs_other"] = max(rel(delta_weight(folder, m)[0], delta_weight(kept[other], m)[0])
                                                    for m in modules)
                            kept[variant] = folder
                        else:
                            c = check_merged(out, base, modules, refs)
                    except Exception as e:  # noqa: BLE001 - a malformed output is a finding, not a crash
                        c = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                    r["check"] = c
                    log(f"  check: {summarize_check(c)}" + ("" if c.get("ok", True) else "  <-- NOT OK"))
                    if variant == "ladle-adapter" and n == max(ns):
                        lc = json_child("loadcheck", ["--base", str(base), "--out", str(out), "--modules",
                                                      json.dumps(modules), *map(str, ins)],
                                        "  loading ladle's adapter with PeftModel.from_pretrained on the base")
                        report["checks"]["ladle_adapter_loads_in_peft"] = lc
                        log(f"  PEFT load: {json.dumps(lc)[:300]}")
                rows.append(r)
                if variant not in ADAPTER_OUT:
                    clear(out)  # full models: ~2.2 GB each
                clear(work / f"ladle-cache-{variant}-{n}")
                report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
                report_path.parent.mkdir(parents=True, exist_ok=True)
                report_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
            for variant in ADAPTER_OUT:
                clear(work / f"out-{variant}-{n}")

        report["loadavg_end"] = os.getloadavg()
        report["minutes"] = (time.time() - started) / 60
        print_table(report)
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
        log(f"\nresults: {report_path}  ({report['minutes']:.1f} min)")
    finally:
        if not args.keep:
            if made_work:
                shutil.rmtree(work, ignore_errors=True)
            else:
                for x in [work / "base", work / "format-check", work / "ladle-src", *work.glob("adapter-*"),
                          *work.glob("out-*"), *work.glob("ladle-cache-*"), work / "inputs.json"]:
                    clear(x)
            log(f"deleted the generated files in {work} (--keep keeps them)")


def print_table(report: dict) -> None:
    rows = report["runs"]
    by = {(r["variant"], r["n"]): r for r in rows}
    log("\n| variant | N | wall s | peak RSS MiB | CPU s | × ladle wall | × ladle RSS | phases / check |")
    log("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        ok_run = not r.get("error")
        lad = by.get((LADLE_OF.get(r["variant"], ""), r["n"]))
        ratio_w = ratio_m = ""
        if ok_run and lad and not lad.get("error"):
            ratio_w = f"{r['wall_s'] / lad['wall_s']:.2f}×"
            ratio_m = f"{r['peak_rss'] / lad['peak_rss']:.2f}×"
        note = r.get("error", "")
        if ok_run:
            ph = r.get("phases", {})
            bits = []
            if ph:
                bits.append(", ".join(f"{k} {v:.1f}" for k, v in ph.items() if k != "total_in_process"))
            bits.append(summarize_check(r.get("check")))
            note = "; ".join(b for b in bits if b)
        if r.get("reused_from"):
            note = "(earlier run) " + note
        wall = f"{r['wall_s']:.1f}" if ok_run else f"({r['wall_s']:.1f})"
        cpu = f"{r['cpu_s']:.1f}" if r.get("cpu_s") is not None else "—"
        log(f"| {r['variant']} | {r['n']} | {wall} | {mib(r['peak_rss'])} | {cpu} | {ratio_w} | {ratio_m} | {note} |")
    log("")
    targets = []
    for variant in ("ladle-adapter", "ladle-merge", "ladle-merge-nohash", "ladle-rank16"):
        ok = [r for r in rows if r["variant"] == variant and not r.get("error")]
        if len(ok) >= 2:
            spread = (max(r["peak_rss"] for r in ok) - min(r["peak_rss"] for r in ok)) / MiB
            figures = ", ".join(f"N={r['n']} {mib(r['peak_rss'])}" for r in ok)
            targets.append((spread <= RSS_FLAT_MIB, f"{variant} peak RSS flat in N "
                            f"(max − min ≤ {RSS_FLAT_MIB} MiB): {figures} → {spread:.0f} MiB"))
        elif any(r["variant"] == variant for r in rows):
            targets.append((None, f"{variant} flat in N: not measured (ladle failed: "
                            f"{next(r.get('error') for r in rows if r['variant'] == variant)})"))
    for peft_v, lad_v in LADLE_OF.items():
        pairs = [(r, by.get((lad_v, r["n"]))) for r in rows if r["variant"] == peft_v]
        pairs = [(r, l) for r, l in pairs if l and not l.get("error")]
        if not pairs:
            continue
        faster = [(r["n"], r["wall_s"] / l["wall_s"], r.get("error")) for r, l in pairs]
        leaner = [(r["n"], r["peak_rss"] / l["peak_rss"], r.get("error")) for r, l in pairs]
        ok_f = all(x > 1 for _, x, _ in faster)
        ok_m = all(x > 1 for _, x, _ in leaner)
        # a killed PEFT run: its wall and peak so far are lower bounds
        targets.append((ok_f, f"{lad_v} faster than {peft_v}: " + ", ".join(
            f"N={n} {'≥ ' if e else ''}{x:.2f}×" + (f" ({e})" if e else "") for n, x, e in faster)))
        targets.append((ok_m, f"{lad_v} leaner than {peft_v}: " + ", ".join(
            f"N={n} {'≥ ' if e else ''}{x:.2f}×" for n, x, e in leaner)))
    checks = [r for r in rows if r.get("check")]
    bad = [f"{r['variant']} N={r['n']}" for r in checks if not r["check"].get("ok", True)]
    targets.append((not bad, "outputs correct (exact adapters: dW of 3 modules = the mean; rank 16: the optimal "
                    "truncation's error; merged: ≤ 1 bf16 ulp)"
                    + (f" — NOT: {', '.join(bad)}" if bad else f" — {len(checks)} outputs checked")))
    lc = report["checks"].get("ladle_adapter_loads_in_peft")
    if lc:
        targets.append((bool(lc.get("ok")), f"ladle's adapter loads with PeftModel.from_pretrained, PEFT's dW = "
                        f"exact mean: {json.dumps({k: v for k, v in lc.items() if k != 'ok'})[:200]}"))
    fmt = report["checks"].get("format", {})
    targets.append((bool(fmt.get("ok")), "generated adapters match PEFT's own files (keys, shapes, dtypes, config)"))
    for ok, text in targets:
        log(f"- {'SKIP' if ok is None else 'PASS' if ok else 'FAIL'}: {text}")
    report["targets"] = [{"ok": ok, "text": text} for ok, text in targets]


if __name__ == "__main__":
    main()
