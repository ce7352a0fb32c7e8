"""Sweep configs: a YAML search space over the training loop's pluggable parts and hyper-parameters.

    objective: cross_entropy          # one value: fixed for every run
    lr: [1.0e-4, 2.0e-4, 3.0e-4]      # a list: each run draws one
    optimiser: [adamw, sgd]
    momentum: [0.8, 0.9]              # a knob of sgd (the registry entry's keyword-only parameters)

Fields a file leaves out keep the default config's value (configs/demo.yaml, the demo's regime). Errors name the
file, the line and the field in one line. Draws are a fixed function of (seed, run): `random.Random(seed ·
100003 + run)` picks one value for each field that lists two or more, in a fixed order (parts, lr, weight_decay,
the parts' knobs in registry order, epochs, batch_size). A field with one value draws nothing, so fixing a
field that was not listed, or adding a part's knob at one value, leaves every other draw as it was.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ladle.errors import LadleError

DEFAULT_CONFIG = "demo.yaml"

# Fields fixed for the whole sweep: type, whether null is allowed, lowest value.
SETTINGS: dict[str, tuple[type, bool, float | None]] = {
    "model": (str, False, None),
    "num_classes": (int, True, 1),  # null: the data's class count
    "data": (str, False, None),  # a data SOURCE: its train split trains, its heldout split scores
    "data_seed": (int, True, 0),  # null: the sweep seed (which split of the data)
    "image_size": (int, False, 1),
    "seed": (int, False, 0),
    "runs": (int, False, 0),  # 0: the stock only
    "threads": (int, False, 1),
    "lp_steps": (int, False, 0),
    "lp_lr": (float, False, 0.0),
    "steps": (int, True, 1),  # optimiser steps per run; null: `epochs` decide
}
CHOICES = ("objective", "optimiser", "schedule", "bn")  # names in the registries
# Hyper-parameters every run has (type, lowest value): drawn before the parts' knobs, and after them.
LEADING = {"lr": (float, 0.0), "weight_decay": (float, 0.0)}
TRAILING = {"epochs": (int, 1), "batch_size": (int, 1)}
RANGES = {"lr": "> 0", "lp_lr": "> 0"}  # strictly positive; other lows are inclusive


@dataclass(frozen=True)
class Run:
    """What one run of a sweep trains with: the drawn parts and hyper-parameters."""

    objective: str
    optimiser: str
    schedule: str
    bn: str
    hyperparameters: dict  # lr, weight_decay, the parts' knobs, epochs, batch_size, seed

    def parts(self) -> dict:
        return {"objective": self.objective, "optimiser": self.optimiser, "schedule": self.schedule, "bn": self.bn}


@dataclass(frozen=True)
class HyperParams:
    """A run of the default regime (cross-entropy, AdamW, one-cycle, frozen BN) as a typed record."""

    lr: float
    weight_decay: float
    label_smoothing: float
    shift: int
    epochs: int
    batch_size: int
    seed: int


@dataclass(frozen=True)
class SweepConfig:
    settings: dict  # SETTINGS fields
    space: dict  # sampled field -> tuple of candidate values, in draw order
    origin: str = "config"  # the file it was read from

    def __getattr__(self, name):
        if name in SETTINGS:
            return self.settings[name]
        raise AttributeError(name)

    def to_dict(self) -> dict:
        """Every field, one value or a list: the sweep as a config file would say it."""
        settings = {k: v for k, v in self.settings.items() if not (k == "steps" and v is None)}  # ids stay as before
        return settings | {k: v[0] if len(v) == 1 else list(v) for k, v in self.space.items()}


def default_config_path() -> Path:
    return Path(str(resources.files("ladle.training") / "configs" / DEFAULT_CONFIG))


def _registries():
    from ladle.training.loop import BN_POLICIES, OPTIMISERS, SCHEDULES
    from ladle.training.objectives import OBJECTIVES

    return {"objective": OBJECTIVES, "optimiser": OPTIMISERS, "schedule": SCHEDULES, "bn": BN_POLICIES}


def _factory(part: str, name: str):
    from ladle.training.objectives import objective_class

    return objective_class(name) if part == "objective" else _registries()[part][name]


def load_config(config: dict | str | Path | None = None, overrides: dict | None = None) -> SweepConfig:
    """The default config, then a file (or dict) on top, then overrides (None values are ignored)."""
    from ladle.soup.recipe_file import read_yaml_mapping

    default_path = default_config_path()
    fields, where = {}, {}

    def layer(values: dict, label, lines: dict | None = None, base: Path | None = None):
        for k, v in values.items():
            if v is None and label == "overrides":
                continue
            if base is not None and k in ("model", "data") and isinstance(v, str) and not Path(v).is_absolute() \
                    and (base / v).exists():
                v = str(base / v)  # a relative folder is relative to the config file, as in recipe files
            fields[k] = v
            where[k] = f"{label}:{lines[k]}" if lines and k in lines else str(label)

    data, lines = read_yaml_mapping(default_path)
    layer(data, default_path, lines)
    explicit: set[str] = set()
    origin = "config"
    if isinstance(config, dict):
        layer(config, "config")
        explicit |= set(config)
    elif config is not None:
        path = Path(config)
        shipped = default_config_path().with_name(path.name)
        if not path.exists() and path.parent == Path(".") and shipped.is_file():
            path = shipped  # `--config ssl-sweep.yaml`: the example shipped with ladle
        data, lines = read_yaml_mapping(path)
        layer(data, path, lines, path.parent)
        explicit |= set(data)
        origin = str(path)
    if overrides:
        layer(overrides, "overrides")
        explicit |= {k for k, v in overrides.items() if v is not None}
    return _validate(fields, where, explicit, origin)


def _fail(where: dict, field: str, problem: str):
    raise LadleError(f"{where.get(field, 'config')}: field '{field}': {problem}")


def _check_value(value, kind: type, low, field: str, where: dict, nullable: bool = False, strict: bool = False):
    """One value converted to its kind, or a one-line error naming where it was given."""
    if value is None and nullable:
        return None
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
        names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
        _fail(where, field, f"must be {names[kind]}{' or null' if nullable else ''}, got {value!r}")
    if kind is float:
        value = float(value)
        if not math.isfinite(value):
            _fail(where, field, f"must be a finite number, got {value!r}")
    if low is not None and kind in (int, float):
        if (strict or RANGES.get(field) == "> 0") and value <= low:
            _fail(where, field, f"must be > {low:g}, got {value!r}")
        if value < low:
            _fail(where, field, f"must be ≥ {low:g}, got {value!r}")
    return value


def _values(value, kind: type, low, field: str, where: dict) -> tuple:
    """A field of the search space: one value or a non-empty list of them."""
    if isinstance(value, dict):
        _fail(where, field, f"must be one value or a list of values, got a mapping {value!r}")
    values = list(value) if isinstance(value, list) else [value]
    if not values:
        _fail(where, field, "must list at least one value")
    out = tuple(_check_value(v, kind, low, field, where) for v in values)
    if len(set(map(repr, out))) != len(out):
        _fail(where, field, f"lists a value twice: {list(value)!r}")
    return out


def _validate(fields: dict, where: dict, explicit: set[str], origin: str) -> SweepConfig:
    from ladle.data.load import parse_spec
    from ladle.training.objectives import knobs_of

    registries = _registries()
    settings = {k: _check_value(fields.get(k), kind, low, k, where, nullable)
                for k, (kind, nullable, low) in SETTINGS.items()}
    settings["data"] = parse_spec(settings["data"])[0]  # a source; a split given with it is dropped
    if settings["data_seed"] is None:
        settings["data_seed"] = settings["seed"]
    space: dict[str, tuple] = {}
    for part in CHOICES:
        names = _values(fields.get(part), str, None, part, where)
        for name in names:
            if part == "objective" and ":" in name:
                try:
                    _factory(part, name)
                except LadleError as e:
                    _fail(where, part, str(e).split(": ", 1)[1])
            elif name not in registries[part]:
                _fail(where, part, f"unknown {part} '{name}' (known: {', '.join(registries[part])})")
        space[part] = names
    for field, (kind, low) in LEADING.items():
        space[field] = _values(fields.get(field), kind, low, field, where)

    # knobs: the keyword-only parameters (with defaults) of the listed parts, in registry order
    def ordered(part):
        listed = space[part]
        return [n for n in registries[part] if n in listed] + [n for n in listed if n not in registries[part]]

    owners: dict[str, list[tuple[str, str]]] = {}  # knob -> [(part, name)]
    defaults: dict[str, object] = {}
    for part in ("objective", "optimiser", "schedule"):
        for name in ordered(part):
            for knob, default in knobs_of(_factory(part, name)).items():
                owners.setdefault(knob, []).append((part, name))
                defaults.setdefault(knob, default)
    all_knobs = {k for part in ("objective", "optimiser", "schedule") for n in registries[part]
                 for k in knobs_of(_factory(part, n))}
    known = [*SETTINGS, *CHOICES, *LEADING, *TRAILING, *sorted(all_knobs | set(owners))]
    for field in fields:
        if field not in known:
            _fail(where, field, f"unknown field (known fields: {', '.join(known)})")
    for field in explicit:
        if field in all_knobs and field not in owners:
            users = [f"{p} '{n}'" for p in ("objective", "optimiser", "schedule") for n in registries[p]
                     if field in knobs_of(_factory(p, n))]
            listed = "; ".join(f"{p}: {', '.join(space[p])}" for p in ("objective", "optimiser", "schedule"))
            _fail(where, field, f"not used by this sweep ({listed}); it belongs to {', '.join(users)}")
    for knob, default in defaults.items():
        kind = type(default) if type(default) in (bool, int, float, str) else str
        space[knob] = _values(fields[knob], kind, None, knob, where) if knob in fields else (default,)
    for field, (kind, low) in TRAILING.items():
        space[field] = _values(fields.get(field), kind, low, field, where)
    _check_combinations(space, owners, where)
    return SweepConfig(settings, space, origin)


def _check_combinations(space: dict, owners: dict, where: dict) -> None:
    """Build each listed part with its listed knob values (each combination, up to a few hundred), so a value a
    part rejects is reported now, at its line, and not in a worker mid-sweep."""
    import torch

    for part in ("objective", "optimiser", "schedule"):
        for name in space[part]:
            factory = _factory(part, name)
            knobs = [k for k, users in owners.items() if (part, name) in users]
            combos = list(itertools.islice(itertools.product(*(space[k] for k in knobs)), 256))
            for combo in combos:
                kwargs = dict(zip(knobs, combo))
                try:
                    if part == "objective":
                        factory(**kwargs)
                    elif part == "optimiser":
                        factory([torch.zeros(1, requires_grad=True)], lr=1e-3, weight_decay=0.0, **kwargs)
                    else:
                        factory(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3), 10, lr=1e-3, **kwargs)
                except (ValueError, TypeError) as e:
                    field = knobs[0] if knobs else part
                    values = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
                    _fail(where, field, f"{part} '{name}' rejects {values}: {str(e).splitlines()[0]}")


def sample_run(config: SweepConfig, run: int) -> Run:
    """Run `run` of the sweep: a fixed function of (sweep seed, run), so a resumed sweep draws the same."""
    from ladle.training.objectives import knobs_of

    rng = random.Random(config.seed * 100_003 + run)
    drawn = {field: rng.choice(values) if len(values) > 1 else values[0] for field, values in config.space.items()}
    hp = {"lr": drawn["lr"], "weight_decay": drawn["weight_decay"]}
    for part in ("objective", "optimiser", "schedule"):
        hp |= {k: drawn[k] for k in knobs_of(_factory(part, drawn[part]))}
    hp |= {"epochs": drawn["epochs"], "batch_size": drawn["batch_size"], "seed": config.seed * 1000 + run}
    if config.steps:
        hp["steps"] = config.steps
    return Run(drawn["objective"], drawn["optimiser"], drawn["schedule"], drawn["bn"], hp)


def sample_hyperparams(sweep_seed: int, run: int, epochs: int = 6, batch_size: int = 32) -> HyperParams:
    """Run `run` of the default config's sweep with this seed, as a typed record."""
    config = load_config(None, {"seed": sweep_seed, "epochs": epochs, "batch_size": batch_size})
    return HyperParams(**sample_run(config, run).hyperparameters)


def sweep_id(config: SweepConfig, stock_sha256: str) -> str:
    """A sweep's name in the results store: its config (all but `runs`, so extending a sweep keeps it) and stock."""
    described = {k: v for k, v in config.to_dict().items() if k != "runs"}
    text = json.dumps({"config": described, "stock_sha256": stock_sha256}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


__all__ = ["HyperParams", "Run", "SweepConfig", "default_config_path", "load_config", "sample_hyperparams",
           "sample_run", "sweep_id"]
