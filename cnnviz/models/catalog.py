"""The model catalog: which networks exist, and each loaded once (built, weights checked, frozen, moved).

:meth:`Catalog.open` takes its configuration as arguments (the models file, the device, the default
model) and reads no environment: the service and the workers read their settings and pass them.
The entries are :mod:`.specs`, the networks come from :mod:`.builders`, weights from :mod:`.weights`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading

import torch
from torch import nn

from .builders import build
from .labels import labels_for
from .layers import default_target_layer, layer_table, opaque_layer_table
from .loaded import LoadedModel
from .preprocess import Preprocessing
from .preprocess_nd import ArrayPreprocessing
from .specs import DEFAULT_MODEL, ModelLoadError, ModelSpec, lite_specs, specs_from_file
from .tasks import dry_scalar, output_classes, task_layers

log = logging.getLogger(__name__)


class UnknownModelError(KeyError):
    """The requested model is not in the catalog."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(name)
        self.name = name
        self.known = known


def _not_inplace(module: nn.Module) -> None:
    """In-place activations break gradient hooks and rule replacement; turn them off."""
    for m in module.modules():
        if hasattr(m, "inplace") and isinstance(m.inplace, bool):
            m.inplace = False


def _backward_works(module: nn.Module, spec: ModelSpec, device: torch.device) -> bool:
    x = torch.randn(1, *spec.input_shape, device=device, requires_grad=True)
    try:
        with torch.enable_grad():
            dry_scalar(spec, module(x)).backward()
        return x.grad is not None
    except Exception as exc:  # noqa: BLE001 - whatever stops the backward, the answer is the same
        log.info("backward pass unavailable (%s)", exc)
        return False


def load_model(spec: ModelSpec, device: torch.device | str = "cpu") -> LoadedModel:
    """Build, load weights strictly, freeze and move one model; compute its layer table."""
    module, spec = build(spec)
    runtime: nn.Module | None = None
    if spec.source == "onnx":  # onnxruntime answers; the conversion, where there is one, is explained
        runtime = module
        converted = getattr(runtime, "converted", None)
        module = converted if converted is not None else runtime
    opaque = runtime is module  # an ONNX graph that did not convert: no layers, no gradients
    archive = spec.source in ("torchscript", "export") or opaque
    if not archive:
        _not_inplace(module)
    module.eval()
    for p in module.parameters():  # (ScriptModules have no requires_grad_)
        p.requires_grad_(False)
    device = torch.device(device)
    # channels_last convolutions are markedly faster on CPU (oneDNN) and on tensor-core GPUs,
    # most of all for the batched sweeps of Score-CAM, occlusion and RISE.
    if archive or spec.input != "image":  # channels_last is a 4-D layout: 1-D and 3-D weights keep theirs
        module.to(device)
    else:
        module.to(device=device, memory_format=torch.channels_last)
    if opaque:
        gradients, layers = False, []
    elif spec.source == "torchscript":
        gradients = spec.gradients and _backward_works(module, spec, device)
        layers = opaque_layer_table(module)
    else:
        gradients = spec.gradients

        def scalar(out: object) -> torch.Tensor:
            return dry_scalar(spec, out)

        try:
            try:
                layers = layer_table(module, spec.input_size, device, gradients=gradients,
                                     input_shape=spec.input_shape, scalar=scalar)
            except Exception as exc:  # noqa: BLE001 - a failing backward: describe the layers without it
                if not gradients:
                    raise
                log.info("model %s: backward pass unavailable (%s)", spec.name, exc)
                gradients = False
                layers = layer_table(module, spec.input_size, device, gradients=False,
                                     input_shape=spec.input_shape, scalar=scalar)
        except Exception as exc:  # noqa: BLE001 - a model that cannot run is a start-up error naming it
            shape = ",".join(str(v) for v in spec.input_shape)
            raise ModelLoadError(f"model {spec.name!r} ({spec.weights or spec.arch}) does not run on a "
                                 f"[1,{shape}] input (set {'input_size' if spec.input == 'image' else 'its input keys'}"
                                 f"?): {exc}") from exc
    with torch.no_grad():
        answers = runtime if runtime is not None else module
        out = answers(torch.zeros(1, *spec.input_shape, device=device))
    classes = output_classes(spec, out)  # a detector's labels are indices: its classes come from its labels
    if classes is None:
        classes = len(spec.labels) if isinstance(spec.labels, tuple) else spec.num_classes
    if classes != spec.num_classes:
        if "num_classes" in spec.declared or isinstance(spec.labels, tuple):
            raise ModelLoadError(f"model {spec.name!r} ({spec.weights}) has {classes} outputs, the models file"
                                 f" says {spec.num_classes} classes")
        spec = dataclasses.replace(spec, num_classes=classes)  # an archive's or a factory's own head
    prep: Preprocessing | ArrayPreprocessing = (
        Preprocessing(spec.input_size, spec.mean, spec.std, spec.crop_fraction, spec.interpolation,
                      spec.resize) if spec.input == "image"  # type: ignore[arg-type]
        else ArrayPreprocessing(spec.grid, spec.mean, spec.std))
    labels = spec.labels if isinstance(spec.labels, tuple) else labels_for(spec.labels, spec.num_classes)
    try:
        default = default_target_layer(task_layers(spec, layers), spec.num_classes)
    except ValueError:
        default = None
    if spec.layer is not None:
        named = next((li for li in layers if li.name == spec.layer), None)
        if named is None or named.grid is None:
            raise ModelLoadError(f"model {spec.name!r}: layer = {spec.layer!r} is not a layer with a spatial output"
                                 f" (the default is {default!r})")
        default = spec.layer
    log.info("loaded model %s (%s) from %s on %s%s", spec.name, spec.arch, spec.weights or "its factory", device,
             "" if gradients else " (no gradients)")
    return LoadedModel(spec, module, prep, labels, layers, default, device, gradients, runtime=runtime)


def default_device(device: torch.device | str | None = None) -> torch.device:
    """``device`` when given, else the first CUDA device when present, else the CPU (a pure pick)."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Catalog:
    """Every known model; each is loaded once, on first use or eagerly at start-up."""

    def __init__(self, specs: list[ModelSpec], device: torch.device | str | None = None,
                 default: str = DEFAULT_MODEL) -> None:
        self.specs = {s.name: s for s in specs}
        self.device = default_device(device)
        self.default = default if default in self.specs else next(iter(self.specs), default)
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(cls, models_file: str | None, device: torch.device | str | None, default: str | None) -> Catalog:
        """The built-in models plus those of ``models_file`` (None: none), on ``device`` (None: the first
        CUDA device when present, else the CPU), ``default`` the model asked for when none is named
        (None: efficientnet-lite0; a name not in the catalog: its first model).

        Reads no environment variable: the service and the workers read their settings and pass them.
        """
        specs = lite_specs()
        if models_file:
            specs += specs_from_file(models_file)
        return cls(specs, device, default or DEFAULT_MODEL)

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
