"""The optimization loop fails cleanly when values stop being finite, and refuses non-finite knobs."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import tiny_model

from cnnviz.errors import EngineError
from cnnviz.synthesis import class_viz as cv
from cnnviz.synthesis.loop import NormalizedGradientStep, PixelImage, layer_objective, optimize
from cnnviz.synthesis.transforms import RandomAffine


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def _start() -> PixelImage:
    return PixelImage(torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0)))


def test_a_non_finite_objective_fails_with_non_finite(model):
    objective = layer_objective("act2")
    with pytest.raises(EngineError) as info:
        optimize(model, _start(), lambda acts: objective(acts) * math.inf, ["act2"], 5, NormalizedGradientStep(0.01))
    assert info.value.slug == "non-finite" and "step 1 of 5" in str(info.value)


def test_a_step_that_makes_the_image_nan_fails_with_non_finite(model):
    steps: list[int] = []

    def poison(params, grads):
        steps.append(1)
        if len(steps) == 3:
            with torch.no_grad():
                params[0].fill_(math.nan)

    with pytest.raises(EngineError) as info:
        optimize(model, _start(), layer_objective("act2"), ["act2"], 10, poison)
    assert info.value.slug == "non-finite" and "step 3 of 10" in str(info.value)


def test_finite_runs_are_untouched(model):
    r = optimize(model, _start(), layer_objective("act2"), ["act2"], 3, NormalizedGradientStep(0.01))
    assert len(r.objective) == 3 and all(math.isfinite(v) for v in r.objective)


@pytest.mark.parametrize("scale", [(math.inf, math.inf), (1.0, math.inf), (math.nan, 1.0), (0.0, 1.0), (2.0, 1.0)])
def test_engine_refuses_non_finite_or_unordered_zoom(model, scale):
    with pytest.raises(EngineError):
        RandomAffine(scale)
    with pytest.raises(EngineError):
        cv.class_visualization(model, target=0, steps=1, size=32, scale=scale)
