"""Parameters of the optimization jobs; each field maps to the engine function's keyword of that name.

Every number is bounded: sizes and step counts are what make these jobs expensive, and the cost
estimate computed from them is checked against ``max_job_cost`` before anything is queued.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from core.schemas.bounds import STRICT, LayerItem, Weight, check_weights, ordered_range

Size = Field(None, ge=16, le=1024, description="output side in px; default the model's input size")
Steps = Field(100, ge=1, le=5000)
Seed = Field(0, ge=0, le=2**31 - 1)
Preview = Field(10, ge=0, le=5000, description="store a preview image every N steps (0: none)")
Optimizer = Literal["adam", "lbfgs"]
LayerName = Field(None, max_length=200)
ZoomRange = ordered_range(0.25, 4.0)


class StrictParams(BaseModel):
    model_config = STRICT

    def layer_names(self) -> list[str]:
        """Layer names this request refers to, checked against the model before queueing."""
        out: list[str] = []
        for name in ("layer", "layers", "content_layers", "style_layers"):
            v = getattr(self, name, None)
            out.extend([v] if isinstance(v, str) else list(v or []))
        return out


class ClassVizParams(StrictParams):
    """Class model visualization (Simonyan et al.: the logit) or a channel/neuron of any layer.

    The defaults are lucent's (a decorrelated Fourier image, Adam 0.05, pad/jitter/scale/rotate), so
    a bare ``{"target": 285}`` gives a recognizable picture; plain pixels without transforms give
    adversarial colour noise that the network scores just as high.
    """

    target: int | None = Field(None, ge=0, le=100_000, description="class index (default: 0 when no layer)")
    layer: str | None = LayerName
    channel: int | None = Field(None, ge=0, le=100_000)
    y: int | None = Field(None, ge=0, le=4096)
    x: int | None = Field(None, ge=0, le=4096)
    steps: int = Field(256, ge=1, le=5000)
    lr: float = Field(0.05, gt=0, le=10)
    size: int | None = Size
    parameterization: Literal["pixels", "fourier"] = Field("fourier", description="fourier: decorrelated-colour "
                                                           "1/f spectrum (lucent's default); pixels: the pixels")
    optimizer: Optimizer = "adam"
    l2_weight: float = Field(0.0, ge=0, le=100)
    tv_weight: float = Field(0.0, ge=0, le=100)
    blur_every: int = Field(0, ge=0, le=1000)
    blur_sigma: float = Field(0.5, ge=0.05, le=10)
    clip_norm_pct: float = Field(0.0, ge=0, le=99, description="zero pixels under this norm percentile")
    clip_contrib_pct: float = Field(0.0, ge=0, le=99, description="zero pixels under this contribution percentile")
    jitter: int = Field(8, ge=0, le=64)
    scale: ZoomRange = Field((0.9, 1.1), description="random zoom range (lo, hi), each 0.25..4, lo <= hi")
    rotate: float = Field(10.0, ge=0, le=45)
    pad: int = Field(12, ge=0, le=64)
    seed: int = Seed
    preview_every: int = Preview


class AdversarialParams(StrictParams):
    """FGSM or PGD toward ``target`` under an L-inf budget (pixel units 0..1)."""

    target: int = Field(..., ge=0, le=100_000)
    method: Literal["fgsm", "pgd"] = "pgd"
    eps: float = Field(8 / 255, gt=0, le=0.5)
    alpha: float | None = Field(None, gt=0, le=0.5)
    steps: int = Field(10, ge=1, le=1000)
    random_start: bool = True
    size: int | None = Size
    seed: int = Seed
    preview_every: int = Field(0, ge=0, le=1000)


class InversionParams(StrictParams):
    """Feature inversion (Mahendran & Vedaldi) from any layer with a total-variation prior; by default from a
    decorrelated Fourier image with a 2 px jitter (from pixel noise the result keeps rainbow static)."""

    layer: str | None = LayerName
    steps: int = Field(200, ge=1, le=5000)
    lr: float = Field(0.05, gt=0, le=10)
    size: int | None = Size
    optimizer: Optimizer = "adam"
    parameterization: Literal["pixels", "fourier"] = Field("fourier", description="fourier: decorrelated-colour "
                                                           "1/f spectrum from flat grey; pixels: from uniform noise")
    tv_weight: float = Field(0.05, ge=0, le=100)
    tv_beta: float = Field(2.0, ge=1, le=3)
    l2_weight: float = Field(0.0, ge=0, le=100)
    jitter: int = Field(2, ge=0, le=32)
    seed: int = Seed
    preview_every: int = Preview


class TextureParams(StrictParams):
    """Gram-matrix texture synthesis (Gatys et al. 2015); by default from a decorrelated Fourier image (from
    pixel noise the Gram matrices match while colour static the layers cannot see stays)."""

    layers: list[LayerItem] | None = Field(None, max_length=16)
    weights: list[Weight] | None = Field(None, max_length=16, description="one per layer, each 0..1e6")
    size: int | None = Size
    source_size: int | None = Field(None, ge=16, le=1024)
    steps: int = Steps
    optimizer: Optimizer = "lbfgs"
    lr: float | None = Field(None, gt=0, le=10)
    parameterization: Literal["pixels", "fourier"] = Field("fourier", description="fourier: decorrelated-colour "
                                                           "1/f spectrum from flat grey; pixels: from uniform noise")
    seed: int = Seed
    preview_every: int = Preview

    @field_validator("weights")
    @classmethod
    def _one_per_layer(cls, v: list[float] | None, info: ValidationInfo) -> list[float] | None:
        return check_weights(v, info.data.get("layers"), "layers")


class TextureNNParams(StrictParams):
    """Non-parametric (Efros-Leung) synthesis in scan-line order; quadratic cost, so small sizes.

    The defaults (48 px, window 11) reproduce a natural texture where a 7 px window grows flat
    patches and stray lines, and stay under the work limit for the largest source (128 px)."""

    size: int = Field(48, ge=8, le=128)
    window: int = Field(11, ge=3, le=21, description="odd neighbourhood side")
    epsilon: float = Field(0.1, ge=0, le=1)
    sigma: float | None = Field(None, gt=0, le=20)
    seed_size: int = Field(3, ge=1, le=16)
    seed: int = Seed
    preview_every: int = Field(0, ge=0, le=1000)


class StyleParams(StrictParams):
    """Neural style transfer (Gatys et al. 2016); images: content first, then style."""

    size: int | None = Size
    style_size: int | None = Field(None, ge=16, le=1024)
    content_layers: list[LayerItem] | None = Field(None, max_length=8)
    style_layers: list[LayerItem] | None = Field(None, max_length=16)
    style_layer_weights: list[Weight] | None = Field(None, max_length=16, description="one per style layer, "
                                                     "each 0..1e6")
    content_weight: float = Field(1.0, ge=0, le=1e6)
    style_weight: float = Field(1e4, ge=0, le=1e9)
    tv_weight: float = Field(1.0, ge=0, le=1e6)
    init: Literal["content", "noise"] = "content"
    optimizer: Optimizer = "lbfgs"
    lr: float | None = Field(None, gt=0, le=10)
    steps: int = Steps
    preserve_color: bool = False
    seed: int = Seed
    preview_every: int = Preview

    @field_validator("style_layer_weights")
    @classmethod
    def _one_per_layer(cls, v: list[float] | None, info: ValidationInfo) -> list[float] | None:
        return check_weights(v, info.data.get("style_layers"), "style layers")


class DeepDreamParams(StrictParams):
    """DeepDream on one layer; every knob bounded so a request cannot ask for unbounded work."""

    layer: str | None = Field(None, max_length=200, description="Layer to amplify; default: a block output about "
                              "two thirds deep")
    channel: int | None = Field(None, ge=0, le=100_000, description="Amplify only this channel of the layer")
    objective: Literal["l2", "mean"] = Field("l2", description="Mean square (l2) or mean of the activation")
    octaves: int = Field(4, ge=1, le=8)
    octave_scale: float = Field(1.4, ge=1.1, le=2.0)
    steps: int = Field(12, ge=1, le=500, description="Gradient steps per octave")
    step_size: float = Field(0.02, gt=0.0, le=0.5, description="Pixels moved per step ([0,1] units), normalized")
    jitter: int = Field(8, ge=0, le=64, description="Random shift in px per step")
    size: int = Field(224, ge=32, le=1024, description="Long side of the output in px")
    preview_every: int = Field(5, ge=0, le=500, description="Store a preview image every N steps (0: none)")
    seed: int = Field(0, ge=0, le=2**31 - 1)
