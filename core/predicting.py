"""Top-k classes per image: the predict route's computation."""

from __future__ import annotations

from collections.abc import Callable

import torch

from cnnviz.models import LoadedModel
from core.schemas.models import ForwardKind, Prediction, PredictParams

Forward = Callable[[LoadedModel, torch.Tensor], tuple[torch.Tensor, ForwardKind]]
"""(model, batch) -> (logits, which forward ran): :meth:`core.compiled.CompiledForwards.forward`."""


def eager_forward(model: LoadedModel, x: torch.Tensor) -> tuple[torch.Tensor, ForwardKind]:
    with torch.inference_mode():
        return model.module(x), "eager"


def predict_images(model: LoadedModel, tensors: list[torch.Tensor], params: PredictParams,
                   forward: Forward = eager_forward) -> tuple[list[list[Prediction]], ForwardKind]:
    """Top-k classes per image from one batched forward pass, and which forward ran."""
    size = params.resolution or model.preprocessing.input_size
    x = model.preprocessing.batch(tensors, size, params.resize, model.device)
    out, ran = forward(model, x)
    with torch.inference_mode():
        logits = out.float()
    probs = model.probabilities(logits)  # softmax, or sigmoid(logit) per class for a sigmoid head
    k = min(params.top_k, probs.shape[1])
    top = probs.topk(k, dim=1)
    return [[Prediction(index=int(j), label=model.labels[int(j)], probability=float(p), logit=float(logits[i, j]))
             for p, j in zip(top.values[i], top.indices[i], strict=True)] for i in range(len(tensors))], ran
