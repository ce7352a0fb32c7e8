"""Shared fixtures: small hand-made checkpoints written to real files, and a way to run the CLI.

Nothing here is autouse, so test modules that do not ask for these fixtures are unaffected.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ladle.cli.main import main

# progress lines on stderr depend on how long a phase takes: tests that compare stderr must not see them
# (tests/test_progress.py turns them back on where it checks them)
os.environ["LADLE_PROGRESS"] = "0"
# the persistent logit cache would carry evaluations from one test to the next (their files often have the same
# bytes): tests that check it turn it on
os.environ["LADLE_LOGIT_CACHE"] = "0"

VENV_BIN = Path(sys.executable).parent
TMP_MARK = ".ladle-tmp-"


def tensor(values, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def sha256_of(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def snapshot(folder: str | os.PathLike) -> dict[str, str]:
    """Every file and folder under `folder` (hidden ones too) -> sha256 of its bytes ('<dir>' for folders)."""
    folder = Path(folder)
    out: dict[str, str] = {}
    if not folder.exists():
        return out
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            out[str((Path(root) / d).relative_to(folder)) + "/"] = "<dir>"
        for f in files:
            p = Path(root) / f
            out[str(p.relative_to(folder))] = sha256_of(p)
    return out


def temporaries(folder: str | os.PathLike) -> list[str]:
    """Names of ladle temporary files or folders left anywhere under `folder`."""
    return sorted(k for k in snapshot(folder) if TMP_MARK in k)


def write_safetensors_raw(path: Path, header: dict, data: bytes) -> Path:
    """A .safetensors file with exactly this header and these data bytes (to write lying headers)."""
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return path


class Checkpoints:
    """Writes small state dicts as real checkpoint files under one folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.folder / name

    def st(self, name: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
        """`name`.safetensors unless `name` has its own suffix."""
        path = self.folder / (name if "." in name else name + ".safetensors")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
        return path

    def pt(self, name: str, obj, legacy: bool = False) -> Path:
        """torch.save (zip format, or the legacy pickle format) to `name` (give it a suffix)."""
        path = self.folder / name
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
        return path

    def hf(self, name: str, tensors: dict[str, torch.Tensor], fmt: str = "safetensors", shards: int = 1) -> Path:
        """A save_pretrained-style directory: model.safetensors / pytorch_model.bin, or `shards` shards + index."""
        d = self.folder / name
        d.mkdir(parents=True)
        keys = list(tensors)
        if shards == 1:
            filename = "model.safetensors" if fmt == "safetensors" else "pytorch_model.bin"
            self._save(d / filename, tensors, fmt)
            (d / "config.json").write_text('{"model_type": "toy"}\n')
            return d
        stem, suffix = ("model", "safetensors") if fmt == "safetensors" else ("pytorch_model", "bin")
        weight_map = {}
        per = -(-len(keys) // shards)
        for i in range(shards):
            filename = f"{stem}-{i + 1:05d}-of-{shards:05d}.{suffix}"
            part = {k: tensors[k] for k in keys[i * per : (i + 1) * per]}
            self._save(d / filename, part, fmt)
            weight_map.update({k: filename for k in part})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (d / f"{stem}.{suffix}.index.json").write_text(json.dumps(index, indent=2))
        (d / "config.json").write_text('{"model_type": "toy"}\n')
        return d

    @staticmethod
    def _save(path: Path, tensors: dict, fmt: str) -> None:
        if fmt == "safetensors":
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})
        else:
            torch.save(tensors, path)


@pytest.fixture
def ckpt(tmp_path) -> Checkpoints:
    """Checkpoints written under tmp_path/in (outputs go elsewhere, so their folder can be listed alone)."""
    return Checkpoints(tmp_path / "in")


@pytest.fixture
def out_dir(tmp_path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        # splitlines() also splits on '\r', so a progress bar redrawn in place counts as extra lines.
        return self.err.splitlines()


@pytest.fixture
def cli(capsys):
    """Run `ladle ARGS…` in-process: returns the exit code, stdout and stderr."""

    def run(*args) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def ladle_script() -> str:
    """The installed `ladle` console script of this venv."""
    found = shutil.which("ladle", path=str(VENV_BIN))
    assert found, f"no ladle console script in {VENV_BIN}"
    return found


def run_process(args: list, cwd=None, timeout: float = 120) -> CliResult:
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=timeout)
    return CliResult(p.returncode, p.stdout, p.stderr)


# Two small compatible ingredients with known numbers, and a base for them.
A = {"layer.weight": [[1.0, 2.0], [3.0, 4.0]], "layer.bias": [0.5, -0.5]}
B = {"layer.weight": [[3.0, 6.0], [5.0, 0.0]], "layer.bias": [1.5, 0.5]}
BASE = {"layer.weight": [[1.0, 1.0], [1.0, 1.0]], "layer.bias": [0.0, 0.0]}


def as_state(values: dict, dtype=torch.float32) -> dict[str, torch.Tensor]:
    return {k: tensor(v, dtype) for k, v in values.items()}


@pytest.fixture
def pair(ckpt) -> tuple[Path, Path]:
    """a.safetensors and b.safetensors: compatible, float32, values A and B."""
    return ckpt.st("a", as_state(A)), ckpt.st("b", as_state(B))


@pytest.fixture(autouse=True)
def _private_hash_cache(tmp_path_factory, monkeypatch):
    """Keep the sha256 cache of test runs out of the user's home."""
    monkeypatch.setenv("LADLE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "ladle-cache"))


@pytest.fixture(scope="module")
def ray_executor():
    """Ray on loopback with 2 CPU slots, started as ladle starts it, for one test module (stopped after it)."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("another Ray is initialised in this process")
    from ladle.execution.ray import RayExecutor

    executor = RayExecutor(num_cpus=2)
    yield executor
    executor.close()
    assert not ray.is_initialized()
