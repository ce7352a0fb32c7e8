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
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ladle.config import SWEEP_FIELDS, SWEEP_LEADING, SWEEP_PARTS, SWEEP_SETTINGS, SWEEP_TRAILING, Field, \
    check_field, check_fields, fail, read_layers
from ladle.errors import LadleError

DEFAULT_CONFIG = "demo.yaml"
CHOICES = tuple(f.name for f in SWEEP_PARTS)  # names in the registries
SETTINGS = tuple(f.name for f in SWEEP_SETTINGS)  # fixed for the whole sweep


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
    """The default config, then a file (or dict) on top, then overrides (None values are ignored); a bare name
    shipped with ladle (`ssl-sweep.yaml`) is that one."""
    return _validate(read_layers(SWEEP_FIELDS, default_config_path(), config, overrides))


def _validate(layered) -> SweepConfig:
    from ladle.data.load import parse_spec
    from ladle.training.objectives import knobs_of

    fields, where = layered.values, layered.where
    registries = _registries()
    parts: dict[str, tuple] = {}
    for f in SWEEP_PARTS:
        names = check_field(f, fields.get(f.name), where)
        for name in names:
            if f.name == "objective" and ":" in name:
                try:
                    _factory(f.name, name)
                except LadleError as e:
                    fail(where, f.name, str(e).split(": ", 1)[1])
            elif name not in registries[f.name]:
                fail(where, f.name, f"unknown {f.name} '{name}' (known: {', '.join(registries[f.name])})")
        parts[f.name] = names

    # knobs: the keyword-only parameters (with defaults) of the listed parts, in registry order
    def ordered(part):
        listed = parts[part]
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
    values = check_fields(SWEEP_FIELDS, layered, more=sorted(all_knobs | set(owners)))
    for name in layered.explicit:
        if name in all_knobs and name not in owners:
            users = [f"{p} '{n}'" for p in ("objective", "optimiser", "schedule") for n in registries[p]
                     if name in knobs_of(_factory(p, n))]
            listed = "; ".join(f"{p}: {', '.join(parts[p])}" for p in ("objective", "optimiser", "schedule"))
            fail(where, name, f"not used by this sweep ({listed}); it belongs to {', '.join(users)}")
    settings = {f.name: values[f.name] for f in SWEEP_SETTINGS}
    settings["data"] = parse_spec(settings["data"])[0]  # a source; a split given with it is dropped
    if settings["data_seed"] is None:
        settings["data_seed"] = settings["seed"]
    space = parts | {f.name: values[f.name] for f in SWEEP_LEADING}  # draw order: parts, leading, knobs, trailing
    for knob, default in defaults.items():
        kind = type(default) if type(default) in (bool, int, float, str) else str
        knob_field = Field(knob, kind, default, "a knob of a listed part", many=True)
        space[knob] = check_field(knob_field, fields[knob], where) if knob in fields else (default,)
    space |= {f.name: values[f.name] for f in SWEEP_TRAILING}
    _check_combinations(space, owners, where)
    return SweepConfig(settings, space, layered.origin)


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
                    fail(where, field, f"{part} '{name}' rejects {values}: {str(e).splitlines()[0]}")


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
