"""PEFT LoRA adapters as ingredients: read a folder's config and factors, give each module's update ΔW = s·B·A.

An adapter folder holds `adapter_config.json` and `adapter_model.safetensors` (or `.bin`). Keys are PEFT's:
`base_model.model.<module>.lora_A.weight` (r × fan_in; a convolution's r × C_in × kh × kw), `.lora_B.weight`
(fan_out × r), `.lora_embedding_A` / `.lora_embedding_B` for embeddings; any other key is a tensor saved whole
(`modules_to_save`, trained biases, an embedding's `base_layer`). The scaling s is lora_alpha / r (lora_alpha / √r
with `use_rslora`), with r and alpha taken per module from `rank_pattern` / `alpha_pattern` as PEFT matches them.
What ladle cannot make exact (DoRA, other PEFT types, …) is refused in one line naming the field.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ladle.errors import LadleError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
PEFT_PREFIX = "base_model.model."
FACTOR_KEYS = {  # suffix of a stored key -> (factor, module kind)
    ".lora_A.weight": ("A", "linear"), ".lora_B.weight": ("B", "linear"),
    ".lora_embedding_A": ("A", "embedding"), ".lora_embedding_B": ("B", "embedding"),
}
# Config fields whose adapters are not base + s·B·A (or not only that): refused when set.
NOT_EXACT = {
    "use_dora": "DoRA rescales each column by a learned magnitude: not a sum of low-rank updates",
    "lora_bias": "a LoRA bias term is not part of B·A",
    "use_qalora": "QA-LoRA pools its inputs by group",
    "target_parameters": "LoRA on bare parameters (MoE experts) is not supported",
    "layer_replication": "replicated layers share weights the update would have to follow",
    "trainable_token_indices": "trainable token rows are not supported",
    "alora_invocation_tokens": "activated LoRA applies the update only after its invocation tokens",
    "megatron_config": "Megatron-parallel layers are not supported",
    "use_bdlora": "block-diagonal LoRA is not supported",
    "monteclora_config": "MonteCLoRA samples its factors",
    "velora_config": "VeLoRA is not supported",
    "arrow_config": "Arrow routes between adapters at run time",
}


def is_adapter(source) -> bool:
    """A PEFT adapter folder (or its adapter_config.json)."""
    if not isinstance(source, (str, Path)):
        return False
    path = Path(source)
    if path.is_dir():  # weights without a config are an adapter too: one line then says what is missing
        return any((path / name).is_file() for name in (ADAPTER_CONFIG, *ADAPTER_WEIGHTS))
    return path.name == ADAPTER_CONFIG and path.is_file()


def pattern_key(patterns: dict, module: str) -> str | None:
    """The first key of `patterns` that names `module`, as PEFT matches rank_pattern and alpha_pattern."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module):
            return key
    return None


@dataclass(frozen=True)
class LoraModule:
    """One adapted module: where its factors are stored and what turns them into the base weight's update."""

    name: str  # the module in the base model, e.g. model.layers.0.self_attn.q_proj
    kind: str  # linear | conv | embedding
    a_key: str
    b_key: str
    rank: int
    alpha: float
    scaling: float
    transposed: bool  # the base stores the weight as fan_in × fan_out (GPT-2's Conv1D, embeddings)
    shape: tuple[int, ...]  # of the base weight it updates

    @property
    def weight_key(self) -> str:
        return self.name + ".weight"


class LoraAdapter:
    """A LoRA adapter folder, opened lazily: config and shapes checked up front, factors read on request."""

    def __init__(self, path: str | Path):
        from ladle.io.checkpoints import open_ingredient

        path = Path(path)
        self.path = path if path.is_dir() else path.parent
        self.name = str(self.path)
        config_path = self.path / ADAPTER_CONFIG
        if not config_path.is_file():
            raise LadleError(f"not a LoRA adapter: no {ADAPTER_CONFIG}", file=self.path)
        self.config = _read_config(config_path)
        weights = next((self.path / w for w in ADAPTER_WEIGHTS if (self.path / w).is_file()), None)
        if weights is None:
            raise LadleError(f"adapter holds no weights (looked for {', '.join(ADAPTER_WEIGHTS)})", file=self.path)
        self.weights = open_ingredient(weights)
        self.files = [config_path, weights]
        self.notes: list[str] = []
        self.base_name = self.config.get("base_model_name_or_path")
        self.modules, self.full = self._parse(weights)

    def _parse(self, weights: Path) -> tuple[dict[str, LoraModule], dict[str, str]]:
        """Modules by the base weight key they update, and tensors saved whole by the base key they replace."""
        factors: dict[str, dict[str, tuple[str, str]]] = {}
        full: dict[str, str] = {}
        self.base_copies: dict[str, str] = {}  # an adapted embedding's own copy of the base weight (PEFT saves it)
        for stored in self.weights.keys():
            key = stored[len(PEFT_PREFIX):] if stored.startswith(PEFT_PREFIX) else stored
            suffix = next((s for s in FACTOR_KEYS if key.endswith(s)), None)
            if suffix is not None:
                factor, kind = FACTOR_KEYS[suffix]
                factors.setdefault(key[: -len(suffix)], {})[factor] = (stored, kind)
            elif ".lora_" in key:
                raise LadleError("a LoRA tensor ladle cannot make exact (DoRA magnitudes, LoRA biases, …)",
                                 file=weights, key=stored)
            elif ".base_layer." in key:
                self.base_copies[key.replace(".base_layer.", ".")] = stored
            else:
                full[key] = stored  # modules_to_save, trained biases: tensors that replace the base's
        modules = {}
        for name, parts in factors.items():
            if set(parts) != {"A", "B"}:
                missing = ({"A", "B"} - set(parts)).pop()
                raise LadleError(f"module '{name}' has no lora_{missing} factor", file=weights)
            modules[name + ".weight"] = self._module(name, parts, weights)
        if not modules:
            raise LadleError("adapter holds no LoRA factors (lora_A / lora_B)", file=weights)
        return modules, full

    def _module(self, name: str, parts: dict, weights: Path) -> LoraModule:
        (a_key, kind), (b_key, _) = parts["A"], parts["B"]
        a, b = self.weights.info(a_key).shape, self.weights.info(b_key).shape
        if len(a) > 2:
            kind = "conv"
        rank = a[0]
        if kind == "embedding":  # A: r × num_embeddings, B: dim × r
            ok = len(a) == 2 and len(b) == 2 and b[1] == rank
            shape, transposed = ((a[1], b[0]) if ok else ()), True
        elif kind == "conv":  # A: r × C_in × k…, B: C_out × r × 1…
            ok = len(b) == len(a) and b[1] == rank and all(d == 1 for d in b[2:])
            shape, transposed = ((b[0], *a[1:]) if ok else ()), False
        else:
            ok = len(a) == 2 and len(b) == 2 and b[1] == rank
            transposed = bool(self.config.get("fan_in_fan_out"))
            shape = ((a[1], b[0]) if transposed else (b[0], a[1])) if ok else ()
        if not ok:
            raise LadleError(f"lora_A {list(a)} and lora_B {list(b)} do not make an update of rank {rank}",
                             file=weights, key=b_key)
        config_rank = _pattern_value(self.config, "rank_pattern", "r", name, weights)
        if int(config_rank) != rank:
            raise LadleError(f"module '{name}': lora_A has rank {rank} but the config says r={config_rank} "
                             "(r / rank_pattern)", file=self.path / ADAPTER_CONFIG)
        alpha = float(_pattern_value(self.config, "alpha_pattern", "lora_alpha", name, weights))
        scaling = alpha / math.sqrt(rank) if self.config.get("use_rslora") else alpha / rank
        return LoraModule(name, kind, a_key, b_key, rank, alpha, scaling, transposed, tuple(shape))

    def rename(self, names: dict[str, str]) -> None:
        """Key modules and whole tensors by the base file's names (`names`: the model's key -> the file's), where
        transformers writes a module under another name than PEFT, which names it as the model does."""
        self.modules = {names.get(k, k): m for k, m in self.modules.items()}
        self.full = {names.get(k, k): v for k, v in self.full.items()}
        self.base_copies = {names.get(k, k): v for k, v in self.base_copies.items()}

    def factors(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(A, s·B) as 2-D float32 arrays (r × fan_in, fan_out × r): ΔW, in LoRA's layout, is their product."""
        m = self.modules[key]
        a = self.weights.array(m.a_key)
        b = self.weights.array(m.b_key)
        a = np.array(a, dtype=np.float32).reshape(m.rank, -1)  # a copy: the file's pages can go
        b = np.asarray(b, dtype=np.float32).reshape(-1, m.rank) * np.float32(m.scaling)
        self.weights.release(m.a_key)
        self.weights.release(m.b_key)
        return a, b

    def delta(self, key: str, accumulate=np.float32) -> np.ndarray:
        """ΔW = s·B·A in the base weight's own layout and shape."""
        a, b = self.factors(key)
        return to_base_layout(b.astype(accumulate) @ a.astype(accumulate), self.modules[key])

    def full_tensor(self, key: str) -> np.ndarray:
        return self.weights.array(self.full[key])

    def keys(self) -> list[str]:
        """Every base key this adapter changes: its modules' weights, then the tensors it saves whole."""
        return [*self.modules, *(k for k in self.full if k not in self.modules)]

    @property
    def nbytes(self) -> int:
        return self.weights.nbytes

    def __repr__(self) -> str:
        return f"LoraAdapter({self.name!r}, {len(self.modules)} modules)"


def to_base_layout(update: np.ndarray, module: LoraModule) -> np.ndarray:
    """An update in LoRA's layout (fan_out × fan_in) as the base stores the weight."""
    return (update.T if module.transposed else update).reshape(module.shape)


def open_adapter(source) -> LoraAdapter:
    return source if isinstance(source, LoraAdapter) else LoraAdapter(source)


def _read_config(path: Path) -> dict:
    from ladle.io.hf import read_json_object

    config = read_json_object(path)
    kind = config.get("peft_type", "LORA")
    if str(kind).upper() != "LORA":
        raise LadleError(f"peft_type: '{kind}' adapters cannot be souped exactly; ladle soups LoRA adapters", file=path)
    for name, why in NOT_EXACT.items():
        if config.get(name):
            raise LadleError(f"{name}: {why}; ladle soups plain LoRA adapters exactly and refuses the rest", file=path)
    for name in ("r", "lora_alpha"):
        value = config.get(name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise LadleError(f"{name}: must be a positive number, got {value!r}", file=path)
    for name in ("rank_pattern", "alpha_pattern"):
        if not isinstance(config.get(name) or {}, dict):
            raise LadleError(f"{name}: must be a mapping of module pattern -> value", file=path)
    return config


def _pattern_value(config: dict, pattern_field: str, field: str, module: str, where: Path):
    patterns = config.get(pattern_field) or {}
    key = pattern_key(patterns, module)
    value = patterns[key] if key is not None else config[field]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise LadleError(f"{pattern_field}: '{key}' must be a positive number, got {value!r}", file=where)
    return value
