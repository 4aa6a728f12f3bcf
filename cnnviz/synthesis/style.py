"""Neural style transfer (Gatys, Ecker & Bethge 2016), with colour preservation (Gatys et al. 2016b).

Minimize ``content_weight * content + style_weight * style + tv_weight * TV`` over the output's
pixels, where *content* is the mean relative feature distance to the content image at the content
layers and *style* the weighted relative Gram distance to the style image at the style layers.
Relative (normalized) distances make one set of weights work across layers and architectures;
that is why the defaults look nothing like the paper's alpha/beta = 1e-3.

Memory and compute: the weights are frozen (no parameter gradients), the targets are computed
once under ``no_grad``, hooks sit only on the needed layers, the forward pass stops after the
deepest of them (:func:`~cnnviz.synthesis.loop.forward_layers`), and each step's graph is freed
by ``autograd.grad`` (nothing retained).

Colour preservation is the paper's *luminance-only transfer*: content and style are converted to
YIQ, the style's luminance is matched to the content's mean and spread, the transfer runs on the
luminance alone (shown to the network as grey RGB) and the content's I and Q are put back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from cnnviz.errors import EngineError
from cnnviz.models import LoadedModel

from .cost import passes, step_passes
from .loop import Callbacks, Parameterization, PixelImage, StepCounter, forward_layers, optimize
from .objectives import check_layers, feature_loss, gram, gram_loss, loss_callbacks, maximize, weighted
from .parameterization import LuminanceImage
from .regularizers import total_variation
from .steps import OptimizerName, optimizer_step
from .transforms import fit_long_side

log = logging.getLogger(__name__)

ACTIVATIONS = {"ReLU", "ReLU6", "SiLU", "GELU", "Hardswish", "LeakyReLU", "ELU", "Mish", "PReLU", "Hardtanh"}

# Gatys et al.: relu1_1 .. relu5_1 for style, relu4_2 for content, as torchvision ``features`` indices.
_PRESETS: dict[str, tuple[list[str], list[str]]] = {
    "vgg16": (["features.20"], ["features.1", "features.6", "features.11", "features.18", "features.25"]),
    "vgg16_bn": (["features.29"], ["features.2", "features.9", "features.16", "features.26", "features.36"]),
    "vgg19": (["features.22"], ["features.1", "features.6", "features.11", "features.20", "features.29"]),
    "vgg19_bn": (["features.32"], ["features.2", "features.9", "features.16", "features.29", "features.42"]),
    # EfficientNet-Lite0 (stride-2 stem): the first activations at 1/2, 1/2, 1/4, 1/8 and 1/16 of the
    # input, as VGG's relu1_1 .. relu5_1 sit at 1, 1/2 .. 1/16; content at 1/8 like relu4_2.
    "efficientnet-lite0": (["_blocks.4.act_expand"],
                           ["act_stem", "_blocks.1.act_expand", "_blocks.3.act_expand", "_blocks.5.act_expand",
                            "_blocks.11.act_expand"]),
}
_RESNET = (["layer2"], ["relu", "layer1", "layer2", "layer3"])


def _generic_preset(model: LoadedModel) -> tuple[list[str], list[str]]:
    """Any CNN: the first activation at each resolution (finest first, down to 1/16 of the input),
    at most five, for style; the last activation at the second-coarsest of those for content."""
    acts = [li for li in sorted(model.layers, key=lambda li: li.order) if li.spatial and li.kind in ACTIVATIONS]
    if not acts:
        acts = [li for li in sorted(model.layers, key=lambda li: li.order) if li.spatial]
    if not acts:
        raise EngineError("no-layers", f"model {model.name!r} has no spatial layer for style transfer")
    by_res: dict[tuple[int, ...], list[str]] = {}
    for li in acts:
        by_res.setdefault(li.output_shape[1:], []).append(li.name)  # type: ignore[index]
    levels = list(by_res)
    fine = [lv for lv in levels if lv[0] * 16 >= model.spec.input_size] or levels
    fine = fine[:5]
    style = [by_res[lv][0] for lv in fine]
    content_level = fine[-2] if len(fine) >= 2 else fine[-1]
    return [by_res[content_level][-1]], style


def style_layer_preset(model: LoadedModel) -> tuple[list[str], list[str]]:
    """``(content_layers, style_layers)`` for the model's architecture, by name, else by resolution."""
    arch = model.spec.arch
    preset = _PRESETS.get(arch)
    if preset is None and arch.startswith(("resnet", "resnext", "wide_resnet")):
        preset = _RESNET
    if preset is not None and all(model.has_layer(n) for n in preset[0] + preset[1]):
        return list(preset[0]), list(preset[1])
    return _generic_preset(model)


_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114],
                            [0.5959, -0.2746, -0.3213],
                            [0.2115, -0.5227, 0.3112]])


def rgb_to_yiq(x: torch.Tensor) -> torch.Tensor:
    """``[..., 3, H, W]`` RGB to YIQ (NTSC): Y is luminance, I and Q carry the colour."""
    return torch.einsum("ij,...jhw->...ihw", _RGB_TO_YIQ.to(x), x)


def yiq_to_rgb(x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,...jhw->...ihw", torch.linalg.inv(_RGB_TO_YIQ).to(x), x)


@dataclass
class StyleResult:
    image: torch.Tensor  # [3, H, W] in [0, 1], CPU; the content's aspect ratio, long side = size
    content_layers: list[str]
    style_layers: list[str]
    content_loss_start: float  # mean relative feature distance to the content image, at the start
    content_loss_end: float
    style_loss_start: float  # weighted relative Gram distance to the style image, at the start
    style_loss_end: float
    preserve_color: bool
    objective: list[float] = field(default_factory=list)  # total weighted loss per step, minimized
    content_history: list[float] = field(default_factory=list)  # unweighted content loss per step
    style_history: list[float] = field(default_factory=list)  # unweighted style loss per step
    goal: str = "minimize"


def style_transfer(
    model: LoadedModel,
    content: torch.Tensor,
    style: torch.Tensor,
    *,
    size: int | None = None,
    style_size: int | None = None,
    content_layers: Sequence[str] | None = None,
    style_layers: Sequence[str] | None = None,
    style_layer_weights: Sequence[float] | None = None,
    content_weight: float = 1.0,
    style_weight: float = 1e4,
    tv_weight: float = 1.0,
    init: Literal["content", "noise"] = "content",
    optimizer: OptimizerName = "lbfgs",
    lr: float | None = None,
    steps: int = 100,
    line_search: bool = True,
    preserve_color: bool = False,
    callbacks: Callbacks | None = None,
    seed: int = 0,
) -> StyleResult:
    """Render ``content`` in the style of ``style`` (both ``[3, H, W]`` in [0, 1]).

    ``size`` is the output's long side (default: the model's input size); the style image is
    resized so its long side is ``style_size`` (default ``size``). Layers default to
    :func:`style_layer_preset`; style layers are weighted equally unless ``style_layer_weights``
    is given. ``lr`` defaults to 1 for L-BFGS and 0.02 for Adam.
    """
    preset = style_layer_preset(model) if not (content_layers and style_layers) else ([], [])
    c_layers = list(content_layers) if content_layers else preset[0]
    s_layers = list(style_layers) if style_layers else preset[1]
    check_layers(model, c_layers + s_layers)
    s_weights = list(style_layer_weights) if style_layer_weights is not None else [1.0 / len(s_layers)] * len(s_layers)
    if len(s_weights) != len(s_layers):
        raise EngineError("bad-params", f"{len(s_weights)} style weights for {len(s_layers)} style layers")
    size = int(size or model.spec.input_size)
    c_img = fit_long_side(content.detach().float().cpu(), size).unsqueeze(0).to(model.device)
    s_img = fit_long_side(style.detach().float().cpu(), int(style_size or size)).unsqueeze(0).to(model.device)
    if preserve_color:
        c_yiq, s_y = rgb_to_yiq(c_img), rgb_to_yiq(s_img)[:, :1]
        c_y = c_yiq[:, :1]
        s_y = (s_y - s_y.mean()) * (c_y.std() / s_y.std().clamp_min(1e-6)) + c_y.mean()
        c_net, s_net = c_y.clamp(0, 1).expand(-1, 3, -1, -1), s_y.clamp(0, 1).expand(-1, 3, -1, -1)
    else:
        c_net, s_net = c_img, s_img

    all_layers = list(dict.fromkeys(c_layers + s_layers))
    with torch.no_grad():
        c_feats = forward_layers(model, c_net, c_layers)
        c_targets = {n: c_feats[n].detach() for n in c_layers}
        s_feats = forward_layers(model, s_net, s_layers)
        s_targets = {n: gram(s_feats[n]).detach() for n in s_layers}
    del c_feats, s_feats
    content_loss = weighted([(1.0 / len(c_layers), feature_loss(n, c_targets[n])) for n in c_layers])
    style_loss = weighted([(w, gram_loss(n, s_targets[n])) for n, w in zip(s_layers, s_weights, strict=True)])

    gen = torch.Generator().manual_seed(seed)
    start_img = c_net if init == "content" else torch.rand(c_net.shape[:1] + (3,) + c_net.shape[2:],
                                                          generator=gen).to(model.device)
    param: Parameterization
    if preserve_color:
        y0 = start_img[:, :1] if init == "content" else start_img.mean(1, keepdim=True)
        param = LuminanceImage(y0)
    else:
        param = PixelImage(start_img)
    content_hist: list[float] = []
    style_hist: list[float] = []

    def total(acts: dict[str, torch.Tensor], record: bool = True) -> torch.Tensor:
        c, s = content_loss(acts), style_loss(acts)
        if record:
            content_hist.append(float(c.detach()))
            style_hist.append(float(s.detach()))
        value = content_weight * c + style_weight * s
        if tv_weight:
            value = value + tv_weight * total_variation(param.image())
        return value

    def measure() -> tuple[float, float]:
        with torch.no_grad():
            acts = forward_layers(model, param.image(), all_layers)
            return float(content_loss(acts)), float(style_loss(acts))

    c0, s0 = measure()
    lr = lr if lr is not None else (1.0 if optimizer == "lbfgs" else 0.02)
    loop_objective, step_rule = optimizer_step(optimizer, lr, model, param, maximize(total), all_layers,
                                               line_search=line_search,
                                               quiet=maximize(lambda acts: total(acts, record=False)))
    res = optimize(model, param, loop_objective, all_layers, steps, step_rule,
                   callbacks=loss_callbacks(callbacks), counter=StepCounter(total=steps), stage="style",
                   generator=gen)
    c1, s1 = measure()
    out = param.image().detach()
    if preserve_color:
        out = yiq_to_rgb(torch.cat([out[:, :1], c_yiq[:, 1:]], dim=1))
    log.info("style transfer on %s: content %.4f -> %.4f, style %.4f -> %.4f in %d steps", model.name, c0, c1,
             s0, s1, steps)
    return StyleResult(image=out[0].clamp(0, 1).cpu(), content_layers=c_layers, style_layers=s_layers,
                       content_loss_start=c0, content_loss_end=c1, style_loss_start=s0, style_loss_end=s1,
                       preserve_color=preserve_color, objective=[-v for v in res.objective],
                       content_history=content_hist, style_history=style_hist)


def estimate_cost(model: LoadedModel, *, steps: int = 100, size: int | None = None, style_size: int | None = None,
                  optimizer: str = "lbfgs", line_search: bool = True, **_: object) -> float:
    """One forward+backward per step at the output size (an upper bound: the pass stops early),
    plus the two target forwards and two measuring forwards. Assumes a square output (worst case)."""
    s = int(size or model.spec.input_size)
    ss = int(style_size or s)
    per = step_passes(optimizer, line_search)
    return passes(model, steps, s, s, per_step=per) + passes(model, 3, s, s, 1 / 3) + passes(model, 1, ss, ss, 1 / 3)
