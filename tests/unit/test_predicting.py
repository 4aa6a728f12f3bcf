"""The eager forward behind predict: it runs a large batch in chunks of EAGER_CHUNK images (bounded
memory, and faster on a CPU) and gives each image the logits it has alone."""

from __future__ import annotations

import torch

from core.predicting import EAGER_CHUNK, eager_forward
from tests.unit.tiny import SIZE, tiny_model


def test_eager_forward_runs_in_chunks_and_equals_each_image_alone() -> None:
    model = tiny_model()
    n = 2 * EAGER_CHUNK + 1
    x = model.preprocessing.normalize(torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3)))
    seen: list[int] = []
    hook = model.module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    try:
        logits, ran = eager_forward(model, x)
    finally:
        hook.remove()
    assert ran == "eager" and seen == [EAGER_CHUNK, EAGER_CHUNK, 1]
    with torch.inference_mode():
        alone = torch.cat([model.module(x[i:i + 1]) for i in range(n)])
    assert logits.shape == alone.shape
    assert torch.allclose(logits, alone, rtol=1e-5, atol=1e-6)
    few, _ = eager_forward(model, x[:EAGER_CHUNK])
    assert torch.allclose(few, alone[:EAGER_CHUNK], rtol=1e-5, atol=1e-6)
