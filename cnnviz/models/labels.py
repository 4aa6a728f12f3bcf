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


def read_labels(path: str) -> tuple[str, ...]:
    """Labels from a file: a JSON list of strings (``.json``), else one label a line (blank lines skipped).

    Raises ``OSError`` or ``ValueError`` with the file named; the catalog turns them into load errors.
    """
    import json
    from pathlib import Path

    p = Path(path)
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".json":
        data = json.loads(text)
        if not isinstance(data, list) or not all(isinstance(v, str) for v in data):
            raise ValueError(f"labels file {p} must hold a JSON list of strings")
        return tuple(data)
    return tuple(line.strip() for line in text.splitlines() if line.strip())
