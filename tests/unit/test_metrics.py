"""Tests for cnnviz.metrics: deletion / insertion curves and the pointing game."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cnnviz.metrics import FaithfulnessResult, default_insertion_baseline, deletion_insertion, pointing_game

H, W = 12, 10


def _linear_setup(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, H, W, generator=g, dtype=torch.float64) + 0.1
    weight = torch.rand(H, W, generator=g, dtype=torch.float64)
    return image, weight, image.new_zeros(3, H, W)


def _linear_score(weight: torch.Tensor):
    def score(batch: torch.Tensor) -> torch.Tensor:
        return (batch * weight).flatten(1).sum(1)

    return score


def test_true_saliency_beats_reversed_saliency() -> None:
    image, weight, zeros = _linear_setup()
    score = _linear_score(weight)
    good = deletion_insertion(score, image, weight, steps=16, insertion_baseline=zeros)
    bad = deletion_insertion(score, image, -weight, steps=16, insertion_baseline=zeros)
    assert isinstance(good, FaithfulnessResult)
    assert good.deletion_auc < bad.deletion_auc
    assert good.insertion_auc > bad.insertion_auc
    # Deleting the heaviest weights first makes the curve concave-down: it lies below the chord.
    full = float(score(image[None])[0])
    assert good.deletion_auc < full / 2 < bad.deletion_auc


def test_curve_lengths_fractions_and_exact_end_points() -> None:
    image, weight, _ = _linear_setup(1)
    score = _linear_score(weight)
    baseline = torch.full_like(image, 0.25)
    steps = 7
    res = deletion_insertion(score, image, weight, steps=steps, deletion_baseline=baseline, batch_size=3)
    assert len(res.deletion_curve) == len(res.insertion_curve) == len(res.fractions) == steps + 1
    assert res.fractions[0] == 0.0 and res.fractions[-1] == 1.0
    assert res.fractions == sorted(res.fractions)
    full = float(score(image[None])[0])
    assert res.deletion_curve[0] == full
    assert res.deletion_curve[-1] == float(score(baseline[None])[0])
    assert res.insertion_curve[-1] == full
    assert res.insertion_curve[0] == float(score(default_insertion_baseline(image)[None])[0])
    # Trapezoid rule over the reported fractions.
    auc = sum(
        (res.fractions[i + 1] - res.fractions[i]) * (res.deletion_curve[i + 1] + res.deletion_curve[i]) / 2
        for i in range(steps)
    )
    assert res.deletion_auc == pytest.approx(auc, rel=1e-12)


def _brute_force_step(image, saliency, baseline, k, steps, insert):
    """One step by the definition: loop over pixels in a stably sorted order."""
    _, h, w = image.shape
    sal = saliency
    if tuple(sal.shape) != (h, w):
        sal = F.interpolate(sal[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    values = sal.reshape(-1).tolist()
    order = sorted(range(h * w), key=lambda i: -values[i])  # Python's sort is stable
    count = math.floor(k * h * w / steps + 0.5)
    out = baseline.clone() if insert else image.clone()
    for i in order[:count]:
        y, x = divmod(i, w)
        out[:, y, x] = image[:, y, x] if insert else baseline[:, y, x]
    return out


@pytest.mark.parametrize("k", [0, 3, 5, 7])
def test_batched_step_equals_brute_force(k: int) -> None:
    image, weight, _ = _linear_setup(2)
    score = _linear_score(weight)
    saliency = torch.rand(3, 5, generator=torch.Generator().manual_seed(7))  # upsampled to 12 x 10
    del_base = torch.full_like(image, 0.5)
    ins_base = torch.rand(image.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    steps = 7  # 120 pixels / 7 steps: counts need rounding (51.4 -> 51, 85.7 -> 86)
    res = deletion_insertion(
        score,
        image,
        saliency,
        steps=steps,
        deletion_baseline=del_base,
        insertion_baseline=ins_base,
        batch_size=4,
    )
    deleted = _brute_force_step(image, saliency, del_base, k, steps, insert=False)
    inserted = _brute_force_step(image, saliency, ins_base, k, steps, insert=True)
    assert res.deletion_curve[k] == pytest.approx(float(score(deleted[None])[0]), rel=1e-12)
    assert res.insertion_curve[k] == pytest.approx(float(score(inserted[None])[0]), rel=1e-12)
    assert res.fractions[k] == math.floor(k * H * W / steps + 0.5) / (H * W)


def test_ties_are_broken_in_raster_order() -> None:
    image, _, zeros = _linear_setup(3)
    # Score = value of the first pixel only; constant saliency must delete raster pixel 0 first.
    res = deletion_insertion(
        lambda b: b[:, 0, 0, 0], image, torch.ones(H, W), steps=H * W, deletion_baseline=zeros
    )
    assert res.deletion_curve[0] == float(image[0, 0, 0])
    assert res.deletion_curve[1] == 0.0


def test_scored_in_chunks_of_batch_size() -> None:
    image, weight, _ = _linear_setup(4)
    sizes: list[int] = []

    def score(batch: torch.Tensor) -> torch.Tensor:
        sizes.append(batch.shape[0])
        return (batch * weight).flatten(1).sum(1)

    def score_checking_grad(batch: torch.Tensor) -> torch.Tensor:
        assert not torch.is_grad_enabled()
        return score(batch)

    deletion_insertion(score_checking_grad, image, weight, steps=10, batch_size=4)
    assert max(sizes) <= 4
    assert sum(sizes) == 2 * 11


def test_default_insertion_baseline_is_heavily_blurred() -> None:
    image = torch.zeros(3, 64, 64)
    image[:, ::2, :] = 1.0  # high-frequency stripes vanish under a heavy blur
    blurred = default_insertion_baseline(image)
    assert blurred.shape == image.shape
    inner = blurred[:, 16:48, 16:48]  # away from the replicate-padded border
    assert float(inner.std()) < 0.01
    assert float(inner.mean()) == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("steps", [1, 257])
def test_steps_bounds(steps: int) -> None:
    image, weight, _ = _linear_setup()
    with pytest.raises(ValueError):
        deletion_insertion(_linear_score(weight), image, weight, steps=steps)


def test_rejects_bad_score_shape_and_baseline() -> None:
    image, weight, _ = _linear_setup()
    with pytest.raises(ValueError):
        deletion_insertion(lambda b: b.sum(), image, weight)
    with pytest.raises(ValueError):
        deletion_insertion(_linear_score(weight), image, weight, deletion_baseline=torch.zeros(3, 2, 2))


# ----------------------------------------------------------------------------- pointing game


def _peak_map(x: int, y: int, size: tuple[int, int] = (100, 100)) -> torch.Tensor:
    m = torch.zeros(size)
    m[y, x] = 1.0
    return m


def test_pointing_game_hit_and_miss_without_tolerance() -> None:
    box = (40, 40, 60, 60)
    assert pointing_game(_peak_map(50, 50), box, (100, 100), tolerance=0)
    assert pointing_game(_peak_map(40, 59), box, (100, 100), tolerance=0)
    assert not pointing_game(_peak_map(60, 50), box, (100, 100), tolerance=0)  # x1 is exclusive
    assert not pointing_game(_peak_map(39, 50), box, (100, 100), tolerance=0)


def test_pointing_game_tolerance_edge() -> None:
    box = (40, 40, 60, 60)
    assert pointing_game(_peak_map(25, 50), box, (100, 100))  # 15 px left of x0
    assert not pointing_game(_peak_map(24, 50), box, (100, 100))  # 16 px left
    assert pointing_game(_peak_map(50, 74), box, (100, 100))  # 15 px below the last row (59)
    assert not pointing_game(_peak_map(50, 75), box, (100, 100))


def test_pointing_game_maps_small_map_to_image_coordinates() -> None:
    # 7x7 map on a 224x224 image: map pixel 1 covers image pixels 32..63, its centre is 48.
    m = torch.zeros(7, 7)
    m[3, 1] = 1.0
    assert pointing_game(m, (40, 100, 60, 120), (224, 224), tolerance=0)
    assert not pointing_game(m, (49, 100, 60, 120), (224, 224), tolerance=0)
    assert pointing_game(m, (49, 100, 60, 120), (224, 224), tolerance=1)
