"""The writer: atomic under kill -9, sweeps what dead writers left, and records a manifest that tells the truth."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import ladle
from ladle import LadleError
from ladle.io.checkpoints import TensorInfo
from ladle.io.writer import SoupWriter, parse_size, sweep_stale_temporaries
from conftest import A, B, BASE, as_state, sha256_of, snapshot, temporaries, tensor

# ---------------------------------------------------------------- kill -9

# A fork server: imports ladle once (torch takes seconds to import), then for each request forks a child that
# runs `ladle.cli.main(args)` and kills it with SIGKILL after a delay, or as soon as a path appears. The server
# is the child's parent, so it reaps it: no zombie keeps the dead child's pid "alive" for ladle's sweeper, and
# the pid cannot be reused before the kill lands.
FORK_SERVER = r"""
import json, os, signal, sys, time
import ladle.cli, ladle.soup.cook, ladle.soup.check, ladle.io.writer
print("ready", flush=True)
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        try:
            code = ladle.cli.main(req["args"])
        except BaseException as e:
            print(f"crashed: {e!r}", file=sys.stderr)
            code = 99
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    start = time.monotonic()
    killed_at = None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        now = time.monotonic() - start
        trigger = (req.get("when_exists") or "").replace("{pid}", str(pid))
        if (req.get("delay") is not None and now >= req["delay"]) or (
            trigger and os.path.exists(trigger) and (os.path.isdir(trigger) and len(os.listdir(trigger)) > 0
                                                     or os.path.isfile(trigger) and os.path.getsize(trigger) > 0)):
            os.kill(pid, signal.SIGKILL)
            killed_at = now
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.0005)
    outcome = "killed" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}"
    elapsed = time.monotonic() - start
    print(json.dumps({"pid": pid, "outcome": outcome, "at": killed_at, "elapsed": elapsed}), flush=True)
"""


class ForkServer:
    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.count = 0
        self.proc = subprocess.Popen([sys.executable, "-c", FORK_SERVER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline() == "ready\n"

    def run(self, args, delay=None, when_exists=None) -> dict:
        self.count += 1
        log = self.logdir / f"run-{self.count}.log"
        req = {"args": [str(a) for a in args], "log": str(log), "delay": delay, "when_exists": when_exists}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        result = json.loads(self.proc.stdout.readline())
        result["log"] = log.read_text()
        return result

    def close(self):
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """Two ingredients of 64 MiB each (32 tensors of 2 MiB), the soup they make, and a fork server."""
    root = tmp_path_factory.mktemp("big")
    from safetensors.torch import save_file

    n = 1 << 19
    a = {f"blocks.{i}.weight": torch.full((n,), float(i)) for i in range(32)}
    b = {f"blocks.{i}.weight": torch.full((n,), float(i) + 2.0) for i in range(32)}
    save_file(a, str(root / "a.safetensors"))
    save_file(b, str(root / "b.safetensors"))
    expected = {k: torch.full((n,), float(i) + 1.0) for i, k in enumerate(a)}
    logs = root / "logs"
    logs.mkdir()
    server = ForkServer(logs)
    yield {"a": root / "a.safetensors", "b": root / "b.safetensors", "expected": expected, "server": server}
    server.close()


# Kill points as fractions of an uninterrupted run's duration, dense near the end where the rename happens.
KILL_FRACTIONS = (0.02, 0.05, 0.1, 0.15, 0.25, 0.35, 0.45, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0, 1.1)


def kill_until_one_completes(server, args, duration: float, after_each) -> list:
    """Kill runs at growing delays (then keep growing) until one run completes; call `after_each()` after every run."""
    outcomes = []
    delays = iter([f * duration for f in KILL_FRACTIONS])
    while True:
        delay = next(delays, None) or (outcomes[-1][0] * 1.5 + 0.1)
        result = server.run(args, delay=delay)
        outcomes.append((round(delay, 3), result["outcome"]))
        after_each()
        if result["outcome"] == "exit 0":
            return outcomes
        assert result["outcome"] == "killed", result
        assert len(outcomes) < 30, outcomes


def _is_complete_file_soup(path: Path, expected: dict) -> bool:
    got = load_file(path)
    assert sorted(got) == sorted(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert ladle.read_manifest(path)["recipe"] == "uniform"
    return True


def test_kill_9_never_leaves_a_partial_file(big, tmp_path):
    server, expected = big["server"], big["expected"]
    out = tmp_path / "soup.safetensors"
    args = ["cook", "uniform", big["a"], big["b"], "-o", out, "--force"]
    first = server.run(args)
    assert first["outcome"] == "exit 0", first["log"]
    warm = min((server.run(args) for _ in range(2)), key=lambda r: r["elapsed"])  # the first read cold files
    assert warm["outcome"] == "exit 0", warm["log"]
    assert _is_complete_file_soup(out, expected)
    previous = sha256_of(out)
    allowed = {out.name, out.name + ".json"}

    def assert_whole_or_previous():
        nonlocal previous
        names = set(os.listdir(tmp_path))
        assert all(".ladle-tmp-" in n for n in names - allowed), names
        assert out.exists()
        digest = sha256_of(out)
        if digest != previous:  # the kill came after the rename: then it must be the whole new soup
            assert _is_complete_file_soup(out, expected)
            previous = digest
        json.loads((tmp_path / (out.name + ".json")).read_text())  # the sidecar is never half-written either

    # Kill at several points in time until a run completes.
    outcomes = kill_until_one_completes(server, args, warm["elapsed"], assert_whole_or_previous)
    assert sum(o == "killed" for _, o in outcomes) >= 3, outcomes

    # Kill exactly while the temporary file is being written (it exists and is not empty).
    for _ in range(5):
        result = server.run(args, when_exists=str(tmp_path / f".{out.name}.ladle-tmp-{{pid}}"))
        assert_whole_or_previous()
        if result["outcome"] == "killed":
            break
    assert result["outcome"] == "killed", "never caught the writer mid-write"
    stale = tmp_path / f".{out.name}.ladle-tmp-{result['pid']}"
    assert stale.is_file() and 0 < stale.stat().st_size
    assert sha256_of(out) == previous  # the old soup is untouched

    # The next successful run sweeps the dead writer's temporary file.
    final = server.run(args)
    assert final["outcome"] == "exit 0", final["log"]
    assert not stale.exists()
    assert temporaries(tmp_path) == []
    assert sorted(os.listdir(tmp_path)) == sorted(allowed)
    assert _is_complete_file_soup(out, expected)
    digest = sha256_of(out)
    assert f"sha256 {digest}  {out.name}" in final["log"]


def test_kill_9_never_leaves_a_partial_directory(big, tmp_path):
    server, expected = big["server"], big["expected"]
    out = tmp_path / "soupdir"
    args = ["cook", "uniform", big["a"], big["b"], "-o", out, "--force", "--max-shard-size", "8MiB"]
    first = server.run(args)
    assert first["outcome"] == "exit 0", first["log"]
    warm = min((server.run(args) for _ in range(2)), key=lambda r: r["elapsed"])  # the first read cold files
    assert warm["outcome"] == "exit 0", warm["log"]
    previous = snapshot(out)
    assert len([k for k in previous if k.endswith(".safetensors")]) == 8

    def assert_whole_or_previous():
        nonlocal previous
        assert all(".ladle-tmp-" in n for n in set(os.listdir(tmp_path)) - {out.name})
        now = snapshot(out)
        if now != previous:
            assert sorted(now) == sorted(previous)  # same layout: 8 shards, index, ladle.json
            got = ladle.load_soup(out)
            assert all(torch.equal(got[k], expected[k]) for k in expected)
            previous = now

    result = server.run(args, when_exists=str(tmp_path / f".{out.name}.ladle-tmp-{{pid}}"))
    assert result["outcome"] == "killed"
    stale = tmp_path / f".{out.name}.ladle-tmp-{result['pid']}"
    assert stale.is_dir()
    assert_whole_or_previous()
    # Kill just before the swap: every shard and ladle.json are in the temporary folder.
    result = server.run(args, when_exists=str(tmp_path / f".{out.name}.ladle-tmp-{{pid}}" / "ladle.json"))
    assert_whole_or_previous()

    outcomes = kill_until_one_completes(server, args, warm["elapsed"], assert_whole_or_previous)
    assert sum(o == "killed" for _, o in outcomes) >= 3, outcomes

    result = server.run(args, when_exists=str(tmp_path / f".{out.name}.ladle-tmp-{{pid}}" / "model-00002-of-00008.safetensors"))
    assert result["outcome"] == "killed"
    assert (tmp_path / f".{out.name}.ladle-tmp-{result['pid']}").is_dir()
    assert_whole_or_previous()

    final = server.run(args)
    assert final["outcome"] == "exit 0", final["log"]
    assert temporaries(tmp_path) == [] and os.listdir(tmp_path) == [out.name]
    got = ladle.load_soup(out)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_sweep_removes_only_dead_writers_temporaries(tmp_path):
    out = tmp_path / "soup.safetensors"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        stale_file = tmp_path / f".soup.safetensors.ladle-tmp-{dead.pid}"
        stale_json = tmp_path / f".soup.safetensors.json.ladle-tmp-{dead.pid}"
        live_file = tmp_path / f".soup.safetensors.ladle-tmp-{alive.pid}"
        other = tmp_path / f".other.safetensors.ladle-tmp-{dead.pid}"
        for p in (stale_file, stale_json, live_file, other):
            p.write_bytes(b"partial")
        stale_dir = tmp_path / f".soup.safetensors.old.ladle-tmp-{dead.pid}"
        stale_dir.mkdir()
        (stale_dir / "model.safetensors").write_bytes(b"old")
        sweep_stale_temporaries(out)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live_file.name, other.name])
    finally:
        alive.kill()
        alive.wait()


def test_failed_cook_leaves_nothing_and_keeps_the_old_output(tmp_path):
    a = {"w": tensor([1.0, 2.0])}
    b = {"w": tensor([float("nan"), 2.0])}
    out = tmp_path / "soup.safetensors"
    ladle.cook("uniform", [a, a], out=out)
    before = snapshot(tmp_path)
    with pytest.raises(LadleError):
        ladle.cook("uniform", [a, b], out=out, force=True, reject_nonfinite=True)
    assert snapshot(tmp_path) == before


def test_writer_context_manager_aborts_on_error(tmp_path):
    out = tmp_path / "soupdir"
    infos = {"a": TensorInfo((2,), torch.float32), "b": TensorInfo((2,), torch.float32)}
    with pytest.raises(KeyError):
        with SoupWriter(out, infos, max_shard_size=8) as w:
            w.add("a", tensor([1.0, 2.0]))  # the first shard is written to the temporary folder now
            assert len(temporaries(tmp_path)) >= 1
            raise KeyError("boom")
    assert list(tmp_path.iterdir()) == []


def test_force_replaces_a_directory_completely(tmp_path):
    a = {f"t{i}": torch.full((4,), float(i)) for i in range(4)}
    out = tmp_path / "soupdir"
    ladle.cook("uniform", [a, a], out=out, max_shard_size=16)
    assert len(list(out.glob("model-*.safetensors"))) == 4
    ladle.cook("uniform", [a, a], out=out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "ladle.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["soupdir"]


@pytest.mark.parametrize("text, value", [(123, 123), ("123", 123), ("5GB", 5 * 10**9), ("500MB", 500 * 10**6),
                                         ("2GiB", 2 * 2**30), ("1.5KB", 1500), ("8 MiB", 8 * 2**20), ("7b", 7)])
def test_parse_size(text, value):
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["lots", "5XB", "", "0", "-1MB", "GB"])
def test_parse_size_rejects(text):
    with pytest.raises(LadleError, match="max_shard_size"):
        parse_size(text)


# ---------------------------------------------------------------- manifest


def test_manifest_tells_the_truth(cli, ckpt, tmp_path):
    a = ckpt.st("a", as_state(A))
    b = ckpt.pt("b.pt", {"state_dict": as_state(B)})
    out = tmp_path / "soup.safetensors"
    result = cli("cook", "weighted", a, b, "--weights", "1,3", "--dtype", "float16", "--accumulate", "float64",
                 "-o", out)
    assert result.code == 0, result.err

    sidecar = json.loads((tmp_path / "soup.safetensors.json").read_text())
    embedded = ladle.read_manifest(out)
    assert sidecar == embedded
    with safe_open(str(out), "pt") as f:
        assert json.loads(f.metadata()["ladle_manifest"]) == embedded
        assert f.metadata()["format"] == "pt"

    m = embedded
    assert m["recipe"] == "weighted"
    assert m["parameters"] == {"weights": [1.0, 3.0]}
    assert m["weights"] == [0.25, 0.75] and m["base_weight"] == 0.0 and m["base"] is None
    assert m["dtype_policy"] == {"accumulate": "float64", "output": "F16"}
    assert m["integer_policy"]["policy"] == "first" and m["integer_policy"]["disagreeing_keys"] == []
    assert m["selection"] == {"include": [], "exclude": [], "tensors": 2}
    assert m["versions"] == {"ladle": ladle.__version__, "numpy": np.__version__, "ml_dtypes": ml_dtypes.__version__,
                             "python": f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"}
    assert len(m["ingredients"]) == 2
    for entry, path in zip(m["ingredients"], [a, b]):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        size = path.stat().st_size
        assert entry["path"] == str(path)
        assert entry["sha256"] == digest and entry["bytes"] == size
        assert entry["files"] == [{"path": str(path), "bytes": size, "sha256": digest}]
    assert m["ingredients"][1]["notes"] == ["took the state dict from the top-level 'state_dict' entry"]

    soup = load_file(out)
    assert soup["layer.weight"].dtype == torch.float16
    assert torch.equal(soup["layer.weight"], tensor([[2.5, 5.0], [4.5, 1.0]], torch.float16))
    assert torch.equal(soup["layer.bias"], tensor([1.25, 0.25], torch.float16))


def test_manifest_with_base_include_and_sharded_ingredient(ckpt, tmp_path):
    a = ckpt.st("a", {**as_state(A), "extra": tensor([9.0])})
    base = ckpt.hf("base", {**as_state(BASE), "extra": tensor([0.0])}, shards=2)
    out = tmp_path / "soup.safetensors"
    soup = ladle.cook("interpolate", [a], base=base, alpha=0.25, out=out, exclude=["extra"])
    m = ladle.read_manifest(out)
    assert m == json.loads((tmp_path / "soup.safetensors.json").read_text())
    assert m["parameters"] == {"alpha": 0.25}
    assert m["weights"] == [0.25] and m["base_weight"] == 0.75
    assert m["selection"] == {"include": [], "exclude": ["extra"], "tensors": 2}
    shards = [base / "model-00001-of-00002.safetensors", base / "model-00002-of-00002.safetensors"]
    assert m["base"]["path"] == str(base)
    assert m["base"]["files"] == [{"path": str(s), "bytes": s.stat().st_size,
                                   "sha256": hashlib.sha256(s.read_bytes()).hexdigest()} for s in shards]
    assert m["base"]["bytes"] == sum(s.stat().st_size for s in shards)
    assert "sha256" not in m["base"]  # several files: one digest each
    assert sorted(load_file(out)) == ["layer.bias", "layer.weight"]
    assert torch.equal(soup_tensor(out, "layer.weight"), tensor([[1.0, 1.25], [1.5, 1.75]]))
    assert soup.sha256 == {"soup.safetensors": sha256_of(out)}


def soup_tensor(path, key):
    return load_file(path)[key]


def test_cook_prints_the_sha256_of_what_it_wrote(cli, pair, tmp_path):
    a, b = pair
    out = tmp_path / "soup.safetensors"
    result = cli("cook", "uniform", a, b, "-o", out)
    assert result.code == 0
    lines = result.out.splitlines()
    assert lines[0] == f"wrote {out}: 2 tensors, recipe uniform, weights [0.5, 0.5]"
    assert lines[1:] == [f"sha256 {hashlib.sha256(out.read_bytes()).hexdigest()}  soup.safetensors"]

    again = cli("cook", "uniform", a, b, "-o", out, "--force", "--json")
    doc = json.loads(again.out)
    assert doc["output"] == str(out)
    assert doc["sha256"] == {"soup.safetensors": hashlib.sha256(out.read_bytes()).hexdigest()}
    assert doc["manifest"] == ladle.read_manifest(out)


def test_files_ladle_writes_load_with_safetensors(tmp_path):
    """Every dtype, scalars and empty tensors: the bytes ladle writes are what the safetensors library reads."""
    state = {
        "f64": tensor([1.0, -2.5, 1e300], torch.float64),
        "f32": torch.linspace(-1, 1, 7),
        "f16": tensor([0.5, 65504.0], torch.float16),
        "bf16": tensor([1.0, -3.0, 256.0], torch.bfloat16),
        "i64": torch.tensor([[-(2**40), 5]]),
        "i32": torch.tensor([7], dtype=torch.int32),
        "i16": torch.tensor([-3, 3], dtype=torch.int16),
        "i8": torch.tensor([-128, 127], dtype=torch.int8),
        "u8": torch.tensor([255, 1, 2], dtype=torch.uint8),
        "bool": torch.tensor([True, False]),
        "scalar": torch.tensor(3.0),
        "empty": torch.zeros(0, 3),
    }
    out = tmp_path / "soup.safetensors"
    ladle.cook("uniform", [state, state], out=out)
    got = load_file(out)
    assert sorted(got) == sorted(state)
    for k, v in state.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape and torch.equal(got[k], v), k
    # and ladle reads its own files back the same way
    again = ladle.load_soup(out)
    assert all(torch.equal(again[k], state[k]) and again[k].dtype == state[k].dtype for k in state)


def test_overwriting_an_ingredient_in_place(ckpt):
    """`-o a.safetensors --force` where a.safetensors is an ingredient: read fully, hashed as it was, then replaced."""
    a = ckpt.st("a", {"w": tensor([1.0, 2.0])})
    b = ckpt.st("b", {"w": tensor([3.0, 4.0])})
    old_digest = sha256_of(a)
    ladle.cook("uniform", [a, b], out=a, force=True)
    assert torch.equal(load_file(a)["w"], tensor([2.0, 3.0]))
    assert ladle.read_manifest(a)["ingredients"][0]["sha256"] == old_digest

    d = ckpt.folder / "soupdir"
    ladle.cook("uniform", [a, b], out=d)
    ladle.cook("uniform", [d, b], out=d, force=True)
    assert torch.equal(ladle.load_soup(d)["w"], tensor([2.75, 3.75]))
    assert sorted(p.name for p in d.iterdir()) == ["README.md", "ladle.json", "model.safetensors"]
    assert temporaries(ckpt.folder) == []


def test_hash_cache_is_used_and_invalidated(tmp_path, monkeypatch):
    from ladle.io import hashing

    monkeypatch.setenv("LADLE_CACHE_DIR", str(tmp_path / "cache"))
    f = tmp_path / "x.bin"
    f.write_bytes(b"a" * 1000)
    first = hashing.sha256_file(f)
    assert first == hashlib.sha256(b"a" * 1000).hexdigest()
    assert str(f.resolve()) in json.loads((tmp_path / "cache" / "sha256.json").read_text())
    f.write_bytes(b"b" * 1000)  # same size, new content and mtime: must be rehashed
    assert hashing.sha256_file(f) == hashlib.sha256(b"b" * 1000).hexdigest()
    (tmp_path / "cache" / "sha256.json").write_text("{damaged")
    assert hashing.sha256_file(f) == hashlib.sha256(b"b" * 1000).hexdigest()
    monkeypatch.setenv("LADLE_HASH_CACHE", "0")
    assert hashing.sha256_file(f) == hashlib.sha256(b"b" * 1000).hexdigest()


def test_a_soup_is_hashed_as_written_and_remembered_under_its_final_name(pair, tmp_path, monkeypatch):
    """The output's sha256 is computed while fsync waits for the disk, from the temporary file; it is the hash of
    the bytes in place, and the cache holds it under the final name (a soup of this soup hashes nothing)."""
    from ladle.io import hashing

    monkeypatch.setenv("LADLE_CACHE_DIR", str(tmp_path / "cache"))
    for out in (tmp_path / "soup.safetensors", tmp_path / "sharded"):
        soup = ladle.cook("uniform", list(pair), out=out, **({} if out.suffix else {"max_shard_size": 16}))
        files = [out] if out.is_file() else sorted(out.glob("model-*.safetensors"))
        assert len(files) == (1 if out.is_file() else 2)
        cached = json.loads((tmp_path / "cache" / "sha256.json").read_text())
        for f in files:
            digest = hashlib.sha256(f.read_bytes()).hexdigest()
            assert soup.sha256[f.name] == digest
            assert cached[str(f.resolve())]["sha256"] == digest
            monkeypatch.setattr(hashing, "sha256_content", lambda path: pytest.fail(f"hashed {path} again"))
            assert hashing.sha256_file(f) == digest
            monkeypatch.undo()
            monkeypatch.setenv("LADLE_CACHE_DIR", str(tmp_path / "cache"))


def test_with_its_inputs_hashed_before_a_soup_is_hashed_from_the_buffers_it_writes_never_read_back(ckpt, tmp_path,
                                                                                                  monkeypatch):
    """Inputs whose sha256 the cache holds: the manifest is known before mixing, so the header goes first and the
    tensors follow in the file's order (not the keys': wider dtypes first), each buffer hashed as it is written —
    nothing is read back. A recipe whose trace grows while mixing (karcher) has its header rewritten and the file
    read back; inputs not hashed yet, likewise. Every digest is the file's."""
    from ladle.io import hashing, writer

    monkeypatch.setenv("LADLE_CACHE_DIR", str(tmp_path / "cache"))
    states = [{"a.weight": torch.randn(3, 4, generator=torch.Generator().manual_seed(i)),
               "steps": torch.tensor(5, dtype=torch.int64),
               "b.weight": torch.arange(5, dtype=torch.bfloat16) + i,
               "c.bias": torch.full((7,), float(i)),
               "d.scale": torch.arange(3, dtype=torch.float64) * i} for i in range(3)]
    paths = [ckpt.st(f"in{i}", s) for i, s in enumerate(states)]
    for f in paths:
        hashing.sha256_file(f)
    read_back = []
    real = writer.sha256_content
    monkeypatch.setattr(writer, "sha256_content", lambda *a, **k: read_back.append(a[0]) or real(*a, **k))

    def cooked(recipe, out, **options):
        read_back.clear()
        soup = ladle.cook(recipe, paths, out=out, force=True, **options)
        files = [out] if out.is_file() else sorted(out.glob("model*.safetensors"))
        for f in files:
            assert soup.sha256[f.name] == hashlib.sha256(f.read_bytes()).hexdigest()
        return soup, list(read_back)

    _, reread = cooked("uniform", tmp_path / "soup.safetensors")
    assert reread == []
    keys = list(states[0])
    with open(tmp_path / "soup.safetensors", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert sorted(keys, key=lambda k: header[k]["data_offsets"][0]) != keys  # the file's order is not the keys'
    _, reread = cooked("uniform", tmp_path / "sharded", max_shard_size=40)
    assert reread == []  # every shard's header is known before its data
    _, reread = cooked("karcher", tmp_path / "karcher.safetensors")
    assert len(reread) == 1  # its trace (iterations per tensor) is known only after mixing
    monkeypatch.setenv("LADLE_HASH_CACHE", "0")
    _, reread = cooked("uniform", tmp_path / "soup2.safetensors")
    assert len(reread) == 1  # inputs not hashed before: the manifest is known after mixing
    a, b = load_file(tmp_path / "soup.safetensors"), load_file(tmp_path / "soup2.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a) and list(a) == list(b)
    for k in keys:  # the uniform soup, whatever order the tensors were mixed in
        if states[0][k].is_floating_point():
            expected = (sum(s[k].double() for s in states) / 3).to(states[0][k].dtype)
            torch.testing.assert_close(a[k], expected, rtol=1e-2 if k == "b.weight" else 1e-6, atol=1e-6)


def test_a_failure_in_the_writer_thread_is_raised_to_the_caller_and_leaves_nothing(tmp_path):
    out = tmp_path / "s.safetensors"
    with pytest.raises(RuntimeError, match="'a' arrived as F64"):
        with SoupWriter(out, {"a": TensorInfo((2,), "F32"), "b": TensorInfo((2,), "F32")}) as w:
            w.add("a", np.zeros(2, dtype=np.float64))  # not what was planned: the thread fails on it
            w.add("b", np.zeros(2, dtype=np.float32))
            w.finish({"recipe": "hand"})
    assert not out.exists() and list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- streaming into a reserved file

def test_a_tensor_waits_in_the_queue_only_while_the_queue_is_full(tmp_path, monkeypatch):
    """The writer thread writes each tensor at its offset while the next is mixed; with room for one byte in flight,
    adding a second tensor waits until the first is in the file (memory holds no output)."""
    import ladle.io.writer as writer

    monkeypatch.setattr(writer, "IN_FLIGHT", 1)
    out = tmp_path / "s.safetensors"
    tensors = {"a": torch.arange(6, dtype=torch.float32), "b": torch.arange(4, dtype=torch.bfloat16),
               "c": torch.tensor([7], dtype=torch.int64)}
    with SoupWriter(out, {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in tensors.items()}) as w:
        tmp = w.tmp
        assert tmp.stat().st_size == w.files[0].data_start + 6 * 4 + 4 * 2 + 8  # its final size from the start
        w.add("b", tensors["b"])
        w.add("c", tensors["c"])
        entry = w.files[0].entries["b"]
        begin, end = entry["data_offsets"]
        with open(tmp, "rb") as f:
            f.seek(w.files[0].data_start + begin)
            assert f.read(end - begin) == tensors["b"].view(torch.uint8).numpy().tobytes()  # written, not held
        w.add("a", tensors["a"])
        w.finish({"recipe": "hand"})
    got = load_file(out)
    assert all(torch.equal(got[k], tensors[k]) for k in tensors)
    assert ladle.read_manifest(out) == {"recipe": "hand"}


def test_a_manifest_that_outgrows_its_reserved_space_still_lands_whole(tmp_path):
    out = tmp_path / "s.safetensors"
    tensors = {f"t{i}": torch.full((1000,), float(i)) for i in range(5)}
    manifest = {"recipe": "hand", "trace": ["x" * 100] * 500}  # ~50 kB against 0 bytes reserved
    with SoupWriter(out, {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in tensors.items()},
                    manifest_reserve=0) as w:
        for k, v in tensors.items():
            w.add(k, v)
        sha = w.finish(manifest)
    got = load_file(out)
    assert all(torch.equal(got[k], tensors[k]) for k in tensors)
    assert ladle.read_manifest(out) == manifest
    assert sha == {"s.safetensors": hashlib.sha256(out.read_bytes()).hexdigest()}
    assert sorted(os.listdir(tmp_path)) == ["s.safetensors", "s.safetensors.json"]  # no temporaries left


def test_a_full_disk_is_one_line_before_any_mixing_and_leaves_nothing(cli, pair, tmp_path, monkeypatch):
    import ladle.soup.cook

    real = os.fstatvfs

    def almost_full(fd):  # 2 free bytes: less than any soup needs
        st = real(fd)
        return os.statvfs_result((st.f_bsize, 1, st.f_blocks, 2, 2, *st[5:]))

    def never(*args, **kwargs):
        raise AssertionError("mixing started")

    monkeypatch.setattr(os, "fstatvfs", almost_full)
    monkeypatch.setattr(ladle.soup.cook, "mix_stream", never)
    before = snapshot(tmp_path)
    out = tmp_path / "soup.safetensors"
    result = cli("cook", "uniform", *pair, "-o", out)
    assert result.code == 2
    assert re.fullmatch(rf"ladle: error: {re.escape(str(out))}: not enough disk space: the soup needs [0-9.]+ KB, "
                        r"2 bytes free\n", result.err), result.err
    assert snapshot(tmp_path) == before  # nothing written, no temporary left
    result = cli("cook", "uniform", *pair, "-o", tmp_path / "dir")
    assert result.code == 2 and result.err.startswith(f"ladle: error: {tmp_path / 'dir' / 'model.safetensors'}: not enough")
    assert snapshot(tmp_path) == before


def test_a_disk_that_fills_up_while_writing_is_one_line_and_leaves_nothing(cli, pair, tmp_path, monkeypatch):
    import errno

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    before = snapshot(tmp_path)
    out = tmp_path / "soup.safetensors"
    result = cli("cook", "uniform", *pair, "-o", out)
    assert result.code == 2 and result.err == f"ladle: error: {out}: the disk filled up while the soup was written\n"
    assert snapshot(tmp_path) == before


def test_no_hash_skips_every_sha256_and_says_so(cli, pair, tmp_path, monkeypatch):
    import ladle.io.hashing

    def never(*args, **kwargs):
        raise AssertionError("hashed")

    monkeypatch.setattr(ladle.io.hashing.hashlib, "sha256", never)
    out = tmp_path / "soup.safetensors"
    result = cli("cook", "uniform", *pair, "-o", out, "--no-hash")
    assert result.code == 0, result.err
    assert result.out.splitlines() == [f"wrote {out}: 2 tensors, recipe uniform, weights [0.5, 0.5]"]
    manifest = ladle.read_manifest(out)
    assert [i["sha256"] for i in manifest["ingredients"]] == ["not hashed", "not hashed"]
    assert manifest["parameters"] == {} or "no_hash" not in manifest["parameters"]
    monkeypatch.undo()
    expected = {k: (v + ladle.load_soup(pair[1])[k]) / 2 for k, v in ladle.load_soup(pair[0]).items()}
    assert all(torch.equal(ladle.load_soup(out)[k], expected[k]) for k in expected)
    refused = cli("cook", "uniform", *pair, "-o", tmp_path / "x.safetensors", "--no-hash", "--db", tmp_path / "r.sqlite")
    assert refused.code == 2 and refused.err == "ladle: error: cook: --db keys the soup by its sha256; drop --no-hash or --db\n"


@pytest.mark.parametrize("recipe, params", [("uniform", {}), ("weighted", {"weights": [0.2, 0.3, 0.5]}),
                                            ("interpolate", {"alpha": 0.3}), ("task-arithmetic", {"lambda_": 0.7}),
                                            ("ties", {"density": 0.5}), ("model-stock", {})])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tensors_mixed_in_parts_are_the_tensors_mixed_whole(tmp_path, monkeypatch, recipe, params, dtype):
    """cook mixes large tensors of elementwise recipes in flat parts written at their offsets: bit for bit the
    in-memory soup (mixed whole); other recipes are mixed whole either way."""
    import ladle.soup.cook
    from ladle.io.writer import OutputFile
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(1)
    shapes = {"big.weight": (6, 7), "odd": (23,), "small": (3,), "scalar": ()}
    paths = []
    for i in range(4):
        state = {k: (torch.randn(shape, generator=g) * (i + 1)).to(dtype) for k, shape in shapes.items()}
        paths.append(tmp_path / f"{i}.safetensors")
        save_file({**state, "steps": torch.tensor([5, 6])}, str(paths[-1]))
    *ingredients, base = [str(p) for p in paths]
    extra = {"base": base} if recipe in ("interpolate", "task-arithmetic", "ties", "model-stock") else {}
    whole = ladle.cook(recipe, ingredients, **params, **extra).state_dict

    puts = []
    original = OutputFile.put
    monkeypatch.setattr(OutputFile, "put", lambda self, key, t: (puts.append(key), original(self, key, t)))
    monkeypatch.setattr(ladle.soup.cook, "MIX_BLOCK", 5)  # 42 and 23 elements: 9 and 5 parts
    out = tmp_path / "soup.safetensors"
    ladle.cook(recipe, ingredients, out=out, **params, **extra)
    elementwise = recipe in ("uniform", "weighted", "interpolate", "task-arithmetic")
    assert len(puts) == (9 + 5 + 3 if elementwise else 5)
    got = load_file(out)
    assert sorted(got) == sorted(whole)
    for k in whole:
        assert torch.equal(got[k].reshape(-1).view(torch.uint8), whole[k].reshape(-1).view(torch.uint8)), k
