"""Collections (image sets for collection-level views) and the collection-view job."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, model_validator

from core.schemas.bounds import STRICT, Box, Channel
from core.schemas.training import NAME_PATTERN

Label = Annotated[str, Field(max_length=200)]


class CollectionParams(BaseModel):
    model_config = STRICT

    labels: list[Label] | None = Field(None, max_length=1000, description="one label per image (for calibration), "
                                       "each at most 200 characters")
    boxes: list[Annotated[list[Box], Field(max_length=50)]] | None = Field(
        None, max_length=1000, description="boxes per image, in image order (for the evaluate job's pointing games): "
        "a list of (x0, y0, x1, y1) in the original image's pixels, x1 and y1 exclusive, at most 50 per image; "
        "[] for an image without boxes")


class CollectionInfo(BaseModel):
    id: str
    count: int
    labels: list[str] | None
    boxes: list[list[list[int]]] | None = Field(None, description="each image's boxes, [x0, y0, x1, y1] in its pixels")
    bytes: int
    created_at: float
    ttl_s: int
    links: dict[str, str]


class IdentifyParams(BaseModel):
    """1:K identification of a query image against a labelled collection (the gallery)."""

    model_config = STRICT

    layer: str | None = Field(None, max_length=200)
    size: int | None = Field(None, ge=32, le=512)
    head: str | None = Field(None, pattern=NAME_PATTERN, description="a trained embedding head (its layer and size)")
    threshold: float | None = Field(None, ge=0.0, le=2.0, description="unknown when no distance is under this; "
                                    "default the head's calibrated threshold, else 0.9")

    @model_validator(mode="after")
    def _head_alone(self) -> IdentifyParams:
        if self.head is not None and self.layer is not None:
            raise ValueError("a head brings its own layer; do not give layer with it")
        return self
    k: int = Field(5, ge=1, le=50, description="candidate labels to return")
    verifier: str | None = Field(None, pattern=NAME_PATTERN, description="a trained verification head (GET "
                                 "/v1/verifiers): labels ranked by its probability against each enrolled embedding "
                                 "(the gallery's embeddings of its layer are computed once and cached); unknown when "
                                 "no probability reaches 0.5")

    @model_validator(mode="after")
    def _verifier_alone(self) -> IdentifyParams:
        if self.verifier is not None and (self.head is not None or self.layer is not None
                                          or self.threshold is not None or self.size is not None):
            raise ValueError("a verifier brings its own layer, size and decision; give none of head, layer, size "
                             "or threshold with it")
        return self


class Candidate(BaseModel):
    label: str
    distance: float
    probability: float | None = Field(None, description="with a verifier: its probability of the same identity")


class IdentifyResponse(BaseModel):
    model: str
    layer: str
    head: str | None = None
    verifier: str | None = None
    label: str
    distance: float
    probability: float | None = Field(None, description="with a verifier: the best label's probability")
    threshold: float
    candidates: list[Candidate]
    enrolled: int
    cached: bool


class CollectionViewParams(BaseModel):
    """A view of a stored collection, run as a job with progress (type ``collection``)."""

    model_config = STRICT

    collection: str = Field(..., min_length=1, max_length=64, pattern=r"^[a-f0-9]+$")
    view: Literal["top_patches", "neighbours", "embedding_map", "calibrate", "enroll"]
    layer: str | None = Field(None, max_length=200)
    size: int | None = Field(None, ge=32, le=512, description="network input side in px")
    channels: list[Channel] | None = Field(None, max_length=64, description="top_patches: these channels")
    top_channels: int = Field(8, ge=1, le=64, description="top_patches: else the strongest ones")
    k: int = Field(9, ge=1, le=64, description="patches per channel, or neighbours")
    projection: Literal["deconvnet", "guided", "gradient", "none"] = Field(
        "guided", description="top_patches: how each patch's unit is projected back to pixels. guided (default): "
        "guided backpropagation, which shows what the unit saw in that patch; deconvnet: Zeiler & Fergus's rule, "
        "which depends on the image only through max-pooling switches, so on a network without max pooling "
        "(EfficientNet-Lite) it draws the same pattern for every patch of a channel; gradient: the plain gradient")
    metric: Literal["cosine", "euclidean"] = "cosine"
    method: Literal["pca", "tsne", "umap"] = "pca"
    seed: int = Field(0, ge=0, le=2**31 - 1)
    map_size: int = Field(768, ge=128, le=2048)
    head: str | None = Field(None, pattern=NAME_PATTERN, description="enroll, calibrate: embed with this trained "
                             "embedding head (GET /v1/embedders) instead of the layer's features")

    @model_validator(mode="after")
    def _head_views(self) -> CollectionViewParams:
        if self.head is not None and (self.view not in ("enroll", "calibrate") or self.layer is not None):
            raise ValueError("head applies to the enroll and calibrate views, without layer")
        return self
