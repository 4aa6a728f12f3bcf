"""Top-k classes per image: the predict route's computation."""

from __future__ import annotations

import torch

from cnnviz.models import LoadedModel
from core.schemas.models import Prediction, PredictParams


def predict_images(model: LoadedModel, tensors: list[torch.Tensor], params: PredictParams) -> list[list[Prediction]]:
    """Top-k classes per image from one batched forward pass."""
    size = params.resolution or model.preprocessing.input_size
    x = model.preprocessing.batch(tensors, size, params.resize, model.device)
    with torch.inference_mode():
        logits = model.module(x).float()
    probs = model.probabilities(logits)  # softmax, or sigmoid(logit) per class for a sigmoid head
    k = min(params.top_k, probs.shape[1])
    top = probs.topk(k, dim=1)
    return [[Prediction(index=int(j), label=model.labels[int(j)], probability=float(p), logit=float(logits[i, j]))
             for p, j in zip(top.values[i], top.indices[i], strict=True)] for i in range(len(tensors))]
