"""LAION-C-style distortions on real photographs (scikit-image's bundled ones): determinism, batch
independence, strength growing with intensity, and the property that defines each family."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from ladle.errors import LadleError
from ladle.shifts.laion_c import FAMILIES, INTENSITIES, _mosaic_tile_px, distort

RANDOM_FAMILIES = ("glitched", "stickers", "geometric_shapes", "luminance_checkerboard")
PASTING_FAMILIES = ("stickers", "geometric_shapes")  # paste image-independent content over the image


def photo(image: np.ndarray, size: int) -> torch.Tensor:
    """Centre square crop, resized to size×size with torch: (1, 3, size, size) in [0, 1]."""
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
    h, w = x.shape[2:]
    s = min(h, w)
    x = x[:, :, (h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def photos(size: int) -> torch.Tensor:
    return torch.cat([photo(f(), size) for f in (data.astronaut, data.chelsea, data.coffee, data.rocket)])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tensors are small: waking a second thread costs more than it saves, far more on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def x64() -> torch.Tensor:
    return photos(64)


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b) ** 2).mean().item()


# --- every family -------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seeds_same_images_and_seeds_matter_where_there_is_randomness(family, x64):
    a = distort(x64, family, 3, [1, 2, 3, 4])
    assert torch.equal(a, distort(x64, family, 3, [1, 2, 3, 4]))
    b = distort(x64, family, 3, [5, 6, 7, 8])
    if family in RANDOM_FAMILIES:
        assert all(not torch.equal(a[i], b[i]) for i in range(len(x64)))
    else:  # mosaic and vertical lines are deterministic drawings of the image, as in the paper
        assert torch.equal(a, b)


@pytest.mark.parametrize("family", FAMILIES)
def test_an_image_does_not_depend_on_its_batch(family, x64):
    seeds = torch.tensor([11, 12, 13, 14])
    whole = distort(x64, family, 4, seeds)
    assert torch.equal(distort(x64[[2]], family, 4, seeds[[2]])[0], whole[2])
    flipped = distort(x64.flip(0), family, 4, seeds.flip(0).tolist())
    assert torch.equal(flipped, whole.flip(0))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shape,dtype", [((2, 3, 32, 32), torch.float32), ((1, 3, 96, 96), torch.float64),
                                         ((2, 3, 48, 80), torch.float32)])
def test_shape_dtype_and_range_kept_and_input_untouched(family, shape, dtype):
    x = F.interpolate(photos(96)[: shape[0]], size=shape[2:], mode="area").to(dtype)
    before = x.clone()
    for intensity in (1, 5):
        y = distort(x, family, intensity, np.arange(shape[0]))
        assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
        assert y.min() >= 0 and y.max() <= 1
        assert not torch.equal(y, x)
    assert torch.equal(x, before)
    assert distort(x[:0], family, 3, []).shape == (0, *shape[1:])


@pytest.mark.parametrize("family", FAMILIES)
def test_strength_grows_with_intensity(family, x64):
    """Mean squared difference from the original, over four photographs × three seeds."""
    x = x64.repeat(3, 1, 1, 1)
    seeds = list(range(100, 100 + len(x)))
    strength = [mse(distort(x, family, i, seeds), x) for i in INTENSITIES]
    assert all(b >= a - 1e-9 for a, b in zip(strength, strength[1:])), strength
    if family == "glitched":  # the black scan lines are the same at every intensity: look between them
        strength = [mse(distort(x, family, i, seeds)[:, :, 1::2], x[:, :, 1::2]) for i in INTENSITIES]
        assert all(b >= a - 1e-9 for a, b in zip(strength, strength[1:])), strength
    assert strength[-1] > 1.5 * strength[0], strength


# --- what defines each family -------------------------------------------------------------------------


def test_glitched_rows_are_cyclic_shifts_with_black_scan_lines(x64):
    """Bands of rows shift cyclically; one channel is rolled in 2-D; every other row is black."""
    for intensity in INTENSITIES:
        for i, out in enumerate(distort(x64[:2], "glitched", intensity, [3, 4])):
            src = x64[i]
            h, w = src.shape[1:]
            assert (out[:, ::2] == 0).all()
            same_values = (out[:, 1::2, None].sort(-1).values == src[:, None].sort(-1).values).all(-1)
            kept_in_place = same_values[:, torch.arange(h // 2), torch.arange(1, h, 2)].all(1)  # (channel,)
            assert kept_in_place.sum() >= 2  # only one channel leaves its rows
            for c in range(3):
                for row, y in enumerate(range(1, h, 2)):
                    source = same_values[c, row].nonzero().flatten()
                    assert len(source) > 0, (intensity, i, c, y)  # the values of some input row...
                    rolls = torch.stack([src[c, source[0]].roll(s) for s in range(w)])
                    assert (rolls == out[c, y]).all(-1).any(), (intensity, i, c, y)  # ...cyclically shifted
            assert not torch.equal(out[:, 1::2], src[:, 1::2])


def test_glitched_shifts_more_rows_further_with_intensity(x64):
    moved = []
    for intensity in INTENSITIES:
        out = distort(x64, "glitched", intensity, [1, 2, 3, 4])
        moved.append((out[:, :, 1::2] != x64[:, :, 1::2]).float().mean().item())
    assert moved[0] < moved[2] < moved[4], moved


def test_mosaic_depends_only_on_cell_means_which_it_keeps(x64):
    for intensity in INTENSITIES:
        t = _mosaic_tile_px(64, intensity - 1)
        flat = x64.clone()  # every tile-sized cell replaced by its mean colour
        for y in range(0, 64, t):
            for x in range(0, 64, t):
                flat[:, :, y : y + t, x : x + t] = x64[:, :, y : y + t, x : x + t].mean((2, 3), keepdim=True)
        out = distort(x64, "mosaic", intensity, [0] * 4)
        assert torch.allclose(distort(flat, "mosaic", intensity, [0] * 4), out, atol=1e-5)
        cells = F.avg_pool2d(out, t, ceil_mode=True)
        assert (cells - F.avg_pool2d(x64, t, ceil_mode=True)).abs().mean() < 0.02  # clipping only
        assert (out - flat).abs().mean() > 0.02  # tiles carry their own texture, not the image's


def test_mosaic_tiles_are_the_papers_at_224_and_grow_at_every_size():
    assert [_mosaic_tile_px(224, i) for i in range(5)] == [4, 6, 8, 16, 28]
    for side in (32, 64, 96):
        tiles = [_mosaic_tile_px(side, i) for i in range(5)]
        assert tiles == sorted(tiles) and tiles[-1] > tiles[0] >= 2
        assert abs(tiles[-1] - 28 * side / 224) <= 1


@pytest.mark.parametrize("family", PASTING_FAMILIES)
def test_pasted_regions_alone_change_and_cover_more_with_intensity(family, x64):
    """Pasted content ignores the image: two different images get the same pixels wherever something was
    pasted, and keep their own pixels everywhere else."""
    other = (x64 + 0.5) % 1  # differs from x64 by 0.5 in every value
    covered = []
    for intensity in INTENSITIES:
        a, b = distort(x64, family, intensity, [9] * 4), distort(other, family, intensity, [9] * 4)
        pasted = (a == b).all(1, keepdim=True).expand_as(a)
        assert torch.equal(a[~pasted], x64[~pasted]) and torch.equal(b[~pasted], other[~pasted])
        covered.append(pasted[:, 0].float().mean().item())
    assert all(q > p for p, q in zip(covered, covered[1:])), covered
    if family == "stickers":  # n squares of side s placed fully inside: P(pixel covered) = 1 - (1 - pₓ·p_y)^n
        s = 16 / 224 * 64
        centre = np.arange(64) + 0.5
        p = (np.minimum(centre, 64 - s) - np.maximum(centre - s, 0)).clip(0) / (64 - s)
        expected = [(1 - (1 - np.outer(p, p)) ** n).mean() for n in (100, 200, 400, 600, 1200)]
        assert np.allclose(covered, expected, atol=0.04), (covered, expected)
    else:
        assert 0.12 < covered[0] < 0.35 and covered[-1] > 0.75, covered


def test_stickers_are_unions_of_squares_one_fourteenth_of_the_side():
    """At 224 px the paper's 16 px stickers: every pasted pixel lies in a fully pasted 16×16 square."""
    a = distort(torch.zeros(1, 3, 224, 224), "stickers", 1, [5])
    b = distort(torch.ones(1, 3, 224, 224), "stickers", 1, [5])
    pasted = (a == b).all(1, keepdim=True).float()

    def opened(side: int) -> torch.Tensor:  # the pixels that lie in some fully pasted side×side square
        full = (F.avg_pool2d(pasted, side, stride=1) == 1).float()
        return F.max_pool2d(F.pad(full, (side - 1,) * 4), side, stride=1)

    assert pasted.sum() > 0
    assert torch.equal(opened(16), pasted)
    assert not torch.equal(opened(17), pasted)  # and not of anything bigger


def test_luminance_checkerboard_shifts_each_cell_by_one_amount_with_alternating_signs(x64):
    ranges = ((0, 50), (50, 100), (100, 125), (125, 150), (150, 255))
    for size in (64, 100):
        x = F.interpolate(x64, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
        edges = [next(p for p in range(size + 1) if p * 16 // size >= k) for k in range(17)]
        for intensity, (lo, hi) in zip(INTENSITIES, ranges):
            out = distort(x, "luminance_checkerboard", intensity, [1, 2, 3, 4])
            for i in range(len(x)):
                for r in range(16):
                    for c in range(16):
                        cell = (slice(None), slice(edges[r], edges[r + 1]), slice(edges[c], edges[c + 1]))
                        o, s = out[i][cell], x[i][cell]
                        free = (o > 0) & (o < 1)  # not clipped
                        sign = 1 if (r + c) % 2 == 0 else -1
                        assert ((o - s) * sign >= -1e-6).all()  # brighter on even cells, darker on odd
                        if free.sum() >= 2:
                            delta = (o - s)[free]
                            assert delta.max() - delta.min() < 1e-5  # one amount per cell, all channels
                            assert lo / 255 - 1e-5 <= abs(delta[0].item()) <= hi / 255 + 1e-5


def test_vertical_lines_redraw_a_flat_image_as_whole_columns_bent_left_by_darkness():
    lines_at_64 = [round(n * 64 / 224) for n in (224, 178, 112, 84, 60)]
    for intensity, count in zip(INTENSITIES, lines_at_64):
        white = distort(torch.ones(1, 3, 64, 64), "vertical_lines", intensity, [0])[0]
        gray = distort(torch.full((1, 3, 64, 64), 0.5), "vertical_lines", intensity, [0])[0]
        for out, value in ((white, 1.0), (gray, 0.5)):
            lit = out[0] > 0
            assert (lit.all(0) | ~lit.any(0)).all()  # whole columns, nothing in between
            assert torch.equal(out[:, lit], torch.full_like(out[:, lit], value))  # in the image's colour
        white_cols = white[0].amax(0).nonzero().flatten()
        gray_cols = gray[0].amax(0).nonzero().flatten()
        assert len(white_cols) == count  # the paper's share of lit columns, l/224
        bend = 40 / 224 * 64 * 0.5  # half-dark: half the paper's 40 px bend, scaled to 64 px
        assert len(white_cols) - len(gray_cols) == sum(1 for k in range(count) if k * 64 / count - bend < -0.5)
        shift = (white_cols[-len(gray_cols) :] - gray_cols).float()  # the same lines, moved left
        assert shift.min() >= math.floor(bend) and shift.max() <= math.ceil(bend)
        assert abs(shift.mean().item() - bend) < 0.5


def test_vertical_lines_leave_a_black_background_that_grows_with_intensity(x64):
    black = []
    for intensity, lines in zip(INTENSITIES, (224, 178, 112, 84, 60)):
        out = distort(x64, "vertical_lines", intensity, [0] * 4)
        lit_per_row = (out.amax(1) > 0).sum(-1)
        assert lit_per_row.max() <= round(lines * 64 / 224)  # one pixel per line per row
        black.append((out.amax(1) == 0).float().mean().item())
    assert all(q > p for p, q in zip(black, black[1:])), black


# --- bad input ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("family,intensity,field", [("blur", 3, "distortion"), ("mosaic", 0, "intensity"),
                                                    ("mosaic", 6, "intensity"), ("mosaic", "3", "intensity")])
def test_bad_family_or_intensity_is_one_line_naming_the_field(family, intensity, field, x64):
    with pytest.raises(LadleError, match=field) as info:
        distort(x64, family, intensity, [0] * 4)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("images", [torch.rand(2, 1, 8, 8), torch.rand(3, 8, 8),
                                    torch.zeros(2, 3, 8, 8, dtype=torch.uint8)])
def test_wrong_images_are_named(images):
    with pytest.raises(LadleError, match="images"):
        distort(images, "glitched", 1, [0] * len(images))


def test_one_seed_per_image(x64):
    with pytest.raises(LadleError, match="seeds"):
        distort(x64, "stickers", 1, [0, 1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("family", FAMILIES)
def test_cuda_matches_cpu(family, x64):
    out = distort(x64.cuda(), family, 3, [1, 2, 3, 4])
    assert out.device.type == "cuda"
    assert (out.cpu() - distort(x64, family, 3, [1, 2, 3, 4])).abs().gt(1e-4).float().mean() < 0.01
