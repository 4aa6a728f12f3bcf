"""Dense CRF refinement of a foreground probability map (Krähenbühl & Koltun, NIPS 2011).

A CAM is blurry and spills over object borders; a fully connected CRF with a colour-aware
(bilateral) kernel snaps it to image edges, which turns a heatmap into a usable weakly supervised
segmentation mask. Two labels (background, foreground), unary ``-log p``, Potts compatibility and
the paper's two kernels:

    k(i, j) = w_b * exp(-|p_i - p_j|^2 / (2 sxy_b^2) - |I_i - I_j|^2 / (2 srgb^2))   (appearance)
            + w_g * exp(-|p_i - p_j|^2 / (2 sxy_g^2))                                 (smoothness)

Why exact messages on a downsampled grid instead of the permutohedral lattice: the lattice is what
makes the paper linear-time at full resolution, but it needs a hash table and splat/blur/slice
kernels that are awkward and slow in pure PyTorch (pydensecrf, the C++ binding, does not build
here). A CAM carries information only at the network's feature-map resolution (7x7 to 28x28), so
refining on a grid whose longer side is at most ``max_side`` (<= 128) loses almost nothing, and at
that size the N x N kernel (N <= 16384) is cheap to evaluate exactly with dense matrix products -
no lattice approximation error, deterministic, and the same code runs on CPU and GPU. The
smoothness kernel depends on position only and is separable, so it is applied as two small
matrix products. The appearance kernel is built in blocks of rows so peak memory stays bounded:
for N <= 4096 (the default ``max_side=64``) it is kept for all iterations (64 MiB), above that it
is recomputed block by block each iteration instead of being stored.

Positions are expressed in ORIGINAL pixel units (coarse pixel centres mapped back to the input
grid), so ``gaussian_sxy`` / ``bilateral_sxy`` mean the same thing as in the paper whatever the
downsampling. Each kernel is symmetrically normalized (``D^-1/2 K D^-1/2``), as in the reference
implementation's default, which makes the message strength independent of how many pixels fall in
the kernel's reach - and therefore of the downsampling factor.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["crf_grid_shape", "dense_crf_refine"]

logger = logging.getLogger(__name__)

_EPS = 1e-5  # probabilities are clamped to [eps, 1 - eps] so the unary stays finite
_ROW_CHUNK = 1024  # appearance-kernel rows built at once: _ROW_CHUNK * N * 4 bytes (<= 64 MiB)
_CACHE_MAX_N = 4096  # keep the full N x N kernel (64 MiB in float32) only up to this size


def crf_grid_shape(height: int, width: int, max_side: int) -> tuple[int, int]:
    """Size (h, w) of the grid the CRF runs on: the input shrunk so its longer side <= ``max_side``.

    Never upsampled: a small input is refined at its own resolution.
    """
    longer = max(height, width)
    if longer <= max_side:
        return height, width
    scale = max_side / longer
    return max(1, min(max_side, round(height * scale))), max(1, min(max_side, round(width * scale)))


def _axis_positions(n: int, full: int, device: torch.device) -> Tensor:
    """Coarse pixel centres along one axis in original pixel units (``align_corners=False`` convention)."""
    return (torch.arange(n, device=device, dtype=torch.float32) + 0.5) * (full / n) - 0.5


def _augment(features: Tensor, offset: Tensor) -> tuple[Tensor, Tensor]:
    """Factors (A, B) with ``A @ B.T = -|f_i - f_j|^2 / 2 + offset_i + offset_j``.

    Folding the squared-distance expansion and the per-row log normalization into one matrix
    product means a block of kernel rows costs one GEMM and one ``exp`` instead of half a dozen
    full-size element-wise passes. Features are centred first to limit float32 cancellation.
    """
    f = features - features.mean(0, keepdim=True)
    sq = (f * f).sum(1, keepdim=True)
    ones = torch.ones_like(sq)
    a = torch.cat([f, -0.5 * sq + offset[:, None], ones], dim=1)
    b = torch.cat([f, ones, -0.5 * sq + offset[:, None]], dim=1)
    return a, b


class _DenseKernel:
    """The combined, normalized pairwise kernel applied to label distributions.

    Smoothness kernel: a Gaussian of position only, hence separable into a row and a column
    Gaussian - its messages are two small matrix products on the grid, exact and cheap.
    Appearance kernel: depends on colour, so it is evaluated densely, a block of rows at a time.
    Each is symmetrically normalized, ``D^-1/2 K D^-1/2`` with D the row sums (self term included,
    as in the reference implementation's lattice filtering).
    """

    def __init__(
        self,
        ys: Tensor,
        xs: Tensor,
        colour: Tensor,
        smooth: tuple[float, float],
        bilat: tuple[float, float, float],
    ) -> None:
        """``smooth`` = (sxy, weight), ``bilat`` = (sxy, srgb, weight); positions in original pixels."""
        g_sxy, self.w_smooth = smooth
        b_sxy, b_srgb, self.w_bilat = bilat
        self.h, self.w = ys.shape[0], xs.shape[0]
        self.n = self.h * self.w
        self.ky = torch.exp(-0.5 * ((ys[:, None] - ys[None, :]) / g_sxy) ** 2)
        self.kx = torch.exp(-0.5 * ((xs[:, None] - xs[None, :]) / g_sxy) ** 2)
        self.ns = (self.ky.sum(1)[:, None] * self.kx.sum(1)[None, :]).rsqrt().reshape(-1, 1)

        self.full: Tensor | None = None
        if self.w_bilat <= 0:
            return
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        pos = torch.stack([gy.reshape(-1), gx.reshape(-1)], dim=1)
        feats = torch.cat([pos / b_sxy, colour / b_srgb], dim=1)
        a, b = _augment(feats, torch.zeros(self.n, device=feats.device))
        if self.n <= _CACHE_MAX_N:
            # Small enough to keep: build it once, normalize in place, reuse every iteration.
            full = torch.exp(a @ b.T)
            norm = full.sum(1).rsqrt()
            full.mul_(norm[:, None]).mul_(norm[None, :]).mul_(self.w_bilat)
            self.full = full
            return
        chunks = range(0, self.n, _ROW_CHUNK)
        row_sums = torch.cat([torch.exp(a[i : i + _ROW_CHUNK] @ b.T).sum(1) for i in chunks])
        # exp(log w - log(d_i)/2 - log(d_j)/2 - |f_i - f_j|^2 / 2) = w * normalized kernel entry.
        self.a, self.b = _augment(feats, 0.5 * (math.log(self.w_bilat) - torch.log(row_sums)))

    def _bilateral(self, q: Tensor) -> Tensor:
        if self.full is not None:
            return self.full @ q
        out = torch.empty_like(q)
        for i in range(0, self.n, _ROW_CHUNK):
            out[i : i + _ROW_CHUNK] = torch.exp(self.a[i : i + _ROW_CHUNK] @ self.b.T) @ q
        return out

    def apply(self, q: Tensor) -> Tensor:
        """Messages sum_j k(i, j) q_j for q of shape (N, L)."""
        labels = q.shape[1]
        grid = (self.ns * q).reshape(self.h, self.w, labels)
        smooth = torch.einsum("ab,bcl,dc->adl", self.ky, grid, self.kx).reshape(self.n, labels)
        out = self.w_smooth * self.ns * smooth
        if self.w_bilat > 0:
            out = out + self._bilateral(q)
        return out


def _check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'} and finite, got {value}")


def dense_crf_refine(
    image: Tensor,
    prob: Tensor,
    *,
    iterations: int = 5,
    gaussian_sxy: float = 3.0,
    gaussian_weight: float = 3.0,
    bilateral_sxy: float = 50.0,
    bilateral_srgb: float = 13.0,
    bilateral_weight: float = 5.0,
    max_side: int = 64,
) -> Tensor:
    """Refine a foreground probability map ``prob`` [H, W] with a dense CRF on ``image`` [3, H, W].

    ``image`` is RGB in [0, 1]; ``bilateral_srgb`` is in 0..255 colour units like the paper's
    parameters. Mean-field inference runs ``iterations`` times on a grid whose longer side is at
    most ``max_side`` and the refined foreground probability is resized back to [H, W] bilinearly.
    Returns a float32 tensor in [0, 1] on the input's device.
    """
    if not isinstance(image, Tensor) or image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must be a tensor [3, H, W], got {getattr(image, 'shape', type(image))}")
    if not isinstance(prob, Tensor) or prob.ndim != 2 or tuple(prob.shape) != tuple(image.shape[1:]):
        shape = getattr(prob, "shape", None)
        raise ValueError(f"prob must be [H, W] = {tuple(image.shape[1:])}, got {shape}")
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError("image must not be empty")
    if not isinstance(iterations, int) or not 1 <= iterations <= 50:
        raise ValueError(f"iterations must be an integer in 1..50, got {iterations}")
    if not isinstance(max_side, int) or not 8 <= max_side <= 128:
        raise ValueError(f"max_side must be an integer in 8..128, got {max_side}")
    _check_positive("gaussian_sxy", gaussian_sxy)
    _check_positive("bilateral_sxy", bilateral_sxy)
    _check_positive("bilateral_srgb", bilateral_srgb)
    _check_positive("gaussian_weight", gaussian_weight, allow_zero=True)
    _check_positive("bilateral_weight", bilateral_weight, allow_zero=True)

    height, width = int(image.shape[1]), int(image.shape[2])
    device = image.device
    img = image.detach().to(torch.float32)
    p = prob.detach().to(device=device, dtype=torch.float32)
    if not (torch.isfinite(img).all() and torch.isfinite(p).all()):
        raise ValueError("image and prob must be finite")

    h, w = crf_grid_shape(height, width, max_side)
    if (h, w) != (height, width):
        # Area averaging: each coarse pixel carries the mean colour / probability of what it covers.
        img_c = F.interpolate(img[None], size=(h, w), mode="area")[0]
        p_c = F.interpolate(p[None, None], size=(h, w), mode="area")[0, 0]
    else:
        img_c, p_c = img, p

    kernel = _DenseKernel(
        ys=_axis_positions(h, height, device),
        xs=_axis_positions(w, width, device),
        colour=img_c.reshape(3, -1).T * 255.0,
        smooth=(float(gaussian_sxy), float(gaussian_weight)),
        bilat=(float(bilateral_sxy), float(bilateral_srgb), float(bilateral_weight)),
    )

    fg = p_c.reshape(-1).clamp(_EPS, 1.0 - _EPS)
    unary = -torch.log(torch.stack([1.0 - fg, fg], dim=1))  # (N, 2): energy of bg, fg
    q = torch.softmax(-unary, dim=1)
    for _ in range(iterations):
        msg = kernel.apply(q)
        # Potts: a label pays for the kernel mass currently on the other label.
        pairwise = msg.flip(1)
        q = torch.softmax(-unary - pairwise, dim=1)

    refined = q[:, 1].reshape(1, 1, h, w)
    if (h, w) != (height, width):
        refined = F.interpolate(refined, size=(height, width), mode="bilinear", align_corners=False)
    logger.debug("dense CRF on %dx%d grid for %dx%d input, %d iterations", h, w, height, width, iterations)
    return refined[0, 0].clamp(0.0, 1.0)
