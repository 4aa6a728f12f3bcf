"""The engine's one Gaussian blur (cnnviz/blur.py) against a plain reference convolution.

The reference is written out in float64 numpy: pad the image (numpy's ``reflect`` / ``edge`` are
torch's ``reflect`` / ``replicate``), then sum the 2-D kernel (the outer product of the sampled,
normalized Gaussian) over every window. A wrong kernel, radius, border or axis order fails here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cnnviz.blur import blur_radius, gaussian_blur


def reference_blur(img: np.ndarray, sigma: float, border: str, radius: int) -> np.ndarray:
    """Direct 2-D convolution of one ``[H, W]`` image, float64."""
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    k2 = np.outer(k, k)
    padded = np.pad(img.astype(np.float64), radius, mode="reflect" if border == "reflect" else "edge")
    h, w = img.shape
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            out[i, j] = (padded[i:i + 2 * radius + 1, j:j + 2 * radius + 1] * k2).sum()
    return out


@pytest.mark.parametrize("border", ["reflect", "replicate"])
@pytest.mark.parametrize("sigma", [0.6, 1.3, 2.0])
def test_blur_equals_a_plain_2d_convolution(border, sigma):
    x = torch.rand(2, 3, 9, 11, generator=torch.Generator().manual_seed(0))
    y = gaussian_blur(x, sigma, border)
    assert y.shape == x.shape and y.dtype == x.dtype
    radius = max(1, math.ceil(3 * sigma))
    if border == "reflect":
        radius = min(radius, 8)
    assert blur_radius(sigma, 9, 11, border) == radius
    for n in range(2):
        for c in range(3):
            ref = reference_blur(x[n, c].numpy(), sigma, border, radius)
            np.testing.assert_allclose(y[n, c].numpy(), ref, rtol=0, atol=1e-6)


def test_every_shape_blurs_each_image_on_its_own():
    x = torch.rand(2, 3, 8, 10, generator=torch.Generator().manual_seed(1))
    whole = gaussian_blur(x, 1.5, "replicate")
    assert torch.allclose(gaussian_blur(x[1], 1.5, "replicate"), whole[1], atol=1e-7)  # [C, H, W]
    assert torch.allclose(gaussian_blur(x[1, 2], 1.5, "replicate"), whole[1, 2], atol=1e-7)  # [H, W]
    # float64 in, float64 out, and the same values
    assert torch.allclose(gaussian_blur(x.double(), 1.5, "replicate").float(), whole, atol=1e-6)


def test_replicate_reaches_past_a_small_image_and_reflect_is_cut_to_it():
    x = torch.rand(1, 1, 4, 30, generator=torch.Generator().manual_seed(2))
    assert blur_radius(5.0, 4, 30, "replicate") == 15
    assert blur_radius(5.0, 4, 30, "reflect") == 3
    ref = reference_blur(x[0, 0].numpy(), 5.0, "replicate", 15)
    np.testing.assert_allclose(gaussian_blur(x, 5.0, "replicate")[0, 0].numpy(), ref, atol=1e-6)
    ref = reference_blur(x[0, 0].numpy(), 5.0, "reflect", 3)
    np.testing.assert_allclose(gaussian_blur(x, 5.0, "reflect")[0, 0].numpy(), ref, atol=1e-6)


def test_nothing_to_blur_returns_the_input():
    x = torch.rand(1, 3, 1, 7)
    assert gaussian_blur(x, 2.0, "reflect") is x  # a mirror cannot pad a one-pixel side
    assert gaussian_blur(x, 0.0) is x and gaussian_blur(x, -1.0, "replicate") is x
    constant = torch.full((5, 6), 0.25)
    assert torch.allclose(gaussian_blur(constant, 1.0, "replicate"), constant)  # the kernel sums to 1
    with pytest.raises(ValueError, match="border"):
        gaussian_blur(x, 1.0, "wrap")  # type: ignore[arg-type]
