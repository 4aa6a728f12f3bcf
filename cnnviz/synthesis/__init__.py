"""Synthesis: one optimization loop (parameterization, transforms, objectives, step rules,
progress + cancel callbacks) and the methods built on it."""

from .deepdream import DeepDreamConfig, DreamResult, deep_dream, dream_layer, estimate_cost, octave_sizes
from .loop import (
    Callbacks,
    Cancelled,
    Jitter,
    NormalizedGradientStep,
    OptimizerStep,
    PixelImage,
    StepCounter,
    forward_layers,
    layer_objective,
    optimize,
)

__all__ = [
    "Callbacks", "Cancelled", "DeepDreamConfig", "DreamResult", "Jitter", "NormalizedGradientStep", "OptimizerStep",
    "PixelImage", "StepCounter", "deep_dream", "dream_layer", "estimate_cost", "forward_layers", "layer_objective",
    "octave_sizes", "optimize",
]
