"""Synthetic scenes with known objects: what the repository's own detector and segmenter learn from.

No detector or segmenter weights can be downloaded where cnnviz is tested, so it trains small ones
on scenes whose truth is known exactly (:mod:`.scenes`), and the tests check explanations against
that truth.
"""

from .scenes import SHAPES, Scene, make_scene, scene_batch

__all__ = ["SHAPES", "Scene", "make_scene", "scene_batch"]
