"""Two small demonstration convnets, a 1-D one for signals and a 3-D one for volumes, and their data.

The data are synthetic so that where the evidence lies is known: each sample carries ONE local
pattern at a random place in noise, and the pattern alone decides the class.

* signals ``[1, 256]``: a smooth bump (class ``bump``) or a short oscillation burst (class
  ``burst``) under the same Gaussian envelope, in white noise plus a slow baseline wander;
* volumes ``[1, 32, 32, 32]``: a bright Gaussian blob (class ``bright``) or a dark one (class
  ``dark``) in noise.

A third class, ``none``, is noise alone. Without it a two-class network may learn one pattern and
call everything else the other class: its evidence for that class is then an absence, which no
explanation can place (with two classes the first volume net did exactly that; its gradients
for ``dark`` were zero everywhere). With ``none``, each pattern class needs its own detector.

``bench/train_nd_demo.py`` trains both (seeded) and writes the weights next to the models file
``examples/nd/models.toml``; the tests and ``bench/eval_nd_localization.py`` check that Grad-CAM's
and occlusion's maxima fall inside the pattern. The models file builds them by ``factory:``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

SIGNAL_LENGTH = 256
SIGNAL_CLASSES = ("bump", "burst", "none")
SIGNAL_SIGMA = 6.0  # samples: the pattern's envelope
VOLUME_SIZE = 32
VOLUME_CLASSES = ("bright", "dark", "none")
VOLUME_SIGMA = 2.0  # voxels
SUPPORT = math.sqrt(2 * math.log(10))  # envelope above 10 % of its peak: |d| <= SUPPORT * sigma


def signal_net(num_classes: int = 3, width: int = 16) -> nn.Module:
    """Three 1-D convolutions, global average pooling, one linear layer (a CAM-ready head)."""
    return nn.Sequential(
        nn.Conv1d(1, width, 7, padding=3), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(width, 2 * width, 5, padding=2), nn.ReLU(), nn.MaxPool1d(2),
        nn.Conv1d(2 * width, 2 * width, 5, padding=2), nn.ReLU(),
        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))


def volume_net(num_classes: int = 3, width: int = 4) -> nn.Module:
    """Two 3-D convolutions and a 1x1x1 one, one pooling, global MAX pooling, one linear layer.

    The blob is a few voxels of 32^3: averaged over the whole grid its evidence is a percent or two,
    and global-average versions stalled at chance for an epoch or more (affordable here: none); a
    global maximum is a detector's natural read-out and trains at once. Batch-normalized, replicated
    borders, one pooling, so the last grid is 16^3 and mixes channels only: a first version with a
    second pooling and a third 3x3x3 convolution (last grid 8^3) classified as well, but its last
    layer's Grad-CAM fell on the volume's faces (1 maximum in 20 inside the blob, the layer before
    put all 20 there). ``cam`` needs a global-average head and says so (422 ``cam-undefined``).
    """
    return nn.Sequential(
        nn.Conv3d(1, width, 3, padding=1, padding_mode="replicate"), nn.BatchNorm3d(width), nn.ReLU(),
        nn.MaxPool3d(2),
        nn.Conv3d(width, 2 * width, 3, padding=1, padding_mode="replicate"), nn.BatchNorm3d(2 * width), nn.ReLU(),
        nn.Conv3d(2 * width, 2 * width, 1), nn.BatchNorm3d(2 * width), nn.ReLU(),
        nn.AdaptiveMaxPool3d(1), nn.Flatten(), nn.Linear(2 * width, num_classes))


@dataclass
class Samples:
    """A batch of synthetic inputs ``[N,1,*grid]``, their classes ``[N]`` and pattern centres ``[N,dims]``."""

    x: torch.Tensor
    y: torch.Tensor
    centres: torch.Tensor
    sigma: float

    def inside(self, index: int, position: tuple[int, ...]) -> bool:
        """Whether ``position`` (a grid index) lies inside sample ``index``'s pattern (envelope > 10 %)."""
        d = torch.tensor(position, dtype=torch.float32) - self.centres[index].float()
        return float(d.norm()) <= SUPPORT * self.sigma


def signals(n: int, seed: int, length: int = SIGNAL_LENGTH) -> Samples:
    """``n`` noisy traces with a bump (class 0), a burst (1) at a random place, or neither (2)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(length, dtype=torch.float32)
    y = torch.randint(0, 3, (n,), generator=g)
    margin = 3 * SIGNAL_SIGMA
    centres = margin + torch.rand(n, generator=g) * (length - 2 * margin)
    env = torch.exp(-0.5 * ((t[None] - centres[:, None]) / SIGNAL_SIGMA) ** 2)
    burst = torch.sin(2 * math.pi * (t[None] - centres[:, None]) / 5.0)
    pattern = torch.where(y[:, None] == 0, 2.0 * env, 2.0 * env * burst) * (y[:, None] < 2)
    phase = torch.rand(n, 1, generator=g) * 2 * math.pi
    wander = 0.5 * torch.sin(2 * math.pi * t[None] / length * (0.5 + torch.rand(n, 1, generator=g)) + phase)
    x = pattern + wander + 0.35 * torch.randn(n, length, generator=g)
    return Samples(x[:, None], y, centres.round()[:, None], SIGNAL_SIGMA)


def volumes(n: int, seed: int, size: int = VOLUME_SIZE) -> Samples:
    """``n`` noisy volumes with a bright (class 0) or a dark (1) Gaussian blob at a random place, or neither (2)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    margin = 3 * VOLUME_SIGMA
    centres = margin + torch.rand(n, 3, generator=g) * (size - 2 * margin)
    ax = torch.arange(size, dtype=torch.float32)
    d2 = sum((ax.view(*[size if i == a else 1 for i in range(3)])[None] - centres[:, a].view(n, 1, 1, 1)) ** 2
             for a in range(3))
    blob = 2.0 * torch.exp(-0.5 * d2 / VOLUME_SIGMA ** 2)
    sign = torch.where(y == 0, 1.0, -1.0).view(n, 1, 1, 1) * (y < 2).view(n, 1, 1, 1)
    x = sign * blob + 0.4 * torch.randn(n, size, size, size, generator=g)
    return Samples(x[:, None], y, centres.round(), VOLUME_SIGMA)
