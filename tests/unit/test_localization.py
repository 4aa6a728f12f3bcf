"""Tests for cnnviz.localization: thresholds, regions, contours and the dense CRF."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage.filters import threshold_otsu

from cnnviz.localization import (
    Region,
    crf_grid_shape,
    dense_crf_refine,
    mask_to_regions,
    otsu_threshold,
    scale_regions,
    threshold_mask,
)
from cnnviz.localization import crf as crf_mod

# ----------------------------------------------------------------------------- threshold


def test_fraction_threshold_boundary_is_inclusive_after_min_max_normalization() -> None:
    # Offset and scale are irrelevant: normalized values are 0, .25, .5, .75, 1.
    m = torch.tensor([[10.0, 12.0, 14.0, 16.0, 18.0]])
    assert threshold_mask(m, "fraction", 0.5).tolist() == [[False, False, True, True, True]]
    assert threshold_mask(m, "fraction", 0.5000001).tolist() == [[False, False, False, True, True]]
    assert threshold_mask(m, "fraction", 0.0).all()
    assert threshold_mask(m, "fraction", 1.0).tolist() == [[False, False, False, False, True]]


def test_fraction_threshold_negative_map_uses_min_max_not_raw_max() -> None:
    # Raw rule "m >= 0.5 * max" would keep everything (max is negative); min-max keeps the top half.
    m = torch.tensor([[-4.0, -3.0, -2.0, -1.0]])
    assert threshold_mask(m, fraction=0.5).tolist() == [[False, False, True, True]]


def test_fraction_threshold_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        threshold_mask(torch.zeros(2, 2), fraction=1.5)
    with pytest.raises(ValueError):
        threshold_mask(torch.zeros(2, 2, 2))
    with pytest.raises(ValueError):
        threshold_mask(torch.zeros(2, 2), method="median")  # type: ignore[arg-type]


def test_constant_map_gives_empty_mask_for_positive_fraction_and_otsu() -> None:
    m = torch.full((4, 4), 3.0)
    assert not threshold_mask(m, fraction=0.5).any()
    assert not threshold_mask(m, "otsu").any()


def _bimodal(seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    low = rng.normal(0.2, 0.03, size=(40, 40))
    high = rng.normal(0.8, 0.03, size=(40, 40))
    m = np.where(np.arange(40)[None, :] < 25, low, high)  # modes of unequal size
    return torch.from_numpy(m).float()


def test_otsu_separates_modes_and_matches_skimage_within_one_bin() -> None:
    m = _bimodal()
    t = otsu_threshold(m)
    ref = threshold_otsu(m.numpy().astype(np.float64), nbins=256)
    bin_width = float(m.max() - m.min()) / 256
    assert abs(t - ref) <= bin_width + 1e-9
    mask = threshold_mask(m, "otsu")
    expected = torch.zeros(40, 40, dtype=torch.bool)
    expected[:, 25:] = True
    assert torch.equal(mask, expected)


def test_otsu_on_skewed_values_matches_skimage() -> None:
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.exponential(1.0, 900), rng.normal(6.0, 0.7, 124)]).reshape(32, 32)
    t = otsu_threshold(torch.from_numpy(values))
    ref = threshold_otsu(values, nbins=256)
    assert abs(t - ref) <= (values.max() - values.min()) / 256 + 1e-9


# ----------------------------------------------------------------------------- regions


def _two_blobs() -> tuple[torch.Tensor, torch.Tensor]:
    mask = torch.zeros(40, 50, dtype=torch.bool)
    mask[5:15, 3:11] = True  # box (3, 5, 11, 15), area 80
    # An L shape: box (25, 20, 45, 35), area 15*5 + 5*15 = 150
    mask[20:35, 25:30] = True
    mask[30:35, 30:45] = True
    m = torch.zeros(40, 50)
    m[mask] = 0.5
    m[8, 6] = 0.9  # peak of the first blob
    m[33, 40] = 0.7  # peak of the second
    return mask, m


def test_two_blobs_give_two_regions_with_exact_boxes_areas_peaks() -> None:
    mask, m = _two_blobs()
    regions = mask_to_regions(mask, m)
    assert len(regions) == 2
    big, small = regions  # sorted by score * area: 150 * ~0.5 > 80 * ~0.5
    assert big.box == (25, 20, 45, 35)
    assert big.area == 150
    assert big.peak == (40, 33)
    assert small.box == (3, 5, 11, 15)
    assert small.area == 80
    assert small.peak == (6, 8)
    assert small.score == pytest.approx((79 * 0.5 + 0.9) / 80)
    assert all(isinstance(r, Region) for r in regions)


def test_regions_sorted_by_score_times_area_not_area() -> None:
    mask, m = _two_blobs()
    m[5:15, 3:11] = 3.0  # small blob now has 80 * 3 = 240 > 150 * ~0.5
    regions = mask_to_regions(mask, m)
    assert [r.box for r in regions] == [(3, 5, 11, 15), (25, 20, 45, 35)]


def test_eight_connectivity_joins_diagonal_pixels() -> None:
    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[1, 1] = mask[2, 2] = mask[3, 3] = True
    regions = mask_to_regions(mask)
    assert len(regions) == 1
    assert regions[0].box == (1, 1, 4, 4)
    assert regions[0].area == 3
    assert regions[0].score == 1.0


def test_min_area_and_max_regions() -> None:
    mask, m = _two_blobs()
    assert [r.area for r in mask_to_regions(mask, m, min_area=81)] == [150]
    assert len(mask_to_regions(mask, m, max_regions=1)) == 1
    assert mask_to_regions(torch.zeros(5, 5, dtype=torch.bool)) == []


@pytest.mark.parametrize("max_points", [1000, 16])
def test_contour_points_lie_on_blob_border(max_points: int) -> None:
    mask, m = _two_blobs()
    arr = mask.numpy()
    for region in mask_to_regions(mask, m, max_points=max_points):
        assert 3 <= len(region.contour) <= max_points
        for x, y in region.contour:
            # Marching squares at level 0.5 puts every vertex halfway between a pixel inside the blob
            # and its 4-neighbour outside: exactly one of x, y is a half-integer.
            if float(x).is_integer():
                assert (y % 1) == pytest.approx(0.5)
                pair = [(int(x), int(np.floor(y))), (int(x), int(np.ceil(y)))]
            else:
                assert (x % 1) == pytest.approx(0.5) and float(y).is_integer()
                pair = [(int(np.floor(x)), int(y)), (int(np.ceil(x)), int(y))]

            def inside(p: tuple[int, int]) -> bool:
                px, py = p
                return 0 <= py < arr.shape[0] and 0 <= px < arr.shape[1] and bool(arr[py, px])

            assert sorted(inside(p) for p in pair) == [False, True]
        xs = [p[0] for p in region.contour]
        ys = [p[1] for p in region.contour]
        x0, y0, x1, y1 = region.box
        # The outer contour spans the whole box (half a pixel outside the pixel centres); simplification
        # may cut a corner by at most half a pixel.
        slack = 0.0 if max_points == 1000 else 0.5 + 1e-9
        assert x0 - 0.5 <= min(xs) <= x0 - 0.5 + slack and x1 - 0.5 - slack <= max(xs) <= x1 - 0.5
        assert y0 - 0.5 <= min(ys) <= y0 - 0.5 + slack and y1 - 0.5 - slack <= max(ys) <= y1 - 0.5


def test_contour_is_simplified_to_max_points() -> None:
    yy, xx = np.mgrid[:80, :80]
    disk = torch.from_numpy((xx - 40) ** 2 + (yy - 40) ** 2 <= 30**2)
    (region,) = mask_to_regions(disk, max_points=12)
    assert 3 <= len(region.contour) <= 12
    radii = [np.hypot(x - 40, y - 40) for x, y in region.contour]
    assert min(radii) > 28 and max(radii) < 32


def test_region_with_hole_returns_outer_contour() -> None:
    mask = torch.zeros(20, 20, dtype=torch.bool)
    mask[2:18, 2:18] = True
    mask[6:14, 6:14] = False
    (region,) = mask_to_regions(mask)
    xs = [p[0] for p in region.contour]
    assert min(xs) == pytest.approx(1.5) and max(xs) == pytest.approx(17.5)
    assert region.area == 16 * 16 - 8 * 8


def test_peak_without_map_is_inside_nonconvex_region() -> None:
    mask = torch.zeros(30, 30, dtype=torch.bool)
    mask[2:28, 2:6] = True
    mask[2:6, 2:28] = True  # an L whose centroid lies outside it
    (region,) = mask_to_regions(mask)
    px, py = region.peak
    assert bool(mask[py, px])


def test_scale_regions_maps_box_area_peak_and_contour() -> None:
    r = Region(box=(1, 2, 3, 5), area=6, score=0.5, peak=(2, 3), contour=[(0.5, 2.0), (2.5, 4.0)])
    (s,) = scale_regions([r], 4.0, 2.0)
    assert s.box == (4, 4, 12, 10)
    assert s.area == 48
    assert s.peak == (10, 7)
    assert s.contour == [(3.5, 4.5), (11.5, 8.5)]
    assert s.score == 0.5
    with pytest.raises(ValueError):
        scale_regions([r], 0.0, 1.0)


def test_mask_to_regions_rejects_mismatched_map() -> None:
    with pytest.raises(ValueError):
        mask_to_regions(torch.zeros(4, 4, dtype=torch.bool), torch.zeros(4, 5))


# ----------------------------------------------------------------------------- CRF


def _square_scene(size: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A red square on a blue background, and a blurry, shifted, noisy probability of it."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.zeros(size, size, dtype=torch.bool)
    lo, hi = size * 5 // 16, size * 11 // 16
    truth[lo:hi, lo - 4 : hi - 4] = True
    image = torch.empty(3, size, size)
    image[:] = torch.tensor([0.1, 0.3, 0.8])[:, None, None]
    image[:, truth] = torch.tensor([0.9, 0.2, 0.1])[:, None]
    image = (image + 0.03 * torch.randn(3, size, size, generator=g)).clamp(0, 1)
    blurred = torch.from_numpy(gaussian_filter(truth.float().numpy(), size / 16)).float()
    prob = torch.roll(blurred, shifts=(size // 24, size // 24), dims=(0, 1))
    prob = (prob + 0.25 * torch.randn(size, size, generator=g)).clamp(0, 1)
    return image, prob, truth


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum()) / float((a | b).sum())


def test_crf_sharpens_blurry_noisy_probability_map() -> None:
    image, prob, truth = _square_scene()
    refined = dense_crf_refine(image, prob)
    assert refined.shape == prob.shape and refined.dtype == torch.float32
    assert float(refined.min()) >= 0.0 and float(refined.max()) <= 1.0
    raw_iou = _iou(prob >= 0.5, truth)
    crf_iou = _iou(refined >= 0.5, truth)
    assert raw_iou < 0.7
    assert crf_iou > raw_iou + 0.2
    assert crf_iou > 0.9


def test_crf_respects_colour_edges() -> None:
    # The probability spills 8 px past the square on every side with a confident 0.75;
    # only colour tells the CRF where the object ends.
    size = 64
    truth = torch.zeros(size, size, dtype=torch.bool)
    truth[20:44, 20:44] = True
    spill = torch.zeros_like(truth)
    spill[12:52, 12:52] = True
    image = torch.zeros(3, size, size)
    image[1] = 0.9  # green background
    image[:, truth] = torch.tensor([0.9, 0.1, 0.9])[:, None]  # magenta square
    prob = torch.full((size, size), 0.2)
    prob[spill] = 0.75
    prob[truth] = 0.8
    refined = dense_crf_refine(image, prob, iterations=10)
    band = spill & ~truth
    assert float(refined[band].mean()) < 0.5
    assert float((refined[band] >= 0.5).float().mean()) < 0.1
    assert float((refined[truth] >= 0.5).float().mean()) > 0.95
    assert _iou(refined >= 0.5, truth) > _iou(prob >= 0.5, truth) + 0.3


def _reference_mean_field(
    image: torch.Tensor,
    prob: torch.Tensor,
    iterations: int,
    g: tuple[float, float],
    b: tuple[float, float, float],
) -> torch.Tensor:
    """Plain float64 mean field with the explicit N x N kernel, symmetric normalization per kernel."""
    _, h, w = image.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    pos = torch.stack([ys.reshape(-1), xs.reshape(-1)], 1)
    col = image.double().reshape(3, -1).T * 255
    d2p = ((pos[:, None] - pos[None]) ** 2).sum(-1)
    d2c = ((col[:, None] - col[None]) ** 2).sum(-1)
    kg = torch.exp(-d2p / (2 * g[0] ** 2))
    kb = torch.exp(-d2p / (2 * b[0] ** 2) - d2c / (2 * b[1] ** 2))

    def norm(k: torch.Tensor) -> torch.Tensor:
        d = k.sum(1).rsqrt()
        return d[:, None] * k * d[None]

    k = g[1] * norm(kg) + b[2] * norm(kb)
    p = prob.double().reshape(-1).clamp(1e-5, 1 - 1e-5)
    unary = -torch.log(torch.stack([1 - p, p], 1))
    q = torch.softmax(-unary, 1)
    for _ in range(iterations):
        q = torch.softmax(-unary - (k @ q).flip(1), 1)
    return q[:, 1].reshape(h, w)


def test_crf_matches_explicit_mean_field_at_full_resolution() -> None:
    image, prob, _ = _square_scene(size=20, seed=1)
    out = dense_crf_refine(
        image,
        prob,
        iterations=4,
        gaussian_sxy=2.0,
        gaussian_weight=3.0,
        bilateral_sxy=6.0,
        bilateral_srgb=20.0,
        bilateral_weight=5.0,
        max_side=32,
    )
    ref = _reference_mean_field(image, prob, 4, (2.0, 3.0), (6.0, 20.0, 5.0))
    torch.testing.assert_close(out.double(), ref, atol=2e-4, rtol=0)


def test_crf_streamed_kernel_equals_cached_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    image, prob, _ = _square_scene(size=48)
    cached = dense_crf_refine(image, prob, max_side=48)
    monkeypatch.setattr(crf_mod, "_CACHE_MAX_N", 0)
    monkeypatch.setattr(crf_mod, "_ROW_CHUNK", 100)  # uneven chunks exercise the tail
    streamed = dense_crf_refine(image, prob, max_side=48)
    torch.testing.assert_close(streamed, cached, atol=1e-4, rtol=0)


def test_crf_grid_shape_honors_max_side() -> None:
    assert crf_grid_shape(480, 640, 64) == (48, 64)
    assert crf_grid_shape(1000, 10, 64) == (64, 1)
    assert crf_grid_shape(40, 30, 64) == (40, 30)  # never upsampled
    assert crf_grid_shape(129, 128, 128) == (128, 127)


def test_crf_memory_bound_on_large_input(monkeypatch: pytest.MonkeyPatch) -> None:
    # Record every dense block the appearance kernel is built from: it must never exceed
    # (max_side^2)^2 entries for the cached kernel or _ROW_CHUNK x max_side^2 when streamed.
    seen: list[tuple[int, ...]] = []
    real_exp = torch.exp

    def spy_exp(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape))
        return real_exp(x)

    monkeypatch.setattr(crf_mod.torch, "exp", spy_exp)
    h, w = 600, 800
    image = torch.rand(3, h, w)
    prob = torch.rand(h, w)
    out = dense_crf_refine(image, prob, max_side=32)
    assert out.shape == (h, w)
    n = 24 * 32
    assert seen and max(int(np.prod(s)) for s in seen) <= n * n
    seen.clear()
    monkeypatch.setattr(crf_mod, "_CACHE_MAX_N", 0)
    dense_crf_refine(image, prob, max_side=64)
    n = 48 * 64
    assert max(int(np.prod(s)) for s in seen) <= crf_mod._ROW_CHUNK * n


@pytest.mark.parametrize(
    "kwargs",
    [{"iterations": 0}, {"iterations": 51}, {"max_side": 7}, {"max_side": 129}, {"bilateral_srgb": 0.0}],
)
def test_crf_rejects_bad_arguments(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        dense_crf_refine(torch.rand(3, 16, 16), torch.rand(16, 16), **kwargs)  # type: ignore[arg-type]


def test_crf_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        dense_crf_refine(torch.rand(1, 16, 16), torch.rand(16, 16))
    with pytest.raises(ValueError):
        dense_crf_refine(torch.rand(3, 16, 16), torch.rand(16, 15))
