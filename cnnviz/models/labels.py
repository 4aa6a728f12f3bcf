"""Class labels. ImageNet names come from torchvision's bundled weight metadata (no download)."""

from __future__ import annotations

from functools import cache


@cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in index order, as torchvision ships them."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return tuple(_IMAGENET_CATEGORIES)


def labels_for(kind: str, num_classes: int) -> tuple[str, ...]:
    """Labels for a model: ``imagenet`` names, or ``class_<i>`` placeholders for anything else."""
    if kind == "imagenet" and num_classes == 1000:
        return imagenet_labels()
    return tuple(f"class_{i}" for i in range(num_classes))
