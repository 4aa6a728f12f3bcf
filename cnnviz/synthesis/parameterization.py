"""Image parameterizations beyond plain pixels, on the loop's ``tensors()/image()/project_()`` surface.

- :class:`FourierImage`: the image is the inverse real FFT of a learned spectrum scaled by 1/f, in a
  decorrelated colour space, squashed by a sigmoid (Olah, Mordvintsev & Schubert 2017, "Feature
  Visualization", as in lucid's ``fft_image`` + ``to_valid_rgb``). Gradient steps then move all
  frequencies at a similar rate instead of letting high frequencies dominate, which is what makes
  the pictures readable without heavy regularization.
- :class:`BoundedPixels`: pixels kept inside an L-inf ball around an original and inside [0, 1]
  (projected gradient descent for adversarial examples).
- :class:`LuminanceImage`: one grey channel shown to the network as three (luminance-only style
  transfer, so the content's colours can be put back afterwards).
"""

from __future__ import annotations

import logging
from typing import Literal

import torch

from .loop import Parameterization, PixelImage

log = logging.getLogger(__name__)

# Square root of ImageNet's colour covariance (lucid's ``color_correlation_svd_sqrt``): rows are R, G, B.
COLOR_CORRELATION_SVD_SQRT = torch.tensor([[0.26, 0.09, 0.02],
                                           [0.27, 0.00, -0.05],
                                           [0.27, -0.09, 0.03]])


def color_decorrelation_matrix() -> torch.Tensor:
    """The colour matrix scaled by its largest column norm, so no decorrelated unit overshoots."""
    m = COLOR_CORRELATION_SVD_SQRT
    return m / m.norm(dim=0).max()


def rfft2_freqs(h: int, w: int) -> torch.Tensor:
    """Frequency magnitude (cycles per pixel) of every ``rfft2`` bin of an ``h x w`` image."""
    fy = torch.fft.fftfreq(h).unsqueeze(1)
    fx = torch.fft.rfftfreq(w).unsqueeze(0)
    return torch.sqrt(fx * fx + fy * fy)


class FourierImage:
    """A ``[1, 3, H, W]`` image from a 1/f-scaled spectrum in decorrelated colour, in (0, 1).

    ``sd`` is the spectrum's initial standard deviation (lucid's 0.01: an almost flat grey start);
    ``decay_power`` is the exponent of the 1/f scaling. The division by 4 is lucid's empirical
    constant that keeps the pre-sigmoid values in a range where the sigmoid is not saturated.
    """

    def __init__(self, height: int, width: int, *, sd: float = 0.01, decay_power: float = 1.0,
                 decorrelate: bool = True, generator: torch.Generator | None = None,
                 device: torch.device | str = "cpu") -> None:
        self.size = (int(height), int(width))
        freqs = rfft2_freqs(height, width)
        scale = 1.0 / torch.clamp(freqs, min=1.0 / max(height, width)) ** decay_power
        self.scale = scale.to(device)
        gen = generator or torch.Generator().manual_seed(0)
        init = torch.randn((1, 3, *freqs.shape, 2), generator=gen) * sd
        self.spectrum = init.to(device).requires_grad_(True)
        self.color = color_decorrelation_matrix().to(device) if decorrelate else None

    def tensors(self) -> list[torch.Tensor]:
        return [self.spectrum]

    def image(self) -> torch.Tensor:
        spec = torch.view_as_complex(self.spectrum) * self.scale
        x = torch.fft.irfft2(spec, s=self.size, norm="ortho") / 4.0
        if self.color is not None:
            x = torch.einsum("ij,bjhw->bihw", self.color, x)
        return torch.sigmoid(x)

    def project_(self) -> None:
        """Nothing to do: the sigmoid keeps every pixel in (0, 1)."""


class BoundedPixels(PixelImage):
    """Pixels within ``eps`` (L-inf) of ``origin`` and within [0, 1]; optional seeded random start."""

    def __init__(self, origin: torch.Tensor, eps: float, *, random_start: bool = False,
                 generator: torch.Generator | None = None) -> None:
        if origin.dim() == 3:
            origin = origin.unsqueeze(0)
        self.origin = origin.detach().float()
        self.eps = float(eps)
        init = self.origin
        if random_start and self.eps > 0:
            gen = generator or torch.Generator().manual_seed(0)
            noise = (torch.rand(self.origin.shape, generator=gen) * 2 - 1) * self.eps
            init = self.origin + noise.to(self.origin.device)
        super().__init__(init)
        self.project_()

    def project_(self) -> None:
        """Project onto the eps-ball first, then onto valid pixels: the result satisfies both."""
        with torch.no_grad():
            torch.maximum(self.tensor, self.origin - self.eps, out=self.tensor)
            torch.minimum(self.tensor, self.origin + self.eps, out=self.tensor)
            self.tensor.clamp_(0.0, 1.0)


class LuminanceImage(PixelImage):
    """One ``[1, 1, H, W]`` channel in [0, 1], shown to the network as grey RGB."""

    def image(self) -> torch.Tensor:
        return self.tensor.expand(-1, 3, -1, -1)


ParamKind = Literal["pixels", "fourier"]


def make_parameterization(kind: ParamKind, height: int, width: int, *, generator: torch.Generator,
                          device: torch.device | str, init: torch.Tensor | None = None,
                          noise: float = 0.05) -> Parameterization:
    """A fresh image to optimize: seeded grey noise in pixel space (or ``init``), or a Fourier basis."""
    if kind == "fourier":
        if init is not None:
            log.warning("fourier parameterization ignores the initial image")
        return FourierImage(height, width, generator=generator, device=device)
    if kind != "pixels":
        raise ValueError(f"unknown parameterization {kind!r}")
    if init is None:
        init = (0.5 + noise * torch.randn((1, 3, height, width), generator=generator)).clamp(0, 1)
    return PixelImage(init.to(device))
