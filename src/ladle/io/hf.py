"""Hugging Face directories: a soup directory loads where its ingredients load.

A directory soup carries its ingredients' non-weight files (config, generation config, tokenizer, preprocessor
config, chat templates, …) byte for byte, from the first ingredient or from `config_from`. Their `config.json`
files must agree on everything that shapes the weights; other differences (a `_name_or_path`, a dropout rate) are
allowed and listed in the manifest.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ladle.errors import LadleError

CONFIG = "config.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".npz")
# ladle writes its own manifest and model card; a training run's records describe one ingredient, not the soup
NOT_CARRIED = frozenset({"ladle.json", "README.md", "trainer_state.json", "training_args.json", "all_results.json",
                         "train_results.json", "eval_results.json"})
# Config fields that shape the weights: the architecture, and sizes (names below); numbers of labels are compared
# by count, not by their names.
SHAPE_NAMES = frozenset({"architectures", "architecture", "model_type", "num_labels", "num_classes",
                         "tie_word_embeddings", "tie_embeddings", "attention_bias", "mlp_bias", "qkv_bias",
                         "use_bias", "bias", "add_bias_linear", "num_experts", "num_local_experts", "number of labels",
                         "position_embedding_type", "mlp_ratio"})
SIZE_PATTERN = re.compile(r"(^|_)(size|sizes|dim|dims|channels|layers|heads|vocab|embd|embed|depths|width|widths|"
                          r"experts|groups|positions|ff|inner|kv|patch)(_|$)|^(n|num|d|max_position)_|"
                          r"^(d_model|hidden_size|intermediate_size|vocab_size|max_position_embeddings)$")
NOT_SHAPES = frozenset({"num_beams", "num_beam_groups", "num_return_sequences", "no_repeat_ngram_size",
                        "encoder_no_repeat_ngram_size", "max_length", "min_length", "chunk_size_feed_forward",
                        "sliding_window", "max_window_layers", "num_hidden_layers_to_skip"})
LABEL_FIELDS = ("id2label", "label2id")


@dataclass
class Carried:
    """What a directory soup takes from a Hugging Face folder: its non-weight files and its config."""

    source: Path | None = None
    files: list[Path] = field(default_factory=list)
    config: dict | None = None
    differences: list[dict] = field(default_factory=list)  # allowed config differences between ingredients

    def manifest(self) -> dict:
        return {"carried_files": {"from": str(self.source) if self.source else None,
                                  "files": [f.name for f in self.files]},
                "config_differences": self.differences}


def plan_carry(sources: list, config_from=None) -> Carried:
    """Which folder's files a directory soup carries (`config_from`, else the first ingredient that is an HF
    directory), after checking that the configs of every ingredient (and base) agree on the weights' shapes."""
    directories = [d for d in map(source_directory, sources) if d is not None]
    chosen = None
    if config_from is not None:
        chosen = source_directory(config_from)
        if chosen is None:
            raise LadleError("config_from: not a directory (give the Hugging Face folder whose config and tokenizer "
                             "the soup should carry)", file=config_from)
    source = chosen or (directories[0] if directories else None)
    if source is None:
        return Carried()
    config = read_config(source)
    compare_tokenizers([source, *directories])
    differences = compare_configs(source, config, directories, refuse=chosen is None)
    return Carried(source, carried_files(source), config, differences)


def source_directory(source) -> Path | None:
    """The Hugging Face directory an ingredient comes from: itself, or the folder of its index file."""
    if not isinstance(source, (str, Path)):
        return None
    path = Path(source)
    if path.is_dir():
        return path
    if path.name.endswith(".index.json"):
        return path.parent
    return None


def carried_files(directory: Path) -> list[Path]:
    """The top-level files of an HF directory that are not weights: config, tokenizer, templates, …"""
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name not in NOT_CARRIED
                  and not p.name.endswith(WEIGHT_SUFFIXES) and not p.name.endswith((".index.json", ".safetensors.json")))


def read_config(directory: Path) -> dict | None:
    path = directory / CONFIG
    return read_json_object(path) if path.is_file() else None


def read_json_object(path: Path) -> dict:
    """A JSON file holding an object (config.json, adapter_config.json); one line naming the file otherwise."""
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LadleError(f"not valid JSON: {e}", file=path) from None
    if not isinstance(config, dict):
        raise LadleError("not a JSON object", file=path)
    return config


def shapes_weights(field: str) -> bool:
    """Does this config field (a dotted name for nested configs) decide the weights' keys or shapes?"""
    name = field.rsplit(".", 1)[-1]
    if name in NOT_SHAPES or name.endswith("_token_id") or "dropout" in name or name.endswith("_prob"):
        return False
    return name in SHAPE_NAMES or bool(SIZE_PATTERN.search(name))


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """Dotted field -> value; label maps become their count, so renamed labels are not a shape difference."""
    out: dict[str, object] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if key in LABEL_FIELDS and isinstance(value, dict):
            out[f"{prefix}number of labels"] = len(value)
            out[name] = value
        elif isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def compare_configs(reference_dir: Path, reference: dict | None, directories: list[Path], refuse: bool) -> list[dict]:
    """Check the ingredients' configs against `reference`, the one the soup carries (from `reference_dir`); return
    the differences that are allowed.

    With `refuse` (no --config-from), a difference in a field that shapes the weights is refused in one line naming
    both files and the field; otherwise every difference is allowed. Each allowed difference is returned for the
    manifest."""
    if reference is None:
        return []
    reference_path, ref = reference_dir / CONFIG, flatten(reference)
    differences = []
    for directory in directories:
        other = read_config(directory) if directory.resolve() != reference_dir.resolve() else None
        if other is None:
            continue
        path, other = directory / CONFIG, flatten(other)
        for field in sorted(set(ref) | set(other)):
            a, b = ref.get(field, "<missing>"), other.get(field, "<missing>")
            if a == b:
                continue
            if refuse and shapes_weights(field):
                raise LadleError(f"field '{field}' is {_short(b)} here but {_short(a)} in {reference_path}: the "
                                 "configs disagree on the weights' shapes (--config-from DIR says which config the "
                                 "soup carries)", file=path)
            differences.append({"field": field, "file": str(path), "value": b, "carried": a,
                                "shapes_weights": shapes_weights(field)})
    return differences


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model", "special_tokens_map.json")


def has_tokenizer(folder) -> bool:
    """Whether a folder holds a tokenizer (a file check: nothing is read or hashed)."""
    folder = Path(folder)
    return any((folder / name).is_file() for name in (*TOKENIZER_FILES, "tokenizer_config.json"))


def tokenizer_identity(folder) -> str | None:
    """What two tokenizers must share to read the same token ids: the vocabulary and the special tokens (a hash);
    None for a folder without a tokenizer."""
    folder = Path(folder)
    parts = []
    for name in TOKENIZER_FILES:
        if (folder / name).is_file():
            data = (folder / name).read_bytes()
            if name == "tokenizer.json":  # the vocabulary, merges and added tokens; not truncation/padding settings
                try:
                    spec = json.loads(data)
                    data = json.dumps({k: spec.get(k) for k in ("model", "added_tokens", "normalizer",
                                                                 "pre_tokenizer")}, sort_keys=True).encode()
                except ValueError:
                    pass
            parts.append(name.encode() + b"\0" + hashlib.sha256(data).digest())
    config = folder / "tokenizer_config.json"
    if config.is_file():
        try:
            cfg = json.loads(config.read_text())
            special = {k: v for k, v in cfg.items() if k.endswith("_token") or k == "added_tokens_decoder"}
            parts.append(json.dumps(special, sort_keys=True, default=str).encode())
        except ValueError:
            pass
    if not parts:
        return None
    return hashlib.sha256(b"\n".join(parts)).hexdigest()[:16]


def compare_tokenizers(directories: list[Path]) -> None:
    """Models that read different token ids cannot be souped or compared: every HF folder with a tokenizer must
    have the first one's (vocabulary and special tokens), or one line names the file that differs."""
    found = [(d, tokenizer_identity(d)) for d in directories]
    found = [(d, ident) for d, ident in found if ident is not None]
    for directory, identity in found[1:]:
        if identity != found[0][1]:
            raise LadleError(f"its tokenizer differs from the one in {found[0][0]} (vocabulary or special tokens): "
                             "these models read different token ids", file=directory)


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "…"


def library_name(config: dict | None) -> str | None:
    """The library that loads this directory, as the Hub names it."""
    if not config:
        return None
    if "library_name" in config:
        return str(config["library_name"])
    if "transformers_version" in config or "architectures" in config:
        return "transformers"
    if "architecture" in config and "pretrained_cfg" in config:
        return "timm"
    return None


def model_card(manifest: dict, title: str, command: list[str] | None, config: dict | None) -> str:
    """README.md of a soup directory: Hugging Face front matter, then how the soup was made and how to remake it."""
    import shlex

    import yaml

    from ladle.results.text import format_trace
    from ladle.soup.recipes import RECIPES

    recipe = RECIPES[manifest["recipe"]] if manifest["recipe"] in RECIPES else None
    front: dict = {}
    if manifest.get("base"):
        front["base_model"] = manifest["base"]["path"]
    front["tags"] = ["model-soup", "ladle", manifest["recipe"]]
    library = library_name(config)
    if library:
        front["library_name"] = library
    ings = manifest["ingredients"]
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {title}", "",
             f"A model soup of {len(ings)} checkpoints, made by ladle {manifest['versions']['ladle']}: recipe "
             f"`{manifest['recipe']}`" + (f", {recipe.summary[0].lower()}{recipe.summary[1:].rstrip('.')}" if recipe else "")
             + (f" ({recipe.reference})." if recipe and recipe.reference else ""), "",
             "## Ingredients", "", "| # | checkpoint | sha256 | weight |", "|---|---|---|---|"]
    for i, (ing, w) in enumerate(zip(ings, manifest["weights"])):
        lines.append(f"| {i} | `{ing['path']}` | `{ing.get('sha256', _shard_hashes(ing))}` | {w:.6g} |")
    if manifest.get("base"):
        base_weight = manifest.get("base_weight")
        lines.append(f"| base | `{manifest['base']['path']}` | `{manifest['base'].get('sha256', _shard_hashes(manifest['base']))}` "
                     f"| {'per tensor' if base_weight is None else f'{base_weight:.6g}'} |")
    lines += ["", "## Parameters", "", "```yaml",
              yaml.safe_dump({"recipe": manifest["recipe"], "parameters": manifest["parameters"],
                              "dtype_policy": manifest["dtype_policy"], "selection": manifest["selection"]},
                             sort_keys=False).strip(), "```"]
    trace = format_trace(manifest.get("trace") or {})
    if trace:
        lines += ["", "## How the weights were chosen", "", "```text", trace, "```"]
    elif manifest.get("trace"):
        lines += ["", "Per-tensor details of the recipe (its `trace`) are in `ladle.json`."]
    lines += ["", "## Reproduce", ""]
    if command:
        lines += ["From the folder the soup was cooked in:", "", "```bash", shlex.join(command), "```"]
    else:
        lines.append("Cooked from in-memory state dicts through the Python API: no command line remakes it.")
    carried = manifest.get("carried_files")
    if carried and carried.get("files"):
        lines += ["", f"Config and tokenizer files come unchanged from `{carried['from']}`: "
                  + ", ".join(f"`{f}`" for f in carried["files"]) + "."]
    for d in manifest.get("config_differences") or []:
        lines.append(f"- `{d['file']}` differs in `{d['field']}`: {_short(d['value'])} (carried: {_short(d['carried'])})")
    lines += ["", "`ladle.json` holds the complete manifest (every input's sha256, versions, notes)."]
    return "\n".join(lines) + "\n"


def _shard_hashes(entry: dict) -> str:
    return ", ".join(f["sha256"][:16] + "…" for f in entry.get("files", [])) or "in memory"
