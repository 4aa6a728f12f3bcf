"""Which map can I trust? Sanity checks and faithfulness of explanation methods over a labelled set.

:func:`evaluate` runs, per method and per image, the RISE deletion / insertion protocol (and the
same against a random pixel order), the pointing and energy-based pointing games where boxes are
given, and the model-parameter randomization test of Adebayo et al. (cascading and independent),
batching images and perturbation steps and sharing every forward the methods have in common.
"""

from cnnviz.trust.curves import CurveSet, deletion_insertion_many
from cnnviz.trust.evaluate import (
    EvaluatedMethod,
    Evaluation,
    MethodSpec,
    SanityCheck,
    evaluate,
    sanity_check,
)
from cnnviz.trust.pointing import centre_map, energy_in_boxes, pointing_hit
from cnnviz.trust.randomization import Stage, main_stages, named_stages, randomized_copy, served_copy, with_module
from cnnviz.trust.similarity import spearman, ssim
from cnnviz.trust.summary import Interval, mean_interval

__all__ = [
    "CurveSet", "EvaluatedMethod", "Evaluation", "Interval", "MethodSpec", "SanityCheck", "Stage", "centre_map",
    "deletion_insertion_many", "energy_in_boxes", "evaluate", "main_stages", "mean_interval", "named_stages",
    "pointing_hit", "randomized_copy", "sanity_check", "served_copy", "spearman", "ssim", "with_module",
]
