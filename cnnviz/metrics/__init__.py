"""Faithfulness metrics for saliency maps: deletion / insertion AUC and the pointing game."""

from cnnviz.metrics.faithfulness import (
    FaithfulnessResult,
    default_insertion_baseline,
    deletion_insertion,
    energy_in_box,
    pointing_game,
)
from cnnviz.metrics.regions import energy_in_mask, mask_pointing_game

__all__ = ["FaithfulnessResult", "default_insertion_baseline", "deletion_insertion", "energy_in_box",
           "energy_in_mask", "mask_pointing_game", "pointing_game"]
