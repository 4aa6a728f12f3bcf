"""Predict's compiled forward: it agrees with the eager module, serves only the input it was compiled
for (so a request never recompiles), and a model that cannot compile stays eager and says why."""

from __future__ import annotations

import pytest
import torch

from core.compiled import CompiledForwards, compiler_missing
from tests.unit.tiny import SIZE, tiny_model

needs_compiler = pytest.mark.skipif(compiler_missing() is not None, reason=str(compiler_missing()))


@needs_compiler
def test_compiled_forward_matches_eager_and_serves_only_its_shape():
    model = tiny_model()
    forwards = CompiledForwards(True, 2)
    assert forwards.state(model)[0] == "off"
    forwards.ensure(model)
    assert forwards.wait(model, timeout=600) == "ready", forwards.state(model)
    x = model.preprocessing.normalize(torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)))
    got, ran = forwards.forward(model, x)
    assert ran == "compiled"
    with torch.no_grad():
        want = model.module(x)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
    for other in (x.repeat(2, 1, 1, 1), torch.nn.functional.interpolate(x, size=(SIZE * 2, SIZE * 2))):
        out, ran = forwards.forward(model, other)  # another batch or size: the eager module, no recompile
        assert ran == "eager" and torch.allclose(out, model.module(other), atol=1e-6)


def test_disabled_and_failed_compiles_stay_eager(monkeypatch):
    model = tiny_model()
    off = CompiledForwards(False, 2)
    off.ensure(model)
    state, reason = off.state(model)
    assert state == "off" and "disabled" in reason
    assert off.forward(model, torch.zeros(1, 3, SIZE, SIZE))[1] == "eager"

    broken = CompiledForwards(True, 2)
    broken.off_reason = None  # as if a compiler were there

    def fail(_model):
        raise RuntimeError("compiled logits differ from eager by 1 (scale 1)")

    monkeypatch.setattr(CompiledForwards, "_build", staticmethod(fail))
    broken.ensure(model)
    assert broken.wait(model, timeout=60) == "failed"
    assert "differ" in broken.state(model)[1]
    assert broken.forward(model, torch.zeros(1, 3, SIZE, SIZE))[1] == "eager"
