"""Training jobs (fast style, triplet head) and the trained networks they leave behind.

A training job names what it trains (``name``); the name is the client's handle on the result:
``/v1/styles/{name}`` for a style, ``/v1/embedders/{name}`` for an embedding head (usable by the
embed, verify and identify endpoints). With ``resume: true`` a job continues the name's last
checkpoint with that run's parameters; only the step count and the reporting cadences may change.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from core.schemas.bounds import STRICT, LayerItem, Weight, check_weights, ordered_range
from core.schemas.synthesis import StrictParams

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
TrainedName = Field(..., pattern=NAME_PATTERN, description="the name the trained network is stored under")
CollectionId = Field(None, min_length=1, max_length=64, pattern=r"^[a-f0-9]+$",
                     description="a collection (POST /v1/collections); not needed with resume")
LayerName = Field(None, max_length=200)
Seed = Field(0, ge=0, le=2**31 - 1)
# What a resumed run may change; everything else is the checkpoint's.
CropScale = ordered_range(0.05, 1.0)
RESUMABLE = frozenset({"name", "resume", "steps", "preview_every", "checkpoint_every", "eval_every"})


class _Training(StrictParams):
    name: str = TrainedName
    collection: str | None = CollectionId
    resume: bool = Field(False, description="continue the last checkpoint of this name")
    checkpoint_every: int = Field(100, ge=0, le=100_000, description="steps between checkpoints (0: only on "
                                  "cancel and at the end)")
    eval_every: int = Field(50, ge=1, le=100_000, description="steps between evaluations")
    seed: int = Seed

    @model_validator(mode="after")
    def _resume_or_collection(self) -> _Training:
        if self.resume:
            fixed = sorted(self.model_fields_set - RESUMABLE)
            if fixed:
                raise ValueError(f"a resumed run keeps its checkpoint's parameters; only {sorted(RESUMABLE)} "
                                 f"may be given, not {fixed}")
        elif self.collection is None:
            raise ValueError("collection is required (unless resume is true)")
        return self


class FastStyleParams(_Training):
    """Train a feed-forward style network (Johnson et al. 2016). Images: the style, then optionally
    a fixed content image for previews (default: the collection's first image)."""

    steps: int = Field(2000, ge=1, le=100_000, description="total optimizer steps (batches)")
    batch_size: int = Field(4, ge=1, le=16)
    size: int = Field(256, ge=32, le=512, description="side of the square training crops, px")
    style_size: int | None = Field(None, ge=32, le=1024, description="long side of the style image; default size")
    crop_scale: CropScale = Field((0.3, 1.0), description="area range (lo, hi) of the random content crops, "
                                  "each 0.05..1, lo <= hi")
    width: int = Field(16, ge=4, le=64, description="channels of the first stage (the paper's 32)")
    blocks: int = Field(5, ge=1, le=10, description="residual blocks")
    lr: float = Field(1e-3, gt=0, le=0.1)
    content_weight: float = Field(1.0, ge=0, le=1e4)
    style_weight: float = Field(20.0, ge=0, le=1e6)
    tv_weight: float = Field(1.0, ge=0, le=1e4)
    content_layers: list[LayerItem] | None = Field(None, max_length=8)
    style_layers: list[LayerItem] | None = Field(None, max_length=16)
    style_layer_weights: list[Weight] | None = Field(None, max_length=16, description="one per style layer, "
                                                     "each 0..1e6")
    preview_every: int = Field(50, ge=0, le=100_000, description="store a stylized preview every N steps")
    preview_size: int | None = Field(None, ge=32, le=1024, description="long side of the previews; default size")

    @field_validator("style_layer_weights")
    @classmethod
    def _one_per_layer(cls, v: list[float] | None, info: ValidationInfo) -> list[float] | None:
        return check_weights(v, info.data.get("style_layers"), "style layers")


class TripletHeadParams(_Training):
    """Train an embedding head with triplet loss on a labelled collection (FaceNet)."""

    steps: int = Field(1000, ge=1, le=100_000)
    layer: str | None = LayerName
    size: int | None = Field(None, ge=32, le=512, description="network input side, px")
    dim: int = Field(128, ge=2, le=1024, description="embedding size")
    hidden: int = Field(0, ge=0, le=4096, description="hidden units (0: a linear head)")
    margin: float = Field(0.2, gt=0, le=4, description="in squared euclidean distance of unit vectors")
    mining: Literal["semi-hard", "hard"] = "semi-hard"
    classes_per_batch: int = Field(8, ge=2, le=256)
    per_class: int = Field(4, ge=2, le=64)
    lr: float = Field(1e-3, gt=0, le=0.1)
    weight_decay: float = Field(1e-4, ge=0, le=1)
    views: int = Field(8, ge=0, le=64, description="augmented views per image (plus the image itself)")
    augment: float = Field(1.0, ge=0, le=2, description="strength of the augmentation")
    holdout: float = Field(0.25, ge=0.05, le=0.9, description="fraction held out for verification accuracy")
    split: Literal["auto", "images", "views"] = Field("auto", description="hold out images (each class needs "
                                                      "two) or views; auto picks images when it can")
    checkpoint_every: int = Field(200, ge=0, le=100_000)
    preview_every: int = Field(0, ge=0, le=100_000, description="store a preview every N steps: PCA maps of the "
                               "held-out views by the frozen features and by the head (map.png at the end)")

    @model_validator(mode="after")
    def _views_to_split(self) -> TripletHeadParams:
        if self.split == "views" and self.views < 1 and not self.resume:
            raise ValueError("split 'views' needs views >= 1: nothing would be left to train on")
        return self


class VerificationHeadParams(_Training):
    """Train a learned verification head on a labelled collection's pairs: a logistic unit on the two
    embeddings' element-wise difference, ``sigmoid(sum_k w_k |f_i - f_j|_k + b)`` (``form: abs``) or its
    chi-square variant ``sigmoid(sum_k w_k (f_i - f_j)_k^2 / (f_i + f_j)_k + b)`` (``form: chi2``). ``f`` is
    the verify endpoint's embedding of ``layer`` at ``size``; the held-out accuracy is listed beside the
    distance threshold's on the same held-out pairs."""

    steps: int = Field(300, ge=1, le=100_000)
    layer: str | None = LayerName
    size: int | None = Field(None, ge=32, le=512, description="network input side, px")
    form: Literal["abs", "chi2"] = Field("abs", description="abs: |f_i - f_j|; chi2: (f_i - f_j)^2 / (f_i + f_j)")
    pairs_per_batch: int = Field(64, ge=2, le=4096, description="pairs per step, half same, half different")
    lr: float = Field(1e-2, gt=0, le=1)
    weight_decay: float = Field(0.0, ge=0, le=1)
    views: int = Field(4, ge=0, le=64, description="augmented views per image (plus the image itself)")
    augment: float = Field(1.0, ge=0, le=2, description="strength of the augmentation")
    holdout: float = Field(0.25, ge=0.05, le=0.9, description="fraction held out for verification accuracy")
    split: Literal["auto", "images", "views"] = Field("auto", description="hold out images (each class needs "
                                                      "two) or views; auto picks images when it can")

    @model_validator(mode="after")
    def _views_to_split(self) -> VerificationHeadParams:
        if self.split == "views" and self.views < 1 and not self.resume:
            raise ValueError("split 'views' needs views >= 1: nothing would be left to train on")
        return self


class StyleApplyParams(BaseModel):
    """Test-time controls of a trained style."""

    model_config = STRICT

    size: int | None = Field(None, ge=32, le=2048, description="long side of the output; default the input's "
                             "(capped at 1024)")
    strength: float = Field(1.0, ge=0, le=1, description="0 = the content, 1 = the full style")
    preserve_color: bool = Field(False, description="keep the content's colours (luminance-only transfer)")


class StyleApplyResponse(BaseModel):
    style: str
    width: int
    height: int
    image_png: str
    timings: dict[str, float]


class TrainedInfo(BaseModel):
    name: str
    kind: Literal["style", "embedder", "verifier"]
    model: str = Field(..., description="the backbone it was trained on")
    version: str
    job: str = Field(..., description="the job that trained it")
    bytes: int
    created_at: float
    updated_at: float
    summary: dict = Field(default_factory=dict, description="config, steps, final metrics (and, for an "
                          "embedder, its calibrated threshold and held-out accuracy)")
    status: Literal["ready", "partial"] = Field("ready", description="ready: a run finished; partial: only a "
                                                "checkpoint (a run cancelled, failed or still going), usable "
                                                "as it is and resumable with resume: true")
    step: int = Field(0, description="the training steps in the weights that are used")
    checkpoint_step: int | None = Field(None, description="the step of the kept checkpoint, if any")
    training_job: str | None = Field(None, description="a job training this name now")
    links: dict[str, str]


class TrainedList(BaseModel):
    items: list[TrainedInfo]
    count: int


# type -> (params model, (min, max) images, cost function "module:function")
