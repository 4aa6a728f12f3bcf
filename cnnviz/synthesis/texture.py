"""Texture synthesis: parametric (Gram matrices of CNN features) and non-parametric (Efros-Leung).

- :func:`gram_texture` (Gatys, Ecker & Bethge 2015): a texture is summarized by the Gram matrices
  of a few layers' features; from seeded noise, minimize the weighted sum of each layer's relative
  Gram distance to the source's. Targets are computed once without a graph; the forward pass stops
  at the deepest chosen layer.
- :func:`efros_leung` (Efros & Leung 1999): grow the output pixel by pixel in scan-line order; a
  pixel's already-synthesized neighbourhood is compared with *every* source window by a
  Gaussian-weighted, masked SSD, and the pixel is copied from the centre of a window picked at
  random among those within ``(1 + epsilon)`` of the best. The comparison is two matrix-vector
  products over the unfolded source windows, so each pixel costs O(source windows * window area);
  sizes are bounded because the whole costs that times the output's pixel count.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from cnnviz.errors import EngineError
from cnnviz.models import LoadedModel

from .cost import pass_macs, passes, step_passes
from .loop import Callbacks, Cancelled, StepCounter, forward_layers, optimize
from .objectives import check_layers, gram, gram_loss, loss_callbacks, maximize, weighted
from .parameterization import ParamKind, make_parameterization
from .steps import OptimizerName, optimizer_step
from .style import style_layer_preset
from .transforms import fit_long_side

log = logging.getLogger(__name__)

MAX_EL_SIDE = 128  # output and source sides for Efros-Leung
MAX_EL_WORK = 2e10  # output pixels x source windows x window values: ~ a minute on two CPU cores


@dataclass
class TextureResult:
    image: torch.Tensor  # [3, H, W] in [0, 1], CPU
    layers: list[str]
    weights: list[float]
    loss_start: float  # weighted relative Gram distance of the starting noise
    loss_end: float  # ... and of the result
    objective: list[float] = field(default_factory=list)  # the loss per step, minimized
    goal: str = "minimize"


def gram_texture(
    model: LoadedModel,
    source: torch.Tensor,
    *,
    layers: Sequence[str] | None = None,
    weights: Sequence[float] | None = None,
    size: int | None = None,
    source_size: int | None = None,
    steps: int = 100,
    optimizer: OptimizerName = "lbfgs",
    lr: float | None = None,
    parameterization: ParamKind = "fourier",
    line_search: bool = True,
    callbacks: Callbacks | None = None,
    seed: int = 0,
) -> TextureResult:
    """Synthesize a ``size`` x ``size`` texture matching ``source``'s Gram matrices at ``layers``.

    ``layers`` default to the model's style layers (:func:`style_layer_preset`), ``weights`` to
    equal ones. The source is resized so its long side is ``source_size`` (default ``size``).
    ``lr`` defaults to 1 for L-BFGS and 0.05 for Adam.
    """
    layers = list(layers) if layers else style_layer_preset(model)[1]
    check_layers(model, layers)
    weights = list(weights) if weights is not None else [1.0 / len(layers)] * len(layers)
    if len(weights) != len(layers):
        raise EngineError("bad-params", f"{len(weights)} weights for {len(layers)} layers")
    size = int(size or model.spec.input_size)
    src = fit_long_side(source.detach().float().cpu(), int(source_size or size)).unsqueeze(0).to(model.device)
    with torch.no_grad():
        feats = forward_layers(model, src, layers)
        targets = {n: gram(feats[n]).detach() for n in layers}
    del feats
    loss = weighted([(w, gram_loss(n, targets[n])) for n, w in zip(layers, weights, strict=True)])
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand((1, 3, size, size), generator=gen).to(model.device)
    param = make_parameterization(parameterization, size, size, generator=gen, device=model.device,
                                  init=noise if parameterization == "pixels" else None)

    def current() -> float:
        with torch.no_grad():
            return float(loss(forward_layers(model, param.image(), layers)))

    start = current()
    lr = lr if lr is not None else (1.0 if optimizer == "lbfgs" else 0.05)
    loop_objective, step_rule = optimizer_step(optimizer, lr, model, param, maximize(loss), layers,
                                               line_search=line_search)
    res = optimize(model, param, loop_objective, layers, steps, step_rule,
                   callbacks=loss_callbacks(callbacks), counter=StepCounter(total=steps), stage="texture",
                   generator=gen)
    end = current()
    log.info("gram texture on %s: loss %.4f -> %.4f in %d steps", model.name, start, end, steps)
    return TextureResult(image=param.image().detach()[0].clamp(0, 1).cpu(), layers=layers, weights=weights,
                         loss_start=start, loss_end=end, objective=[-v for v in res.objective])


def estimate_gram_cost(model: LoadedModel, *, steps: int = 100, size: int | None = None,
                       source_size: int | None = None, optimizer: str = "lbfgs", line_search: bool = True,
                       **_: object) -> float:
    """Forward+backward passes per step at the output size, plus the source's and two scoring forwards."""
    s = int(size or model.spec.input_size)
    src = int(source_size or s)
    per = step_passes(optimizer, line_search)
    return passes(model, steps, s, s, per_step=per) + passes(model, 1, src, src, 1 / 3) + passes(model, 2, s, s, 1 / 3)


@dataclass
class EfrosLeungResult:
    image: torch.Tensor  # [3, H, W] in [0, 1], CPU
    source_coords: torch.Tensor  # [H, W, 2] long: the (y, x) of the source pixel each output pixel copies
    window: int
    objective: list[float] = field(default_factory=list)  # mean best-match distance per output row, minimized
    goal: str = "minimize"


def _gaussian_window(window: int, sigma: float) -> torch.Tensor:
    t = torch.arange(window, dtype=torch.float32) - (window - 1) / 2
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    return (g[:, None] * g[None, :]).flatten()


def efros_leung(
    model: LoadedModel | None,
    source: torch.Tensor,
    *,
    size: int | tuple[int, int] = 48,
    window: int = 11,
    epsilon: float = 0.1,
    sigma: float | None = None,
    seed_size: int = 3,
    callbacks: Callbacks | None = None,
    seed: int = 0,
) -> EfrosLeungResult:
    """Non-parametric texture synthesis from ``source`` (``[3, Hs, Ws]`` in [0, 1]) in scan-line order.

    ``model`` only chooses the device (None: CPU). ``window`` is the odd neighbourhood side;
    ``sigma`` the Gaussian weighting (default ``window / 6.4``, as in the paper). A random
    ``seed_size`` square of the source starts the top-left corner. One progress step is one row.
    """
    device = model.device if model is not None else torch.device("cpu")
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    src = source.detach().float().clamp(0, 1).to(device)
    hs, ws = src.shape[-2:]
    if window < 3 or window % 2 == 0:
        raise EngineError("bad-params", "window must be an odd number >= 3")
    if max(h, w, hs, ws) > MAX_EL_SIDE:
        raise EngineError("too-large", f"Efros-Leung sides are limited to {MAX_EL_SIDE} px")
    if hs < window or ws < window:
        raise EngineError("bad-params", f"the source ({hs}x{ws}) is smaller than the window ({window})")
    if efros_leung_work(h, w, hs, ws, window) > MAX_EL_WORK:
        raise EngineError("too-large", "output pixels x source windows is over the limit; shrink something")
    r = window // 2
    seed_size = max(1, min(int(seed_size), h, w, hs, ws))
    gen = torch.Generator().manual_seed(seed)
    cb = callbacks or Callbacks()

    # Every source window, flattened: [L, 3 * window^2], and the channel-summed squares [L, window^2].
    cols = F.unfold(src.unsqueeze(0), window)[0].T.contiguous()
    src_sq = cols.view(-1, 3, window * window).pow(2).sum(1)
    wy, wx = hs - window + 1, ws - window + 1
    centres = torch.stack(torch.meshgrid(torch.arange(wy) + r, torch.arange(wx) + r, indexing="ij"), -1).view(-1, 2)
    g = _gaussian_window(window, sigma or window / 6.4).to(device)

    out = torch.zeros((3, h + 2 * r, w + 2 * r), device=device)
    known = torch.zeros((h + 2 * r, w + 2 * r), device=device)
    coords = torch.zeros((h, w, 2), dtype=torch.long)
    sy = int(torch.randint(0, hs - seed_size + 1, (1,), generator=gen))
    sx = int(torch.randint(0, ws - seed_size + 1, (1,), generator=gen))
    out[:, r:r + seed_size, r:r + seed_size] = src[:, sy:sy + seed_size, sx:sx + seed_size]
    known[r:r + seed_size, r:r + seed_size] = 1
    yy, xx = torch.meshgrid(torch.arange(seed_size), torch.arange(seed_size), indexing="ij")
    coords[:seed_size, :seed_size, 0] = yy + sy
    coords[:seed_size, :seed_size, 1] = xx + sx

    objective: list[float] = []
    counter = StepCounter(total=h)
    for y in range(h):
        if cb.cancel is not None and cb.cancel():
            raise Cancelled(f"canceled at row {y} of {h}")
        row_best: list[float] = []
        for x in range(w):
            if y < seed_size and x < seed_size:
                continue
            nb = out[:, y:y + window, x:x + window].reshape(3, -1)
            wv = known[y:y + window, x:x + window].reshape(-1) * g
            total = wv.sum()
            # SSD = sum wv * (s - n)^2 = (s^2 . wv) - 2 (s . wv n) + (n^2 . wv), for every window at once.
            d = src_sq @ wv - 2 * (cols @ (nb * wv).reshape(-1)) + (nb.pow(2).sum(0) * wv).sum()
            d = d.clamp_min(0) / total
            best = d.min()
            cands = torch.nonzero(d <= best * (1 + epsilon) + 1e-7).flatten()
            pick = int(cands[int(torch.randint(0, cands.numel(), (1,), generator=gen))])
            cy, cx = (int(v) for v in centres[pick])
            out[:, y + r, x + r] = src[:, cy, cx]
            known[y + r, x + r] = 1
            coords[y, x, 0], coords[y, x, 1] = cy, cx
            row_best.append(float(best))
        value = sum(row_best) / len(row_best) if row_best else 0.0
        objective.append(value)
        counter.done += 1
        if cb.progress is not None:
            cb.progress(counter.done, counter.total, "efros-leung", value)
        if cb.preview is not None and cb.preview_every > 0 and counter.done % cb.preview_every == 0:
            cb.preview(counter.done, out[:, r:r + h, r:r + w].detach().cpu())
    log.info("efros-leung %dx%d from %dx%d, window %d", h, w, hs, ws, window)
    return EfrosLeungResult(image=out[:, r:r + h, r:r + w].cpu(), source_coords=coords, window=window,
                            objective=objective)


def efros_leung_work(h: int, w: int, hs: int, ws: int, window: int) -> float:
    """Multiply-adds: every output pixel against every source window, two products of window size."""
    return float(h * w) * max(hs - window + 1, 0) * max(ws - window + 1, 0) * (4 * window * window)


def estimate_efros_leung_cost(model: LoadedModel, *, size: int | tuple[int, int] = 48, source_size: tuple[int, int]
                              = (64, 64), window: int = 11, **_: object) -> float:
    """The search's multiply-adds expressed in the model's forward+backward passes at its input size."""
    h, w = (size, size) if isinstance(size, int) else size
    return efros_leung_work(h, w, source_size[0], source_size[1], window) / pass_macs(model)


def estimate_cost(model: LoadedModel, *, method: str = "gram", **params: object) -> float:
    """Either texture method's estimate, chosen by ``method`` ("gram" or "efros-leung")."""
    if method == "efros-leung":
        return estimate_efros_leung_cost(model, **params)  # type: ignore[arg-type]
    return estimate_gram_cost(model, **params)  # type: ignore[arg-type]
