"""Config files of sweeps and studies: fields declared once (type, help, bounds), read in layers, flags generated.

    defaults (the shipped default file) → a config file → overrides (command-line flags, --set FIELD=VALUE, a dict)

The defaults are the shipped default file (`training/configs/demo.yaml`, `studies/configs/branch-points.yaml`,
`studies/configs/self-soup.yaml`): one place, with the prose that says why, and the file a user copies. A field
is declared here as recipe parameters are declared by their signatures (ladle.soup.schema.Param), plus bounds,
so the same declaration checks a YAML field and makes the command-line flag (ladle.cli.common.add_flags).
Every error is one line naming where the value came from, the line and the field
(`sweep.yaml:3: field 'lrr': unknown field (…)`), before any training: exit 2.

The declarations live here, not beside the code that uses them, because the CLI builds its flags from them at
start-up and the training and study packages import torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ladle.errors import LadleError
from ladle.soup.schema import Param


class _FromConfig:
    """The default of a config field: whatever the config (or the shipped default file) says."""

    def __repr__(self) -> str:
        return "from the config"


FROM_CONFIG = _FromConfig()


@dataclass(frozen=True)
class Field(Param):
    """A config field: a Param (name, type, help) with bounds. `type` object: a structured value the loader's
    caller parses (lists of mappings, 'from E', …); it has no flag, only `--set`."""

    low: float | None = None
    high: float | None = None
    above: bool = False  # strictly above `low`
    below: bool = False  # strictly below `high`
    nullable: bool = False
    many: bool = False  # one value or a list of them: a sweep's search space
    relative: bool = False  # a path relative to the config file's folder (when it exists there)

    @property
    def bounds(self) -> str:
        """The allowed range in words (`> 0`, `0 to 1`, `≥ 1, or null`), for --help."""
        low = None if self.low is None else f"{'>' if self.above else '≥'} {self.low:g}"
        high = None if self.high is None else f"{'<' if self.below else '≤'} {self.high:g}"
        text = ", ".join(x for x in (low, high) if x)
        return text + (", or null" if self.nullable and text else "null allowed" if self.nullable else "")


def field(name: str, kind, help_text: str, **how) -> Field:
    return Field(name, kind, FROM_CONFIG, help_text, **how)


def positive(name: str, kind, help_text: str, **how) -> Field:
    return field(name, kind, help_text, low=0, above=True, **how)


# ---- declarations ------------------------------------------------------------------------------------------------

SWEEP_SETTINGS = [
    field("model", str, "the stock model spec", relative=True),
    field("num_classes", int, "classes of the head; null: the data's", low=1, nullable=True),
    field("data", str, "data SOURCE: its train split trains, its heldout split scores", relative=True),
    field("data_seed", int, "which examples are train / held-out / test; null: the sweep seed", low=0, nullable=True),
    field("image_size", int, "image side in pixels", low=1),
    field("seed", int, "the sweep seed: data split, stock head and (with the run number) every draw", low=0),
    field("runs", int, "ingredients to train (0: the stock only)", low=0),
    field("threads", int, "torch threads per run: part of what fixes the bytes", low=1),
    field("lp_steps", int, "linear-probe steps of the shared head (0: none)", low=0),
    positive("lp_lr", float, "learning rate of the linear probe"),
    field("steps", int, "optimiser steps per run; null: the epochs decide", low=1, nullable=True),
]
SWEEP_PARTS = [  # names in the training registries, one value or a list to draw from
    field("objective", str, "training objective (cross_entropy, mocov3, mmcr, mae, masked, package.module:Class)",
          many=True),
    field("optimiser", str, "optimiser (adamw, sgd)", many=True),
    field("schedule", str, "learning-rate schedule (one_cycle, cosine, constant)", many=True),
    field("bn", str, "BatchNorm policy (frozen, train)", many=True),
]
SWEEP_LEADING = [  # drawn before the parts' knobs
    positive("lr", float, "peak learning rate", many=True),
    field("weight_decay", float, "weight decay", low=0, many=True),
]
SWEEP_TRAILING = [  # drawn after them
    field("epochs", int, "epochs per run", low=1, many=True),
    field("batch_size", int, "batch size", low=1, many=True),
]
SWEEP_FIELDS = [*SWEEP_SETTINGS, *SWEEP_PARTS, *SWEEP_LEADING, *SWEEP_TRAILING]

BRANCH_POINTS_FIELDS = [
    field("model", str, "the model spec, trained from scratch", relative=True),
    field("num_classes", int, "classes; null: the data's", low=1, nullable=True),
    field("data", str, "data SOURCE: its train split trains, its heldout split scores", relative=True),
    field("data_seed", int, "which examples are train / held-out / test; null: the study seed", low=0, nullable=True),
    field("image_size", int, "image side in pixels", low=1),
    field("epochs", int, "the stock's length in epochs", low=1),
    field("schedule_epochs", int, "the cosine's length in epochs; null: epochs", low=1, nullable=True),
    field("checkpoint_every", int, "epochs between the stock's checkpoints", low=1),
    field("branch_epochs", object, "checkpoint epochs to branch at: a list, 'from E' or 'from E every K'"),
    field("branch_end", int, "every branch trains to this epoch; null: epochs", low=1, nullable=True),
    field("variants", object, "[lr, momentum, weight decay] scale factors, one branch each"),
    positive("lr", float, "peak learning rate (SGD)"),
    field("momentum", float, "SGD momentum", low=0, high=1, below=True),
    field("nesterov", bool, "use Nesterov momentum"),
    field("weight_decay", float, "weight decay", low=0),
    field("batch_size", int, "batch size", low=1),
    field("label_smoothing", float, "label smoothing", low=0, high=1),
    field("shift", int, "pixels of random translation", low=0),
    field("bn", str, "BatchNorm policy (train, frozen)"),
    field("seed", int, "the study seed", low=0),
    field("threads", int, "torch threads per task: the bytes depend on it", low=1),
    field("corruptions", object, "the grid's corrupted suites, e.g. [imagenet-c]; []: clean only"),
    field("severities", object, "severities of the corrupted suites: 3, 1-5 or 1,3,5"),
]

SELF_SOUP_FIELDS = [
    field("model", str, "the stock model spec", relative=True),
    field("data", str, "data SOURCE: its train split fine-tunes, its held-out split picks the greedy soup",
          relative=True),
    field("image_size", int, "image side in pixels", low=8),
    field("seed", int, "the study seed: the test halves, the control sweep's draws, every run's seed", low=0),
    positive("pool_fraction", float, "fraction of the test images in the target pool (the rest is evaluated)",
             high=1, below=True),
    field("target", object, "the corruption suites the pool holds, e.g. [imagenet-c, laion-c]"),
    field("severity", int, "corruption severity of the pool and the evaluation", low=1, high=5),
    field("ssl", object, "inter-training runs: a list of {objective: NAME, knob: value, …}"),
    field("ssl_steps", int, "optimiser steps per inter-training run", low=1),
    positive("ssl_lr", float, "inter-training learning rate"),
    field("ssl_batch_size", int, "inter-training batch size", low=2),
    field("ft_epochs", int, "epochs of fine-tuning back (and of the supervised control)", low=1),
    field("lp_steps", int, "linear-probe steps of the head before fine-tuning (LP-FT)", low=0),
    field("season_epochs", int, "self-seasoning epochs over the pool", low=1),
    field("threads", int, "torch threads per task", low=1),
]


# ---- reading the layers ------------------------------------------------------------------------------------------


@dataclass
class Layered:
    """Raw field values after layering, where each came from (`file:line`, or `overrides`), and which fields the
    caller gave (anything above the defaults)."""

    values: dict
    where: dict[str, str]
    explicit: set[str]
    origin: str  # the last config file read (the default when no other), or 'config' for a dict


def find_config(path: str | Path, shipped: Path) -> Path:
    """A config file: the path, or a bare name shipped with ladle (`--config paper.yaml`) when no such file is here."""
    path = Path(path)
    if not path.exists() and path.parent == Path(".") and (shipped / path.name).is_file():
        return shipped / path.name
    return path


def read_layers(fields: list[Field], default: Path, config: dict | str | Path | None = None,
                overrides: dict | None = None) -> Layered:
    """The default file, then a config file (or dict) on top, then overrides (None values override nothing)."""
    from ladle.soup.recipe_file import read_yaml_mapping

    relative = {f.name for f in fields if f.relative}
    layered = Layered({}, {}, set(), str(default))

    def layer(values: dict, label: str, lines: dict | None = None, base: Path | None = None, explicit=True):
        for k, v in values.items():
            if v is None and label == "overrides":
                continue
            if base is not None and k in relative and isinstance(v, str) and not Path(v).is_absolute() \
                    and (base / v).exists():
                v = str(base / v)  # a relative folder is relative to the config file, as in recipe files
            layered.values[k] = v
            layered.where[k] = f"{label}:{lines[k]}" if lines and k in lines else label
            if explicit:
                layered.explicit.add(k)

    data, lines = read_yaml_mapping(default)
    layer(data, str(default), lines, explicit=False)
    if isinstance(config, dict):
        layer(config, "config")
        layered.origin = "config"
    elif config is not None:
        path = find_config(config, default.parent)
        data, lines = read_yaml_mapping(path)
        layer(data, str(path), lines, path.parent)
        layered.origin = str(path)
    layer(overrides or {}, "overrides")
    return layered


def check_fields(fields: list[Field], layered: Layered, more: list[str] = ()) -> dict:
    """Every declared field's value, checked and converted (object fields as given); a field neither declared
    nor in `more` is an error."""
    known = [f.name for f in fields] + [m for m in more if m not in {f.name for f in fields}]
    for name in layered.values:
        if name not in known:
            fail(layered.where, name, f"unknown field (known fields: {', '.join(known)})")
    return {f.name: layered.values.get(f.name) if f.type is object else check_field(f, layered.values.get(f.name),
                                                                                     layered.where)
            for f in fields}


def check_field(f: Field, value, where: dict):
    """A value, or for a `many` field a tuple of values (one value or a non-empty list without repeats)."""
    if not f.many:
        return check_value(f, value, where)
    if isinstance(value, dict):
        fail(where, f.name, f"must be one value or a list of values, got a mapping {value!r}")
    values = list(value) if isinstance(value, list) else [value]
    if not values:
        fail(where, f.name, "must list at least one value")
    out = tuple(check_value(f, v, where) for v in values)
    if len(set(map(repr, out))) != len(out):
        fail(where, f.name, f"lists a value twice: {list(value)!r}")
    return out


_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def check_value(f: Field, value, where: dict):
    """One value converted to the field's type and inside its bounds, or a one-line error naming where it was."""
    if value is None and f.nullable:
        return None
    kind = f.type
    if kind is float and isinstance(value, str):
        try:  # PyYAML reads 1e-4 (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    ok = {bool: isinstance(value, bool),
          int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          str: isinstance(value, str)}[kind]
    if not ok:
        fail(where, f.name, f"must be {_NAMES[kind]}{' or null' if f.nullable else ''}, got {value!r}")
    if kind is float:
        value = float(value)
        if not math.isfinite(value):
            fail(where, f.name, f"must be a finite number, got {value!r}")
    if kind in (int, float):
        if f.low is not None and (value <= f.low if f.above else value < f.low):
            fail(where, f.name, f"must be {'>' if f.above else '≥'} {f.low:g}, got {value!r}")
        if f.high is not None and (value >= f.high if f.below else value > f.high):
            fail(where, f.name, f"must be {'<' if f.below else '≤'} {f.high:g}, got {value!r}")
    return value


def fail(where: dict, name: str, problem: str):
    raise LadleError(f"{where.get(name, 'config')}: field '{name}': {problem}")
