"""How a model wants its images: resized and centre-cropped to its input size (uint8, cacheable), then scaled to
[0, 1] and normalised with its mean and std.

The split matters: the geometric part runs in DataLoader workers on decoded photos and its uint8 output can be
cached; the arithmetic part (x / 255 - mean) / std is the same float32 operations as torchvision's `ToTensor` +
`Normalize`, done per batch on the device. A model's own `Preprocess` comes from timm's data config (input size,
`crop_pct`, interpolation, mean, std), a Hugging Face `preprocessor_config.json`, or the default below.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace

DEFAULT_SIZE = 64  # models without a data config of their own (package.module:function models)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


@dataclass(frozen=True)
class Preprocess:
    """A model's eval transform: shorter side resized to `resize`, centre crop `size`, then mean/std."""

    size: int
    resize: int
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    origin: str = "default"  # where it comes from, for the record: timm's config, preprocessor_config.json, …
    squash: bool = False  # resize to resize × resize, ignoring the aspect ratio (HF processors with height/width)

    def __post_init__(self):
        from ladle.errors import LadleError

        if self.size < 1 or self.resize < self.size:
            raise LadleError(f"image-size: the input size {self.size} must be at least 1 and at most the resize "
                             f"{self.resize}")
        if self.interpolation not in INTERPOLATIONS:
            raise LadleError(f"preprocess: unknown interpolation '{self.interpolation}' (known: {', '.join(INTERPOLATIONS)})")

    @property
    def crop_pct(self) -> float:
        return self.size / self.resize

    def at_size(self, size: int) -> Preprocess:
        """The same transform at another resolution (`--image-size`): the crop fraction is kept, as timm does."""
        if size == self.size:
            return self
        return replace(self, size=size, resize=math.floor(size / self.crop_pct + 1e-9))

    def describe(self) -> dict:
        return asdict(self) | {"mean": list(self.mean), "std": list(self.std)}

    def key(self) -> str:
        """What the uint8 images depend on (mean and std do not change them): part of cache keys."""
        what = {"size": self.size, "resize": self.resize, "interpolation": self.interpolation, "squash": self.squash}
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]

    def geometric(self):
        """PIL image -> PIL image at the input size (torchvision's Resize + CenterCrop, antialiased)."""
        from torchvision import transforms
        from torchvision.transforms import InterpolationMode

        resize = (self.resize, self.resize) if self.squash else self.resize
        return transforms.Compose([transforms.Resize(resize, interpolation=InterpolationMode(self.interpolation)),
                                   transforms.CenterCrop(self.size)])


DEFAULT = Preprocess(DEFAULT_SIZE, DEFAULT_SIZE)  # no config of its own: shorter side to 64, centre crop, mean/std 0.5


def to_uint8_chw(image):
    """A PIL image -> uint8 tensor (3, H, W): the bytes ToTensor would divide by 255."""
    import numpy as np
    import torch

    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def timm_preprocess(name: str) -> Preprocess | None:
    """timm's eval data config for a model name (its default pretrained config), or None if timm has none."""
    import timm
    import timm.data

    try:
        cfg = timm.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001  unknown names are reported when the model is built
        return None
    if cfg is None:
        return None
    config = timm.data.resolve_data_config({}, pretrained_cfg=cfg.to_dict())
    if config.get("crop_mode", "center") != "center":
        return None  # squash / border crops: not the centre crop ladle reproduces
    size = int(config["input_size"][-1])
    if int(config["input_size"][-2]) != size:
        return None
    # timm: scale_size = floor(img_size / crop_pct)
    return Preprocess(size, math.floor(size / config["crop_pct"]), config["interpolation"] or "bilinear",
                      tuple(config["mean"]), tuple(config["std"]), f"timm:{name}")


def hf_preprocess(path) -> Preprocess | None:
    """A Hugging Face image processor's resize, crop and normalisation (preprocessor_config.json), as the
    transformers image-classification examples build them with torchvision."""
    from pathlib import Path

    file = Path(path) / "preprocessor_config.json"
    if not file.is_file():
        return None
    cfg = json.loads(file.read_text())
    size, squash = cfg.get("size", DEFAULT_SIZE), False
    if isinstance(size, dict):
        squash = "shortest_edge" not in size  # {"height", "width"}: resized to exactly that
        size = size.get("shortest_edge") or size.get("height") or DEFAULT_SIZE
    crop = cfg.get("crop_size", size) if cfg.get("do_center_crop", True) else size
    if isinstance(crop, dict):
        crop = crop.get("height") or size
    resample = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
    interpolation = resample.get(cfg.get("resample", 2), "bilinear")
    mean, std = tuple(cfg.get("image_mean", (0.5,) * 3)), tuple(cfg.get("image_std", (0.5,) * 3))
    return Preprocess(int(crop), max(int(size), int(crop)), interpolation, mean, std, "preprocessor_config.json", squash)
