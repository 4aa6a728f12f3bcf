"""The models file's input keys: what a network takes, an image, a 1-D signal or a 3-D volume.

``input = "image"`` (the default) keeps every image key as it was. ``input = "signal"`` takes
``channels`` and ``length`` (samples) and optionally ``sampling_rate`` (Hz); ``input = "volume"``
takes ``channels``, ``size = [D, H, W]`` and optionally ``spacing`` (mm per voxel, D H W). A
signal or volume model's ``mean`` / ``std`` have one value per channel (default 0 and 1: the
network sees the values as sent, resampled to its grid).

Kept apart from :mod:`.specs` so the one declaration of the keys and their checks stays small.
"""

from __future__ import annotations

from typing import Any

INPUT_KINDS = ("image", "signal", "volume")
INPUT_KEYS = frozenset({"input", "channels", "length", "sampling_rate", "size", "spacing"})
MAX_CHANNELS = 64
MAX_LENGTH = 1_000_000
MAX_SIDE = 1024


def _positive_int(v: Any, top: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= top


def input_fields(entry: dict[str, Any], where: str, error: type[Exception]) -> dict[str, Any]:
    """The :class:`~.specs.ModelSpec` fields of an entry's input keys, checked; ``error`` names the entry."""
    kind = entry.get("input", "image")
    if kind not in INPUT_KINDS:
        raise error(f"{where}: input must be one of {list(INPUT_KINDS)}, got {kind!r}")
    given = INPUT_KEYS & set(entry) - {"input"}
    allowed = {"image": set(), "signal": {"channels", "length", "sampling_rate"},
               "volume": {"channels", "size", "spacing"}}[kind]
    if given - allowed:
        raise error(f"{where}: {sorted(given - allowed)} do not apply to input = {kind!r}"
                    f" (it takes {sorted(allowed) or 'none of them'})")
    if kind == "image":
        return {}
    channels = entry.get("channels", 1)
    if not _positive_int(channels, MAX_CHANNELS):
        raise error(f"{where}: channels must be an integer 1..{MAX_CHANNELS}")
    out: dict[str, Any] = {"input": kind, "channels": channels, "mean": (0.0,) * channels,
                           "std": (1.0,) * channels}
    if kind == "signal":
        length = entry.get("length")
        if not _positive_int(length, MAX_LENGTH) or length < 8:
            raise error(f"{where}: a signal model needs length = samples, an integer 8..{MAX_LENGTH}")
        rate = entry.get("sampling_rate", 0.0)
        if not isinstance(rate, int | float) or isinstance(rate, bool) or not 0 <= rate <= 1e6:
            raise error(f"{where}: sampling_rate must be a number of Hz, 0..1e6")
        out.update(grid=(length,), sampling_rate=float(rate), input_size=length)
    else:
        size = entry.get("size")
        if not isinstance(size, list) or len(size) != 3 or not all(_positive_int(v, MAX_SIDE) for v in size):
            raise error(f"{where}: a volume model needs size = [D, H, W], integers 1..{MAX_SIDE}")
        spacing = entry.get("spacing", [1.0, 1.0, 1.0])
        if (not isinstance(spacing, list) or len(spacing) != 3
                or not all(isinstance(v, int | float) and not isinstance(v, bool) and 0 < v <= 1000 for v in spacing)):
            raise error(f"{where}: spacing must be [D, H, W] millimetres per voxel, each in (0, 1000]")
        out.update(grid=tuple(size), spacing=tuple(float(v) for v in spacing), input_size=max(size))
    return out
