"""Top-k classes per image: the predict route's computation."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from cnnviz.models import LoadedModel
from core.schemas.models import ForwardKind, Prediction, PredictParams

Forward = Callable[[LoadedModel, torch.Tensor], tuple[torch.Tensor, ForwardKind]]
"""(model, batch) -> (logits, which forward ran): :meth:`core.compiled.CompiledForwards.forward`."""


EAGER_CHUNK = 4
"""Images per eager forward. A CPU forward gains nothing from a larger batch, and its activations grow
with it: sixteen Lite0 images at 224 px took 389 ms and 243 MB of peak memory as one batch, 213 ms and
69 MB as four of four (2 threads). The compiled graphs run in chunks of their own sizes (core/compiled.py)."""


def eager_forward(model: LoadedModel, x: torch.Tensor) -> tuple[torch.Tensor, ForwardKind]:
    """Logits of the served module, :data:`EAGER_CHUNK` images at a time."""
    with torch.inference_mode():
        if x.shape[0] <= EAGER_CHUNK:
            return model.module(x), "eager"
        return torch.cat([model.module(part) for part in x.split(EAGER_CHUNK)]), "eager"


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
