"""DeepDream (Mordvintsev, Olah & Tyka, 2015) on the shared optimization loop.

Gradient ascent on the mean square (or mean) of one layer's activation, with a normalized
gradient step and random jitter, over a pyramid of octaves: the image is dreamed at the smallest
scale first, and the *detail* it gained is upscaled and added to the next, larger base image.
That is what lets patterns grow larger than the layer's receptive field.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from cnnviz.models import LoadedModel

from .loop import Callbacks, Jitter, NormalizedGradientStep, PixelImage, StepCounter, layer_objective, optimize

log = logging.getLogger(__name__)

MIN_SIDE = 16  # smaller octaves carry no information for the networks in the catalog


@dataclass(frozen=True)
class DeepDreamConfig:
    """Everything that defines one dream; bounds are enforced by the service's schema."""

    layer: str | None = None
    channel: int | None = None
    objective: Literal["l2", "mean"] = "l2"
    octaves: int = 4
    octave_scale: float = 1.4
    steps: int = 12  # per octave
    step_size: float = 0.02  # in [0, 1] pixel units, after gradient normalization
    jitter: int = 8
    size: int = 224  # long side of the output, px
    seed: int = 0


@dataclass
class DreamResult:
    image: torch.Tensor  # [3, H, W] in [0, 1], on the CPU
    layer: str
    sizes: list[tuple[int, int]]
    objective: list[float] = field(default_factory=list)


DREAM_DEPTH = 0.65  # of the way through the blocks: eyes and animal faces, not yet whole objects or texture


def dream_layer(model: LoadedModel, layer: str | None) -> str:
    """The chosen layer, or a block output about two thirds deep: deep enough for eyes and faces.

    Blocks (spatial modules that contain others, such as ``_blocks.10`` or ``layer3.1``) are
    preferred to the convolutions and norms inside them: a block's output is what the next block
    reads, and dreaming on an inner batch norm gives more colour noise than faces. Networks with
    fewer than four such blocks fall back to every spatial layer.
    """
    if layer is not None:
        if not model.has_layer(layer):
            raise ValueError(f"model {model.name!r} has no layer {layer!r}")
        return layer
    spatial = [li for li in sorted(model.layers, key=lambda li: li.order) if li.spatial]
    if not spatial:
        return model.default_layer
    names = [li.name for li in model.layers]
    blocks = [li for li in spatial if any(n.startswith(li.name + ".") for n in names)]
    pool = blocks if len(blocks) >= 4 else spatial
    return pool[int(len(pool) * DREAM_DEPTH)].name


def output_size(config: DeepDreamConfig, height: int, width: int) -> tuple[int, int]:
    """Final size: the long side is ``config.size``, the aspect ratio is the input's."""
    scale = config.size / max(height, width)
    return max(MIN_SIDE, round(height * scale)), max(MIN_SIDE, round(width * scale))


def octave_sizes(config: DeepDreamConfig, height: int, width: int) -> list[tuple[int, int]]:
    """Sizes from the smallest octave to the final size; octaves below ``MIN_SIDE`` are clamped."""
    h, w = output_size(config, height, width)
    sizes = []
    for i in range(config.octaves - 1, -1, -1):
        f = config.octave_scale ** i
        sizes.append((max(MIN_SIDE, round(h / f)), max(MIN_SIDE, round(w / f))))
    return sizes


def estimate_cost(config: DeepDreamConfig, input_size: int, height: int | None = None,
                  width: int | None = None) -> float:
    """Forward-pass equivalents at the model's input size (forward + backward ~ 3 forwards)."""
    sizes = octave_sizes(config, height or config.size, width or config.size)
    return float(sum(3 * config.steps * (h * w) / (input_size * input_size) for h, w in sizes))


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def deep_dream(model: LoadedModel, image: torch.Tensor | None, config: DeepDreamConfig,
               callbacks: Callbacks | None = None) -> DreamResult:
    """Dream on ``image`` (``[3, H, W]`` in [0, 1]) or, with None, on seeded grey noise."""
    layer = dream_layer(model, config.layer)
    gen = torch.Generator().manual_seed(config.seed)
    if image is None:
        base = 0.5 + 0.05 * torch.randn((1, 3, config.size, config.size), generator=gen)
        base = base.clamp(0, 1)
    else:
        base = image.detach().float().unsqueeze(0).clamp(0, 1)
    sizes = octave_sizes(config, base.shape[-2], base.shape[-1])
    base = base.to(model.device)
    bases = [_resize(base, s) for s in sizes]
    counter = StepCounter(total=config.steps * len(sizes))
    objective = layer_objective(layer, config.objective, config.channel)
    step_rule = NormalizedGradientStep(config.step_size)
    transforms = [Jitter(config.jitter)] if config.jitter else []
    detail = torch.zeros_like(bases[0])
    history: list[float] = []
    for i, (size, octave_base) in enumerate(zip(sizes, bases, strict=True)):
        detail = _resize(detail, size)
        param = PixelImage((octave_base + detail).clamp(0, 1))
        res = optimize(model, param, objective, [layer], config.steps, step_rule, transforms=transforms,
                       callbacks=callbacks, counter=counter, stage=f"octave {i + 1}/{len(sizes)}", generator=gen)
        history.extend(res.objective)
        detail = param.image().detach() - octave_base
    out = (bases[-1] + detail).clamp(0, 1)[0].cpu()
    if not math.isfinite(sum(history) if history else 0.0):
        log.warning("deepdream objective went non-finite on layer %s", layer)
    return DreamResult(image=out, layer=layer, sizes=sizes, objective=history)
