"""What every kind of sweep shares: the record of a finished run (a checkpoint file's metadata, or a folder's
`ladle.json`), the executor a sweep defaults to, and the results-store hook that gets one row per ingredient."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ladle.errors import LadleError


def read_record(path: Path) -> dict | None:
    """The record of a finished run, or None if it is missing or damaged (then it is made again): a file's embedded
    manifest, or a folder's `ladle.json` whose `files` (name -> sha256) are all there with those bytes."""
    path = Path(path)
    if path.is_dir():
        return _folder_record(path)
    if not path.is_file():
        return None
    from ladle.io.manifest import read_manifest

    try:
        return read_manifest(path)
    except (LadleError, json.JSONDecodeError, OSError):
        return None


def _folder_record(folder: Path) -> dict | None:
    from ladle.io.hashing import sha256_file
    from ladle.io.writer import DIR_MANIFEST

    try:
        record = json.loads((folder / DIR_MANIFEST).read_text())
        files = record["files"]
        for name, sha in files.items():
            if sha256_file(folder / name) != sha:
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return record


def default_executor(tasks: int, threads: int, device):
    """One worker per `threads` cores (CPU), at most one per task; in-process for one task or a GPU."""
    from ladle.execution import make_executor

    if tasks <= 1 or str(device) != "cpu":
        return make_executor("local:1")
    return make_executor(f"local:{max(1, min(tasks, (os.cpu_count() or 1) // threads))}")


def put_ingredient(store, record: dict, sweep: str, parts: dict) -> None:
    """One ingredient row (nothing without a store); `parts`: the objective and the rest of what it trained with
    beyond its hyper-parameters (optimiser, schedule, …), kept in the row's hyper-parameters."""
    if store is None:
        return
    if record["heldout_accuracy"] is None:
        raise LadleError("an ingredient trained on unlabelled data has no held-out accuracy for the store; run it "
                         "without --db")
    parts = dict(parts)
    store.put_ingredient(record["sha256"], path=str(Path(record["path"]).resolve()), sweep=sweep, run=record["run"],
                         stock_sha256=record["stock_sha256"], model=record["model"], objective=parts.pop("objective"),
                         hyperparameters={**parts, **record["hyperparameters"]},
                         heldout_accuracy=record["heldout_accuracy"], final_train_loss=record["final_train_loss"],
                         data=record["data"])
