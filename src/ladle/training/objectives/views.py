"""Seeded, batched image augmentations for self-supervised views (the MoCo v3 / BYOL recipe, per image).

Every random draw comes from the run's generator, so a run's views are reproducible; the whole batch is
augmented in a few tensor operations (crops by `roi_align`), not image by image. Hue jitter is left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

GRAY = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)


@dataclass(frozen=True)
class View:
    """One view's augmentation: a random resized crop (area fraction `scale`, aspect 3/4–4/3) to `size` (None:
    the input's side, or a fraction of it when below 1), a horizontal flip, colour jitter (brightness, contrast,
    saturation by ±`jitter`) with probability `jitter_p`, grayscale, Gaussian blur, solarisation."""

    scale: tuple[float, float] = (0.2, 1.0)
    size: float | None = None
    flip: float = 0.5
    jitter: float = 0.4
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.0
    solarize_p: float = 0.0


def moco_views(scale: float = 0.2) -> tuple[View, View]:
    """MoCo v3's / BYOL's asymmetric pair: blur always on the first view, rarely on the second, which may solarise."""
    return View(scale=(scale, 1.0), blur_p=1.0), View(scale=(scale, 1.0), blur_p=0.1, solarize_p=0.2)


def _uniform(n: int, low: float, high: float, generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _chance(n: int, p: float, generator) -> torch.Tensor:
    return torch.rand(n, generator=generator) < p


def crop_resize(x: torch.Tensor, scale: tuple[float, float], size: int, generator) -> torch.Tensor:
    """A random resized crop of each image, resampled bilinearly to size × size."""
    n, _, h, w = x.shape
    area = _uniform(n, *scale, generator) * h * w
    ratio = torch.exp(_uniform(n, math.log(3 / 4), math.log(4 / 3), generator))
    cw = torch.sqrt(area * ratio).clamp(1, w)
    ch = torch.sqrt(area / ratio).clamp(1, h)
    x0 = _uniform(n, 0, 1, generator) * (w - cw)
    y0 = _uniform(n, 0, 1, generator) * (h - ch)
    boxes = torch.stack([torch.arange(n, dtype=torch.float32), x0, y0, x0 + cw, y0 + ch], dim=1)
    return roi_align(x, boxes.to(x.dtype), output_size=size, spatial_scale=1.0, sampling_ratio=2, aligned=True)


def _blend(a: torch.Tensor, b: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (b + factor.view(-1, 1, 1, 1) * (a - b)).clamp(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Each image blurred with its own sigma (a separable kernel of ~10 % of the side, odd, at least 3)."""
    n, c, h, w = x.shape
    k = max(3, (min(h, w) // 10) | 1)
    t = torch.arange(k, dtype=x.dtype) - k // 2
    kernel = torch.exp(-(t.view(1, -1) ** 2) / (2 * sigma.view(-1, 1).to(x.dtype) ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n·c, k)
    flat = F.pad(x.reshape(1, n * c, h, w), (k // 2,) * 4, mode="reflect")
    flat = F.conv2d(flat, kernel.view(n * c, 1, 1, k), groups=n * c)
    flat = F.conv2d(flat, kernel.view(n * c, 1, k, 1), groups=n * c)
    return flat.view(n, c, h, w)


def augment(x: torch.Tensor, view: View, generator: torch.Generator) -> torch.Tensor:
    """One view of a batch of images in [0, 1] (N, 3, H, W); the result stays in [0, 1]."""
    n, _, h, _ = x.shape
    side = h if view.size is None else int(view.size) if view.size >= 1 else max(1, round(view.size * h))
    out = crop_resize(x, view.scale, side, generator)
    flip = _chance(n, view.flip, generator)
    out = torch.where(flip.view(-1, 1, 1, 1), out.flip(-1), out)
    if view.jitter > 0:
        on = _chance(n, view.jitter_p, generator)
        ones = torch.ones(n)
        b, c, s = (torch.where(on, _uniform(n, 1 - view.jitter, 1 + view.jitter, generator), ones) for _ in range(3))
        out = _blend(out, torch.zeros_like(out), b)
        gray = (out * GRAY).sum(1, keepdim=True)
        out = _blend(out, gray.mean((2, 3), keepdim=True).expand_as(out), c)
        out = _blend(out, (out * GRAY).sum(1, keepdim=True).expand_as(out), s)
    gray = _chance(n, view.grayscale_p, generator).view(-1, 1, 1, 1)
    out = torch.where(gray, (out * GRAY).sum(1, keepdim=True).expand_as(out), out)
    if view.blur_p > 0:
        blur = _chance(n, view.blur_p, generator)
        sigma = _uniform(n, 0.1, 2.0, generator)
        out = torch.where(blur.view(-1, 1, 1, 1), gaussian_blur(out, sigma), out)
    if view.solarize_p > 0:
        sol = _chance(n, view.solarize_p, generator).view(-1, 1, 1, 1)
        out = torch.where(sol & (out >= 0.5), 1 - out, out)
    return out.contiguous()
