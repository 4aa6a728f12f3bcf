"""Per-image explanations: the CAM family, the gradient family and perturbation methods.

Importing the package registers every method in :data:`METHODS`.
"""

from . import cam  # noqa: F401  (registers the CAM family)
from .base import (
    METHODS,
    AttributionError,
    ClassTargets,
    Explanation,
    Method,
    Targets,
    UnitTarget,
    get_method,
    register,
)

__all__ = ["METHODS", "AttributionError", "ClassTargets", "Explanation", "Method", "Targets", "UnitTarget",
           "get_method", "register"]
