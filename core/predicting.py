"""Top-k classes per image: the predict route's computation."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from cnnviz.attribution import METHODS
from cnnviz.models import LoadedModel
from core.errors import Invalid
from core.explaining import CheckedExplain, check_explain
from core.lookups import known_method
from core.schemas.explain import ExplainResponse
from core.schemas.models import ForwardKind, PredictedMap, Prediction, PredictParams

Forward = Callable[[LoadedModel, torch.Tensor], tuple[torch.Tensor, ForwardKind]]
"""(model, batch) -> (logits, which forward ran): :meth:`core.compiled.CompiledForwards.forward`."""


EAGER_CHUNK = 4
"""Images per eager forward. A CPU forward gains nothing from a larger batch, and its activations grow
with it: sixteen Lite0 images at 224 px took 389 ms and 243 MB of peak memory as one batch, 213 ms and
69 MB as four of four (2 threads). The compiled graphs run in chunks of their own sizes (core/compiled.py)."""


def eager_forward(model: LoadedModel, x: torch.Tensor) -> tuple[torch.Tensor, ForwardKind]:
    """Logits of the served module (onnxruntime for an ONNX graph), :data:`EAGER_CHUNK` images at a time."""
    net = model.runtime_module
    with torch.inference_mode():
        if x.shape[0] <= EAGER_CHUNK:
            return net(x), "eager"
        return torch.cat([net(part) for part in x.split(EAGER_CHUNK)]), "eager"


def predict_images(model: LoadedModel, images: Iterable[torch.Tensor], params: PredictParams,
                   forward: Forward = eager_forward) -> tuple[list[list[Prediction]], ForwardKind]:
    """Top-k classes per image from one batched forward pass, and which forward ran.

    ``images`` are ``[3,H,W]`` in [0,1] at their own size: this is the one place they are fitted to
    the network input (``params.resize``, else the model's default fit), one at a time, so a lazy
    iterable keeps a single full-size float image in memory. Fitting them before would fit twice
    (a center crop of a center crop is a zoomed crop).
    """
    size = params.resolution or model.preprocessing.input_size
    x = model.preprocessing.batch(images, size, params.resize, model.device)
    out, ran = forward(model, x)
    with torch.inference_mode():
        logits = out.float()
    probs = model.probabilities(logits)  # softmax, or sigmoid(logit) per class for a sigmoid head
    k = min(params.top_k or 5, probs.shape[1])
    top = probs.topk(k, dim=1)
    return [[Prediction(index=int(j), label=model.labels[int(j)], probability=float(p), logit=float(logits[i, j]))
             for p, j in zip(top.values[i], top.indices[i], strict=True)] for i in range(x.shape[0])], ran


def check_predict_explain(model: LoadedModel, params: PredictParams, n_images: int) -> CheckedExplain:
    """Predict's ``explain`` as an explain request of the top_k classes: checked and priced once.

    Only the CAM family is offered: its engine call is one forward (plus a backward through the head
    for the gradient variants), whose logits give the top classes; a map costs little beside the
    prediction. The maps come back raw (no heatmap), the overlay only when asked.
    """
    e = params.explain
    assert e is not None
    m = known_method(e.method)
    if m.family != "cam":
        cams = sorted(n for n, meth in METHODS.items() if meth.family == "cam" and meth.unavailable(model) is None)
        raise Invalid("explain-not-cam", f"predict explains with a CAM-family method, not {e.method!r}",
                      "use POST /v1/models/{model}/explain/{method} for the other families", choices=cams)
    raw: dict[str, Any] = {**e.options, "top_k": params.top_k or 5, "layer": e.layer, "resolution": params.resolution,
                           "resize": params.resize,
                           "output": {"heatmap": False, "overlay": e.overlay, "raw": True, "format": "png"}}
    return check_explain(model, e.method, {k: v for k, v in raw.items() if v is not None}, n_images)


def predictions_from(answer: ExplainResponse) -> list[tuple[list[Prediction], list[PredictedMap]]]:
    """Each image's top classes and their maps, read from an explanation of its top_k classes.

    The CAM engine resolves top-k targets from the logits of its own forward pass and reports each
    target's logit and probability: the prediction is that forward's, not a second one.
    """
    out = []
    for img in answer.images:
        preds, maps = [], []
        for e in img.explanations:
            t = e.target
            preds.append(Prediction(index=t.index, label=t.label or str(t.index),
                                    probability=float(t.probability if t.probability is not None else 0.0),
                                    logit=t.score))
            maps.append(PredictedMap(index=t.index, map=e.map, overlay_png=e.overlay_png))
        out.append((preds, maps))
    return out
