"""Per-image explanations: the CAM family, the gradient family, perturbation methods, attention rollout.

One module per family (``cam``, ``gradient`` with its backward ``rules``, ``perturbation``,
``attention``) on the shared :mod:`.base`; the speed machinery they run on is in :mod:`.fast`.
Importing the package registers every method in :data:`METHODS`.
"""

# Importing a family's module registers its methods.
from . import attention, cam, gradient, perturbation  # noqa: F401
from .base import (
    MAP_KINDS,
    METHODS,
    REGION_LOGITS,
    ClassTargets,
    EngineError,
    Explanation,
    MapKind,
    Method,
    RegionTargets,
    Targets,
    UnitTarget,
    get_method,
    register,
)
from .boxes import BoxTargets

__all__ = ["MAP_KINDS", "METHODS", "REGION_LOGITS", "BoxTargets", "ClassTargets", "EngineError", "Explanation",
           "MapKind", "Method", "RegionTargets", "Targets", "UnitTarget", "get_method", "register"]
