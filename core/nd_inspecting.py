"""Filters and activations of 1-D and 3-D layers (the ``filters`` and ``activations`` views of signal and volume
models): the same parameters as the image views (:mod:`core.schemas.inspect`), drawn by :mod:`cnnviz.render.nd_plots`.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnviz.hooks import LayerCapture, capture
from cnnviz.models import LoadedModel
from cnnviz.render.nd_plots import activations_plot, filters_plot
from core.array_decoding import DecodedArray
from core.errors import Invalid
from core.lookups import check_layers
from core.nd_explaining import check_inputs, fitted_batch
from core.schemas.inspect import ActivationsParams, FiltersParams

CONVS = (nn.Conv1d, nn.Conv3d)
ND_VIEWS = ("filters", "activations")


def nd_filters(model: LoadedModel, params: FiltersParams) -> dict[str, Any]:
    """The kernels of a Conv1d / Conv3d layer (default: the first one): shape, and a picture."""
    if params.layer is None:
        name = next((n for n, m in model.module.named_modules() if isinstance(m, CONVS)), None)
        if name is None:
            raise Invalid("layer-unusable", f"model {model.name} has no Conv1d or Conv3d layer")
    else:
        check_layers(model, [params.layer])
        name = params.layer
        if not isinstance(model.submodule(name), CONVS):
            raise Invalid("layer-unusable", f"layer {name!r} is a {type(model.submodule(name)).__name__}, not a"
                          " Conv1d or Conv3d")
    weight = model.submodule(name).weight.detach().float().cpu().numpy()
    png = filters_plot(weight, title=f"{model.name} {name}: {weight.shape[0]} filters", max_filters=params.max_filters)
    return {"model": model.name, "layer": name, "shape": list(weight.shape),
            "plot_png": base64.b64encode(png).decode("ascii")}


def nd_activations(model: LoadedModel, inputs: list[DecodedArray], params: ActivationsParams) -> dict[str, Any]:
    """One input's activations at a layer (default: the CAM layer): the strongest channels (or those asked)."""
    if params.resolution is not None:
        raise Invalid("not-for-this-input", f"resolution does not apply to a {model.input_kind} model",
                      parameters=["resolution"])
    check_inputs(model, inputs)
    name = params.layer or model.default_layer
    if name is None:
        raise Invalid("layer-unusable", f"model {model.name} exposes no layer outputs")
    check_layers(model, [name])
    cap = LayerCapture()
    with torch.no_grad(), capture(model.module, {name: cap}):
        model.module(fitted_batch(model, inputs))
    out = cap.output
    if out is None or out.dim() != len(model.spec.input_shape) + 1:
        shape = list(out.shape[1:]) if out is not None else None
        raise Invalid("layer-not-spatial", f"layer {name!r} has output {shape}; activations need a [C, l] or"
                      " [C, d, h, w] grid")
    acts = out[0].float().cpu().numpy()
    flat = acts.reshape(acts.shape[0], -1)
    score = flat.mean(1) if params.rank_by == "mean" else flat.max(1)
    if params.channels:
        bad = [c for c in params.channels if not 0 <= c < acts.shape[0]]
        if bad:
            raise Invalid("unknown-channel", f"channels {bad} are outside 0..{acts.shape[0] - 1} of {name}")
        chosen = list(params.channels)
    else:
        chosen = [int(c) for c in np.argsort(-score, kind="stable")[: params.top]]
    d = inputs[0]
    png = activations_plot(acts, chosen, title=f"{model.name} {name}: {len(chosen)} of {acts.shape[0]} channels",
                           sampling_rate=d.sampling_rate or model.spec.sampling_rate or None,
                           length=d.grid[0] if d.kind == "signal" else None)
    answer: dict[str, Any] = {"model": model.name, "layer": name, "shape": list(acts.shape), "channels": chosen,
                              "scores": [float(score[c]) for c in chosen],
                              "plot_png": base64.b64encode(png).decode("ascii")}
    if params.values:
        answer["values"] = [acts[c].round(6).tolist() for c in chosen]
    return answer
