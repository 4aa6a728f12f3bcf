"""Fast style transfer training (Johnson et al. 2016): perceptual losses on a frozen backbone.

The transformation network (:mod:`.style_net`) is trained for one style image over a collection
of content images. Each step takes a batch of random crops of the collection, stylizes it, and
minimizes ``content_weight * content + style_weight * style + tv_weight * TV`` where *content* is
the relative feature distance between the output and its own input at the content layers and
*style* the relative Gram distance to the style image at the style layers. The losses are the
ones the optimization-based style transfer uses (:mod:`cnnviz.synthesis.style`), per image, so
the same weights mean the same thing in both and one trained style can be judged against it.

Only the backbone's layers up to the deepest needed one run (the forward stops there), its
weights are frozen, and the style Grams are computed once.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from typing import Any

import torch

from cnnviz.errors import EngineError
from cnnviz.models import LoadedModel
from cnnviz.synthesis.loop import forward_layers
from cnnviz.synthesis.objectives import check_layers, gram
from cnnviz.synthesis.regularizers import total_variation
from cnnviz.synthesis.style import style_layer_preset
from cnnviz.synthesis.transforms import fit_long_side

from .augment import maybe_flip, random_resized_crop, shrink_short_side, to_float, to_uint8
from .loop import Trainer
from .style_net import TransformNet, stylize

log = logging.getLogger(__name__)


def _relative(a: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image ``||a - t||^2 / ||t||^2`` over all but the batch dimension: ``[B]``."""
    dims = tuple(range(1, a.dim()))
    return (a - target).pow(2).sum(dims) / target.pow(2).sum(dims).clamp_min(1e-12)


class PerceptualLoss:
    """Content, style and TV terms of an output against its content and the fixed style image."""

    def __init__(self, model: LoadedModel, style: torch.Tensor, *, style_size: int,
                 content_layers: Sequence[str] | None = None, style_layers: Sequence[str] | None = None,
                 style_layer_weights: Sequence[float] | None = None) -> None:
        preset = style_layer_preset(model)
        self.model = model
        self.content_layers = list(content_layers or preset[0])
        self.style_layers = list(style_layers or preset[1])
        check_layers(model, self.content_layers + self.style_layers)
        n = len(self.style_layers)
        self.style_weights = list(style_layer_weights) if style_layer_weights is not None else [1.0 / n] * n
        if len(self.style_weights) != n:
            raise EngineError("bad-params", f"{len(self.style_weights)} style weights for {n} style layers")
        self.layers = list(dict.fromkeys(self.content_layers + self.style_layers))
        s = fit_long_side(to_float(style.cpu()), int(style_size))[None].to(model.device)
        with torch.no_grad():
            feats = forward_layers(model, s, self.style_layers)
            self.style_grams = {n: gram(feats[n]).detach() for n in self.style_layers}

    def content_targets(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            feats = forward_layers(self.model, x, self.content_layers)
        return {n: feats[n].detach() for n in self.content_layers}

    def terms(self, y: torch.Tensor, targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-image ``[B]`` content and style losses and the batch's TV of the output ``y``."""
        acts = forward_layers(self.model, y, self.layers)
        content = sum(_relative(acts[n], targets[n]) for n in self.content_layers) / len(self.content_layers)
        style = sum(w * _relative(gram(acts[n]), self.style_grams[n].expand(y.shape[0], -1, -1))
                    for n, w in zip(self.style_layers, self.style_weights, strict=True))
        return {"content": content, "style": style, "tv": total_variation(y)}

    def style_loss(self, images: torch.Tensor) -> torch.Tensor:
        """The style term of any pictures ``[B,3,H,W]``: how far their Grams are from the style's."""
        with torch.no_grad():
            acts = forward_layers(self.model, images, self.style_layers)
            return sum(w * _relative(gram(acts[n]), self.style_grams[n].expand(images.shape[0], -1, -1))
                       for n, w in zip(self.style_layers, self.style_weights, strict=True))


class ContentCrops:
    """Random square crops (area ``scale`` of the image, flipped half the time) of a collection.

    The images are kept as uint8 with their short side at most twice the crop size (a crop of a
    third of the area then still needs no upsampling): a 500-image collection for 256 px crops
    takes about 0.5 GB, whatever the photos' own resolution.
    """

    def __init__(self, images: Sequence[torch.Tensor], size: int, scale: tuple[float, float] = (0.3, 1.0)) -> None:
        if not images:
            raise EngineError("bad-params", "fast style training needs at least one content image")
        self.size = int(size)
        self.scale = scale
        self.images = [to_uint8(shrink_short_side(im.cpu(), 2 * self.size)) for im in images]

    def batch(self, n: int, gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(0, len(self.images), (n,), generator=gen).tolist()
        return torch.stack([maybe_flip(random_resized_crop(self.images[i], self.size, gen, self.scale), gen)
                            for i in idx])


class FastStyleTrainer(Trainer):
    """Train a :class:`TransformNet` for one style over a content collection."""

    kind = "fast_style"

    def __init__(self, model: LoadedModel, style: torch.Tensor, contents: Sequence[torch.Tensor], *,
                 size: int = 256, style_size: int | None = None, batch_size: int = 4, width: int = 16,
                 blocks: int = 5, lr: float = 1e-3, content_weight: float = 1.0, style_weight: float = 20.0,
                 tv_weight: float = 1.0, content_layers: Sequence[str] | None = None,
                 style_layers: Sequence[str] | None = None, style_layer_weights: Sequence[float] | None = None,
                 crop_scale: tuple[float, float] = (0.3, 1.0), preview: torch.Tensor | None = None,
                 preview_size: int | None = None, seed: int = 0, eval_every: int = 0) -> None:
        torch.manual_seed(seed)  # the network's initial weights
        net = TransformNet(width, blocks).to(model.device)
        super().__init__(net, lr=lr, seed=seed, eval_every=eval_every)
        self.model = model
        self.size, self.batch_size = int(size), int(batch_size)
        self.style_size = int(style_size or size)
        self.weights_ = {"content": float(content_weight), "style": float(style_weight), "tv": float(tv_weight)}
        self.loss = PerceptualLoss(model, style, style_size=self.style_size, content_layers=content_layers,
                                   style_layers=style_layers, style_layer_weights=style_layer_weights)
        self.crops = ContentCrops(contents, self.size, crop_scale)
        self.crop_scale = tuple(crop_scale)
        self.preview_size = int(preview_size or size)
        first = to_float(self.crops.images[0])
        self.preview_content = fit_long_side(to_float(preview.cpu()) if preview is not None else first,
                                             self.preview_size)

    def config(self) -> dict[str, Any]:
        return {"network": self.net.config(), "backbone": self.model.name, "size": self.size,
                "style_size": self.style_size, "batch_size": self.batch_size, "weights": self.weights_,
                "content_layers": self.loss.content_layers, "style_layers": self.loss.style_layers,
                "style_layer_weights": self.loss.style_weights, "crop_scale": list(self.crop_scale),
                "lr": self.opt.param_groups[0]["lr"]}

    def batch_loss(self, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        x = self.crops.batch(self.batch_size, gen).to(self.model.device)
        y = self.net(x)
        terms = self.loss.terms(y, self.loss.content_targets(x))
        parts = {"content": terms["content"].mean(), "style": terms["style"].mean(), "tv": terms["tv"]}
        total = sum(self.weights_[k] * v for k, v in parts.items())
        return total, {k: float(v.detach()) for k, v in parts.items()}

    def evaluate(self) -> dict[str, float]:
        """Losses of the fixed preview content: stylized, and the content image itself (the baseline)."""
        x = self.preview_content[None].to(self.model.device)
        y = self.net(x)
        terms = self.loss.terms(y, self.loss.content_targets(x))
        return {"preview_content": float(terms["content"][0]), "preview_style": float(terms["style"][0]),
                "content_image_style": float(self.loss.style_loss(x)[0])}

    def preview(self) -> torch.Tensor:
        return stylize(self.net, self.preview_content)  # type: ignore[arg-type]


def load_transform_net(tensors: dict[str, torch.Tensor], config: dict[str, Any],
                       device: torch.device | str = "cpu") -> TransformNet:
    """Rebuild a trained network from its safetensors tensors and stored config (for inference)."""
    from .checkpoint import load_module

    spec = config.get("network") or {}
    if spec.get("arch") != "transform_net":
        raise EngineError("bad-weights", f"not a transformation network: {spec}")
    net = TransformNet(int(spec["width"]), int(spec["blocks"]))
    load_module(net, tensors)
    for p in net.parameters():
        p.requires_grad_(False)
    return net.to(device).eval()


@functools.lru_cache(maxsize=16)
def _net_macs(width: int, blocks: int, size: int) -> float:
    from cnnviz.synthesis.cost import _macs

    return _macs(TransformNet(width, blocks), size)


def estimate_cost(model: LoadedModel, *, steps: int = 2000, batch_size: int = 4, size: int = 256, width: int = 16,
                  blocks: int = 5, **_: object) -> float:
    """Forward+backward pass equivalents of the backbone at its input size: per crop, the network's
    forward and backward (~3x its forward) plus the backbone's pass and the content targets' forward."""
    from cnnviz.synthesis.cost import pass_macs

    unit = pass_macs(model)
    area = (size / model.spec.input_size) ** 2
    per_crop = 3.0 * _net_macs(int(width), int(blocks), int(size)) / unit + (1.0 + 1.0 / 3.0) * area
    return float(steps) * float(batch_size) * per_crop


def estimate_apply_cost(model: LoadedModel, width: int, blocks: int, height: int, width_px: int) -> float:
    """One stylization of ``height x width_px`` in forward passes of ``model`` at its input size:
    what an inline budget is counted in. Convolutions are linear in area, so one probe size does."""
    from cnnviz.synthesis.cost import _macs

    probe = 256
    fwd = max(_macs(model.module, model.spec.input_size), 1.0)
    return _net_macs(int(width), int(blocks), probe) * (height * width_px) / (probe * probe) / fwd
