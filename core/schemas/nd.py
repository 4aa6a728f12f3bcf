"""Answer models of explanations and predictions on signals and volumes (models with ``input`` signal | volume).

The request parameters are the image path's (:class:`core.schemas.explain.ExplainParams`); what
means nothing along a signal or through a volume (``resolution``, ``resize``, ``localization``,
``output.size``, a faithfulness ``box``) is refused by name (:mod:`core.nd_explaining`).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from core.schemas.explain import Faithfulness, TargetInfo, Timings


class GridMap(BaseModel):
    """One map on the caller's own grid: samples of the signal, or voxels of the volume (D, H, W)."""

    shape: list[int] = Field(description="[L] for a signal, [D, H, W] for a volume: the input's own grid")
    native_shape: list[int] = Field(description="the map as the method made it (a CAM's layer grid)")
    min: float
    max: float
    peak: list[int] = Field(description="grid index of the map's maximum (|map| for a signed map)")
    peak_seconds: float | None = Field(None, description="signals with a sampling rate: the peak's time")
    peak_mm: list[float] | None = Field(None, description="volumes: the peak's position in mm (the input's affine)")
    values: list[float] | None = Field(None, description="signals: the map at every sample (always); volumes: the "
                                       "flattened D x H x W values with output.raw")


class NdTargetExplanation(BaseModel):
    target: TargetInfo
    map: GridMap
    map_kind: str
    signal_png: str | None = Field(None, description="signals: base64 PNG, each channel over the map")
    slices_png: str | None = Field(None, description="volumes: base64 PNG, three orthogonal slices through the peak")
    montage_png: str | None = Field(None, description="volumes: base64 PNG, an axial montage")
    faithfulness: Faithfulness | None = None
    completeness: dict[str, float | int | bool] | None = None


class NdInputExplanation(BaseModel):
    index: int
    kind: str = Field(description="signal | volume")
    format: str = Field(description="what the upload was decoded as: npy, csv, json, wfdb, nifti, dicom, npz")
    shape: list[int] = Field(description="[C, L] or [C, D, H, W] as uploaded")
    channel_names: list[str] = []
    sampling_rate: float | None = None
    spacing: list[float] | None = Field(None, description="volumes: mm per voxel along D, H, W")
    explanations: list[NdTargetExplanation]


class NdExplainResponse(BaseModel):
    model: str
    method: str
    layer: str | None = None
    input_kind: str
    input_shape: list[int] = Field(description="what the network takes: [C, L] or [C, D, H, W]")
    inputs: list[NdInputExplanation]
    warnings: list[str] = []
    details: dict[str, str | int | float | bool] = {}
    timings: Timings
