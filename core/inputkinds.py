"""The input kinds, declared once: what a model takes, how it is decoded, budgeted, fitted and drawn.

A model's kind comes from its models-file entry (``input = "image" | "signal" | "volume"``,
:mod:`cnnviz.models.input_spec`). Each kind names, in one place:

* ``dims``: the grid its methods work on (2 for images, 1 along a signal, 3 through a volume);
* ``decode``: bytes to the decoded input, charged to a per-request budget before decoding;
* ``budget``: the setting that bounds one request's values, and their unit;
* ``formats``: what the decoder reads (a 415 lists them);
* ``pictures``: how a map is drawn for it (:mod:`core.nd_pictures` for signals and volumes).

Images keep their own, older path (``core/imaging.py``, ``service/uploads.py``,
``cnnviz/models/preprocess.py``, ``cnnviz/render``), which this entry names; signals and
volumes go through :mod:`core.nd_explaining`. A new kind is one :func:`register_input_kind`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.array_decoding import DecodedArray, ValueBudget
from core.errors import Invalid
from core.imaging import ALLOWED_FORMATS
from core.settings import Settings
from core.signal_decoding import SIGNAL_FORMATS, decode_signal
from core.volume_decoding import VOLUME_FORMATS, decode_volume


@dataclass(frozen=True)
class InputKind:
    """One kind of network input."""

    name: str
    dims: int
    formats: tuple[str, ...]
    budget_setting: str  # the Settings field bounding one request's values
    unit: str  # what the budget counts: pixels, samples, voxels
    decode: Callable[..., DecodedArray] | None = None  # bytes, budget, keywords -> decoded (None: core.imaging)
    pictures: str = ""  # what a map is drawn as

    def budget(self, settings: Settings) -> ValueBudget:
        """A fresh budget for one request."""
        return ValueBudget(int(getattr(settings, self.budget_setting)), self.unit,
                           "CNNVIZ_" + self.budget_setting.upper())


INPUT_KINDS: dict[str, InputKind] = {}


def register_input_kind(kind: InputKind) -> InputKind:
    INPUT_KINDS[kind.name] = kind
    return kind


IMAGE = register_input_kind(InputKind(
    "image", 2, ALLOWED_FORMATS, "max_request_pixels", "pixels",
    pictures="heatmap, overlay and figure at the image's own size (cnnviz/render)"))
SIGNAL = register_input_kind(InputKind(
    "signal", 1, SIGNAL_FORMATS, "max_signal_samples", "samples", decode_signal,
    pictures="each channel drawn over time with the map as a colour band behind it, and a colour scale"))
VOLUME = register_input_kind(InputKind(
    "volume", 3, VOLUME_FORMATS, "max_volume_voxels", "voxels", decode_volume,
    pictures="three orthogonal slices through the map's peak, an axial montage, and the map as NIfTI"))


def input_kind(name: str) -> InputKind:
    return INPUT_KINDS[name]


def decode_input(kind: InputKind, data: bytes, budget: ValueBudget, settings: Settings, *, model: str,
                 spacing: tuple[float, ...] = ()) -> DecodedArray:
    """One uploaded signal or volume of a request, decoded by its kind's decoder."""
    if kind.decode is None:
        raise Invalid("input-kind-mismatch", f"model {model} takes images", "images are read by core.imaging")
    extra: dict[str, Any] = {"spacing": spacing} if kind.name == "volume" else {}
    return kind.decode(data, budget, max_bytes=settings.max_body_bytes * 4, model=model, **extra)
