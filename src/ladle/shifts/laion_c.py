"""LAION-C-style distortions: six synthetic corruptions that web-scale training data does not contain.

Li, Klein, Brendel, Geirhos, Zimmermann, "LAION-C: An Out-of-Distribution Benchmark for Web-Scale Vision
Models" (ICML 2025, arXiv 2506.16950) replaced ImageNet-C's blur and noise, which LAION is full of, with
Glitched, Mosaic, Stickers, Vertical Lines, Geometric Shapes and Luminance Checkerboard, each at five
intensities. The per-intensity parameters below are read from the authors' generation script
(github.com/FanfeiLi/LAION-C, distortions/apply_distortions.py). They are in pixels at 224 px and are scaled
here to the image side, so a 32 px and a 224 px image get the same distortion at different resolutions.

What we changed, and why:
- Sticker images and mosaic tiles were thumbnails of real photographs; we cannot ship those, so both are
  procedural thumbnails (a two-colour gradient with a disc of a third colour), drawn deterministically.
- The mosaic matched each cell to the nearest of ~1M tiles by mean colour; with a small library (216 tiles
  on a colour grid) we then shift the chosen tile by the remaining colour difference, as a near match would.
- The authors drew with PIL, one image at a time, with a fixed seed for the glitch; here every image gets
  its own parameters from its own seed, and the pixel work is tensor arithmetic over the whole batch.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from ladle.errors import LadleError
from ladle.registry import Registry

DISTORTIONS = Registry("distortion", importable=False)  # family -> fn(x, level 0-4, rngs); FAMILIES at the end
INTENSITIES = (1, 2, 3, 4, 5)
PAPER_SIDE = 224  # the paper's pixel parameters are for 224×224 images

_GLITCH_AMOUNT = (2, 4, 5, 8, 10)  # glitch-this level: 2·g band shifts of up to g²% of the width
_MOSAIC_TILE = (4, 6, 8, 16, 28)  # tile side, px at 224
_STICKERS = (100, 200, 400, 600, 1200)  # 16 px stickers at 224
_STICKER_SIDE = 16
_LINES = ((224, 1), (178, 2), (112, 4), (84, 6), (60, 8))  # (number of lines, vertical step px) at 224
_LINE_SHIFT = 40  # px at 224 a line bends left over black
_SHAPES = (150, 300, 600, 800, 1000)  # triangles, squares, stars, circles of 6-15 px at 224
_CHECKER_CELLS = 16  # 14 px cells at 224
_CHECKER_RANGE = ((0, 50), (50, 100), (100, 125), (125, 150), (150, 255))  # |brightness change|, of 255
_MOSAIC_LEVELS = 6  # library colours per channel
_CHUNK = 1 << 22  # candidate pixels per scatter when rasterising shapes


def distort(images: torch.Tensor, family: str, intensity: int, seeds) -> torch.Tensor:
    """images: float (N, 3, H, W) in [0, 1], any device; seeds: N ints (one per image).
    Returns a new float tensor of the same shape, dtype and device, in [0, 1]."""
    fn = DISTORTIONS.get(family, where="laion-c")
    if isinstance(intensity, bool) or intensity not in INTENSITIES:
        raise LadleError(f"laion-c: intensity must be one of 1-5, got {intensity!r}")
    if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise LadleError(f"laion-c: images must be a float tensor (N, 3, H, W), got {shape}")
    seeds = [int(s) for s in (seeds.tolist() if hasattr(seeds, "tolist") else seeds)]
    if len(seeds) != len(images):
        raise LadleError(f"laion-c: seeds must hold one int per image ({len(images)}), got {len(seeds)}")
    if len(images) == 0:
        return images.clone()
    x = images.to(torch.float64 if images.dtype == torch.float64 else torch.float32)
    rngs = [np.random.default_rng(s % (1 << 64)) for s in seeds]  # one stream per image: batch-independent
    return fn(x, intensity - 1, rngs).clamp(0, 1).to(images.dtype)


def _px(value_at_224: float, side: int) -> float:
    return value_at_224 * side / PAPER_SIDE


def _params(rngs, draw, x: torch.Tensor) -> torch.Tensor:
    """Stack each image's own random parameters, drawn by `draw(rng)`, on the images' device."""
    return torch.as_tensor(np.stack([draw(r) for r in rngs]), dtype=x.dtype, device=x.device)


@DISTORTIONS.register("glitched")
def _glitched(x, level, rngs):
    """Paper: glitch-this at level g with colour offset and scan lines. 2g horizontal bands (1 to H/4 rows)
    shift cyclically by up to g²% of the width (later bands win), one colour channel is rolled by up to 2g px,
    and every other row is black. Ours: the same, scaled; the rolled channel is the shifted one; scan lines stay
    1 px; shifts are capped at half the width, since a longer cyclic shift is a shorter one the other way
    (uncapped, level 5's shifts of up to the full width came out weaker than level 4's)."""
    n, _, h, w = x.shape
    g = _GLITCH_AMOUNT[level]
    max_shift, max_roll = int(min(g * g / 100, 0.5) * w), round(_px(2 * g, min(h, w)))

    def draw(rng):
        rows = np.zeros(h + 3)  # row shifts, then channel, dy, dx
        for _ in range(2 * g):
            start, height = rng.integers(0, h + 1), rng.integers(1, max(1, h // 4) + 1)
            rows[start : start + height] = rng.integers(-max_shift, max_shift + 1)
        rows[h:] = rng.integers(0, 3), *rng.integers(-max_roll, max_roll + 1, size=2)
        return rows

    p = _params(rngs, draw, x).long()
    roll = F.one_hot(p[:, h], 3)  # (N, 3): which channel is rolled
    dy, dx = (roll * p[:, h + 1, None])[..., None, None], (roll * p[:, h + 2, None])[..., None, None]
    ys = (torch.arange(h, device=x.device)[:, None] - dy) % h  # (N, 3, H, 1): source row
    xs = (torch.arange(w, device=x.device) - dx - p[:, :h].gather(1, ys.view(n, -1)).view(n, 3, h, 1)) % w
    out = x.flatten(2).gather(2, (ys * w + xs).flatten(2)).view_as(x)
    out[:, :, ::2] = 0
    return out


@lru_cache(maxsize=32)
def _mosaic_library(tile: int) -> tuple[torch.Tensor, torch.Tensor]:
    """216 procedural tiles (tile×tile, float64) whose colours sit near the points of a 6×6×6 colour grid."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(0, 1, _MOSAIC_LEVELS)] * 3, indexing="ij"), -1).reshape(-1, 3)
    p = _thumbnail_params(rng, len(grid))
    p[:, :9] = np.clip(np.tile(grid, 3) + rng.uniform(-0.2, 0.2, (len(grid), 9)), 0, 1)
    uv = (torch.arange(tile, dtype=torch.float64) + 0.5) / tile
    tiles = _thumbnail(torch.as_tensor(p)[:, None, None], uv[None, None, :], uv[None, :, None])
    return tiles.permute(0, 3, 1, 2), tiles.mean((1, 2))  # (216, 3, t, t), (216, 3)


def _mosaic_tile_px(side: int, level: int) -> int:
    return max(2, round(_px(_MOSAIC_TILE[level], side)))


@DISTORTIONS.register("mosaic")
def _mosaic(x, level, rngs):
    """Paper: cut the image into tiles (4-28 px at 224) and replace each by the thumbnail whose mean colour is
    nearest the tile's. Ours: the nearest library tile, shifted to the cell's exact mean colour. No randomness,
    as in the paper: the output depends on the image only through its cell means."""
    n, _, h, w = x.shape
    t = _mosaic_tile_px(min(h, w), level)
    rows, cols = -(-h // t), -(-w // t)
    pad = (0, cols * t - w, 0, rows * t - h)
    sums = F.avg_pool2d(F.pad(x, pad), t, divisor_override=1)
    counts = F.avg_pool2d(F.pad(torch.ones_like(x[:1, :1]), pad), t, divisor_override=1)
    means = (sums / counts).permute(0, 2, 3, 1)  # (N, rows, cols, 3)
    q = (means * (_MOSAIC_LEVELS - 1)).round().long().clamp(0, _MOSAIC_LEVELS - 1)
    pick = (q[..., 0] * _MOSAIC_LEVELS + q[..., 1]) * _MOSAIC_LEVELS + q[..., 2]
    tiles, tile_means = (a.to(x.device, x.dtype) for a in _mosaic_library(t))
    cells = tiles[pick] + (means - tile_means[pick])[..., None, None]  # (N, rows, cols, 3, t, t)
    return cells.permute(0, 3, 1, 4, 2, 5).reshape(n, 3, rows * t, cols * t)[:, :, :h, :w]


def _thumbnail_params(rng, k: int) -> np.ndarray:
    """k procedural thumbnails: colours a, b, c, gradient angle, disc centre (u, v) and radius."""
    return np.concatenate([rng.uniform(0, 1, (k, 9)), rng.uniform(0, 2 * np.pi, (k, 1)),
                           rng.uniform(0.25, 0.75, (k, 2)), rng.uniform(0.15, 0.35, (k, 1))], axis=1)


def _thumbnail(p, u, v):
    """A tiny stand-in photograph at (u, v) in [0, 1]²: gradient from a to b, with a disc of colour c."""
    t = (0.5 + (u - 0.5) * torch.cos(p[..., 9]) + (v - 0.5) * torch.sin(p[..., 9])).clamp(0, 1)
    disc = (u - p[..., 10]) ** 2 + (v - p[..., 11]) ** 2 <= p[..., 12] ** 2
    return torch.where(disc[..., None], p[..., 6:9], p[..., 0:3] + (p[..., 3:6] - p[..., 0:3]) * t[..., None])


def _paint(x, cx, cy, groups, reach, inside, colour):
    """Paste K shapes per image, later ones on top. Shape (i, k) is centred at (cx, cy)[i, k] px; one of
    group g (a kind and size) fits in ±reach(g) px, and inside(g, j, dx, dy) says which pixel centres it
    covers (j indexes the flattened shapes, dx, dy are offsets from their centres). Every pixel a shape
    covers votes that shape's k, the highest vote wins (scatter amax), and colour(images, k, dx, dy) paints."""
    n, _, h, w = x.shape
    hw = h * w
    shape_k = torch.arange(cx.shape[1], device=x.device).expand_as(cx).flatten()
    first_pixel = (torch.arange(n, device=x.device)[:, None] * hw).expand_as(cx).flatten()
    cxf, cyf, groups = cx.flatten(), cy.flatten(), groups.flatten()
    top = torch.full((n * hw + 1,), -1, dtype=torch.long, device=x.device)  # last slot: votes of no pixel
    for g in groups.unique().tolist():  # chunks of like shapes bound memory; all pixel work is batched
        r = reach(g)
        off = torch.arange(math.ceil(2 * r) + 1, device=x.device)  # pixels over [centre - r, centre + r]
        for j in (groups == g).nonzero().flatten().split(max(1, _CHUNK // len(off) ** 2)):
            px = (cxf[j] - r).floor().long()[:, None, None] + off  # (m, 1, P)
            py = (cyf[j] - r).floor().long()[:, None, None] + off[:, None]  # (m, P, 1)
            dx, dy = px + 0.5 - cxf[j, None, None], py + 0.5 - cyf[j, None, None]
            ok = inside(g, j, dx, dy) & ((px >= 0) & (px < w)) & ((py >= 0) & (py < h))
            flat = torch.where(ok, (first_pixel[j, None, None] + py * w) + px, n * hw)
            top.scatter_reduce_(0, flat.flatten(), shape_k[j, None, None].expand_as(flat).flatten(), "amax")
    top = top[: n * hw].view(n, hw)
    out = x.flatten(2).clone()
    pix = torch.arange(hw, device=x.device)
    step = max(1, _CHUNK // hw)
    for a in range(0, n, step):
        s = slice(a, a + step)
        k = top[s].clamp(min=0)
        painted = colour(s, k, pix % w + 0.5 - cx[s].gather(1, k), pix // w + 0.5 - cy[s].gather(1, k))
        out[s] = torch.where(top[s, None] >= 0, painted.permute(0, 2, 1), out[s])
    return out.view_as(x)


@DISTORTIONS.register("stickers")
def _stickers(x, level, rngs):
    """Paper: paste 100-1200 overlapping 16 px thumbnails of other ImageNet images at random places (fully
    inside the image). Ours: the same counts and 16/224 of the side, with procedural thumbnails."""
    h, w = x.shape[2:]
    k, side = _STICKERS[level], _px(_STICKER_SIDE, math.sqrt(h * w))
    most = _STICKERS[-1]  # draw for the largest count, use a prefix: more stickers, never other ones
    p = _params(rngs, lambda rng: np.concatenate([rng.uniform(0, 1, (most, 2)),
                                                  _thumbnail_params(rng, most)], axis=1)[:k], x)
    cx, cy = side / 2 + p[..., 0] * (w - side), side / 2 + p[..., 1] * (h - side)
    inside = lambda g, j, dx, dy: (dx.abs() <= side / 2) & (dy.abs() <= side / 2)  # noqa: E731
    colour = lambda s, k, dx, dy: _thumbnail(  # noqa: E731
        p[s, :, 2:].gather(1, k[..., None].expand(-1, -1, 13)), dx / side + 0.5, dy / side + 0.5)
    return _paint(x, cx, cy, torch.zeros_like(cx, dtype=torch.long), lambda g: side / 2, inside, colour)


@DISTORTIONS.register("vertical_lines")
def _vertical_lines(x, level, rngs):
    """Paper: redraw the image as l vertical 1 px lines on black (224-60 lines; fewer is stronger). Each line
    takes the mean colour of its column band over `step` rows and bends left by up to 40 px where that mean
    is dark. Ours: lines stay 1 px, so we keep their share of the width (l/224) rather than their count; steps
    and bends scale with the side; one pixel per row, linearly between the step points. No randomness."""
    n, _, h, w = x.shape
    lines, step = _LINES[level]
    k, step = max(1, round(lines * w / PAPER_SIDE)), max(1, round(_px(step, h)))
    bands = -(-h // step)
    col_line = torch.arange(w, device=x.device) * k // w  # line owning each column
    cell = (torch.arange(h, device=x.device)[:, None] // step * k + col_line).flatten()
    sums = torch.zeros(n, 3, bands * k, dtype=x.dtype, device=x.device).index_add_(2, cell, x.flatten(2))
    means = sums / torch.bincount(cell, minlength=bands * k).to(x.dtype)  # (N, 3, bands·k)
    luma = (means * torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)[:, None]).sum(1)
    bend = (torch.arange(k, device=x.device) * w / k) - _px(_LINE_SHIFT, w) * (1 - luma.view(n, bands, k))
    y = torch.arange(h, device=x.device)
    b0, frac = y // step, (y % step).to(x.dtype) / step
    b1 = (b0 + 1).clamp(max=bands - 1)
    xs = (bend[:, b0] * (1 - frac[:, None]) + bend[:, b1] * frac[:, None]).round().long()  # (N, H, k)
    ok = (xs >= 0) & (xs < w)
    flat = torch.where(ok, y[:, None] * w + xs, h * w).flatten(1)  # (N, H·k)
    src = means.view(n, 3, bands, k)[:, :, b0].flatten(2)  # colour of each (row, line); later lines on top
    top = torch.full((n, h * w + 1), -1, dtype=torch.long, device=x.device)  # last slot: off the image
    top = top.scatter_reduce_(1, flat, torch.arange(h * k, device=x.device).expand_as(flat), "amax")[:, : h * w]
    out = src.gather(2, top.clamp(min=0)[:, None].expand(-1, 3, -1)) * (top >= 0)[:, None]
    return out.view_as(x)


@DISTORTIONS.register("geometric_shapes")
def _geometric_shapes(x, level, rngs):
    """Paper: draw 150-1000 triangles, squares, 5-point stars and circles of random colour, 6-15 px, anywhere
    (stars rotated at random, centred on their anchor). Ours: the same with sizes as fractions of the side."""
    h, w = x.shape[2:]
    k, unit = _SHAPES[level], _px(1, math.sqrt(h * w))
    most = _SHAPES[-1]
    p = _params(rngs, lambda rng: np.concatenate([
        rng.uniform(0, 1, (most, 2)), rng.integers(0, 4, (most, 1)), rng.integers(6, 16, (most, 1)),
        rng.uniform(0, 1, (most, 3)), rng.uniform(0, 2 * np.pi, (most, 1))], axis=1)[:k], x)
    kind, size = p[..., 2].long(), p[..., 3] * unit  # kind: 0 triangle, 1 square, 2 star, 3 circle
    half = torch.where(kind == 2, 0, size / 2)  # every shape but the star hangs from its top-left anchor
    cx, cy = p[..., 0] * w + half, p[..., 1] * h + half

    def inside(g, j, dx, dy):
        return _SHAPE_TESTS[g // 2](size.flatten()[j, None, None], p[..., 7].flatten()[j, None, None], dx, dy)

    def reach(g):  # of shapes of one kind (triangle, square, star, circle), up to 10 or up to 15 px
        return (10, 15)[g % 2] * unit * (2**-0.5, 2**-0.5, 1 / 1.2, 0.5)[g // 2]

    colour = lambda s, k, dx, dy: p[s, :, 4:7].gather(1, k[..., None].expand(-1, -1, 3))  # noqa: E731
    return _paint(x, cx, cy, kind * 2 + (p[..., 3] > 10).long(), reach, inside, colour)


def _star(size, rot, dx, dy):
    """PIL's 10-point star of the paper: outer radius size/1.2, inner half that, turned by rot."""
    outer, sector = size / 1.2, 2 * math.pi / 5
    a = torch.remainder(torch.atan2(dx, dy) - rot, sector)
    a = torch.minimum(a, sector - a)  # angle from the nearest point, folded into [0, 36°]
    rho = torch.sqrt(dx**2 + dy**2)
    ex, ey = outer / 2 * math.cos(sector / 2) - outer, outer / 2 * math.sin(sector / 2)  # point -> notch
    return ex * rho * torch.sin(a) - ey * (rho * torch.cos(a) - outer) >= 0


_SHAPE_TESTS = (  # pixel-centre offsets (dx, dy) from the centre that a shape of this size covers
    lambda s, r, dx, dy: (dy.abs() <= s / 2) & (dx.abs() <= s / 2 - (dy + s / 2) / 2),  # triangle, point down
    lambda s, r, dx, dy: (dx.abs() <= s / 2) & (dy.abs() <= s / 2),  # square
    _star,
    lambda s, r, dx, dy: dx**2 + dy**2 <= (s / 2) ** 2,  # circle
)


@DISTORTIONS.register("luminance_checkerboard")
def _luminance_checkerboard(x, level, rngs):
    """Paper: a 16×16 checkerboard (14 px cells at 224) whose cells are brightened and darkened in turn by a
    random amount per cell, 0-50/255 at intensity 1 up to 150-255/255 at 5, added to all channels, clipped."""
    n, _, h, w = x.shape
    lo, hi = _CHECKER_RANGE[level]
    c = _CHECKER_CELLS
    amount = _params(rngs, lambda rng: rng.uniform(lo / 255, hi / 255, (c, c)), x)
    rows, cols = torch.arange(h, device=x.device) * c // h, torch.arange(w, device=x.device) * c // w
    sign = 1 - 2 * ((rows[:, None] + cols) % 2).to(x.dtype)
    return x + (amount[:, rows][:, :, cols] * sign)[:, None]



FAMILIES = tuple(DISTORTIONS)  # the paper's order, as defined above: glitched, mosaic, ..., luminance_checkerboard
