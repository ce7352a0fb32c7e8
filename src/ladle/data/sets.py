"""The two kinds of split a model is tasted on, behind one interface (`len`, `y`, `classes`, `source`, `subset`,
`batches`): `ImageSet`, images held in memory (small sources, corrupted sets, the preprocessed cache, mapped from
disk), and `ladle.data.stream.StreamSet`, images decoded as they are read."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch


@dataclass
class ImageSet:
    """Images (N, 3, H, W), floats in [0, 1] or uint8 (then x / 255), labels, and where they came from."""

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]
    source: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, indices, tag: str) -> ImageSet:
        idx = torch.as_tensor(indices, dtype=torch.long)
        part = ImageSet(self.x[idx], self.y[idx], self.classes, dict(self.source, subset=tag, size=len(idx)))
        part.source["fingerprint"] = fingerprint(part)  # its own content: stored results never mix a part with the whole
        return part

    def batches(self, batch_size: int, **_) -> Iterator[torch.Tensor]:
        """Consecutive slices, in example order (uint8 or floats, as held: `unit` converts)."""
        for start in range(0, len(self), batch_size):
            yield self.x[start : start + batch_size]

    def floats(self) -> ImageSet:
        """The same set with float images in [0, 1] (what training and the corruptions read)."""
        return self if self.x.is_floating_point() else ImageSet(unit(self.x), self.y, self.classes, self.source)


def unit(x: torch.Tensor) -> torch.Tensor:
    """Images as floats in [0, 1]: uint8 divided by 255 in float32, exactly as torchvision's ToTensor."""
    return x.to(torch.float32).div_(255) if x.dtype == torch.uint8 else x


def fingerprint(data: ImageSet) -> str:
    """A content hash of labels and images: equal data, equal cache keys (uint8 and x / 255 hash alike)."""
    h = hashlib.sha256()
    h.update(data.y.numpy().tobytes())
    x = data.x if data.x.dtype == torch.uint8 else (data.x * 255).round().to(torch.uint8)
    h.update(x.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
