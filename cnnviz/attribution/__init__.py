"""Per-image explanations: the CAM family, the gradient family, perturbation methods, attention rollout.

Importing the package registers every method in :data:`METHODS`.
"""

# Importing a family's module registers its methods.
from . import attention, cam, gradient, perturbation  # noqa: F401
from .base import (
    METHODS,
    ClassTargets,
    EngineError,
    Explanation,
    Method,
    Targets,
    UnitTarget,
    get_method,
    register,
)

__all__ = ["METHODS", "EngineError", "ClassTargets", "Explanation", "Method", "Targets", "UnitTarget",
           "get_method", "register"]
