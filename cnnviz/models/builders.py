"""The builders: a spec's network from torchvision, timm, a factory function, an archive or an ONNX graph.

Each takes a :class:`ModelSpec` and returns the network with its weights loaded and the spec
completed from what the source knows (timm's preprocessing, an archive's input size). Which one
runs is the spec's :attr:`~ModelSpec.source`, a key of :data:`BUILDERS`.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .efficientnet_lite import LITE_VARIANTS, efficientnet_lite
from .preprocess import INTERPOLATIONS
from .specs import ModelLoadError, ModelSpec
from .weights import load_weights

log = logging.getLogger(__name__)

Built = tuple[nn.Module, ModelSpec]


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


def build_torchvision(spec: ModelSpec) -> Built:
    """A torchvision classification builder by name, or a built-in EfficientNet-Lite variant."""
    if spec.arch in LITE_VARIANTS:
        module = efficientnet_lite(spec.arch, spec.num_classes)
    else:
        from torchvision.models import get_model, get_model_builder, list_models

        if spec.arch not in list_models():
            raise ModelLoadError(f"model {spec.name!r}: unknown torchvision architecture {spec.arch!r}")
        tv_kwargs: dict[str, Any] = {"weights": None, "num_classes": spec.num_classes, **dict(spec.kwargs)}
        if "weights_backbone" in inspect.signature(get_model_builder(spec.arch)).parameters:
            # A detector's or segmenter's backbone weights come with the file, never from a download
            # (whatever its task says: a misdeclared segmenter must fail on its output, offline).
            tv_kwargs.setdefault("weights_backbone", None)
        if spec.task in ("detection", "segmentation"):
            if "num_classes" not in spec.declared:
                tv_kwargs.pop("num_classes")  # the builder's own (COCO's 91, VOC's 21)
        if spec.arch.startswith(("googlenet", "inception")):
            tv_kwargs.update(aux_logits=False, init_weights=False)
        try:
            module = get_model(spec.arch, **tv_kwargs)
        except TypeError as exc:  # a kwarg the builder does not take
            raise ModelLoadError(f"model {spec.name!r}: cannot build torchvision {spec.arch!r}: {exc}") from exc
        if "num_classes" not in spec.declared and spec.task in ("detection", "segmentation"):
            spec = dataclasses.replace(spec, num_classes=_builder_classes(module, spec.num_classes))
    load_weights(module, spec)
    return module, spec


def _builder_classes(module: nn.Module, fallback: int) -> int:
    """Classes of a torchvision detector or segmenter built with its default head (COCO 91, VOC 21)."""
    heads = getattr(module, "roi_heads", None)
    if heads is not None:
        return int(heads.box_predictor.cls_score.out_features)
    head = getattr(module, "head", None)
    cls_head = getattr(head, "classification_head", None)
    if cls_head is not None:
        return int(getattr(cls_head, "num_classes", fallback))
    last = getattr(module, "classifier", None)
    convs = [m for m in (last.modules() if last is not None else ()) if isinstance(m, nn.Conv2d)]
    return int(convs[-1].out_channels) if convs else fallback


def build_timm(spec: ModelSpec) -> Built:
    """A timm model by name (extra [timm]), built with pretrained=False; preprocessing from its config."""
    try:
        import timm
    except ImportError as exc:
        raise ModelLoadError(f"model {spec.name!r} needs timm: pip install 'cnnviz[timm]'") from exc
    arch = spec.arch.split(":", 1)[1]
    if not timm.is_model(arch):
        raise ModelLoadError(f"model {spec.name!r}: unknown timm architecture {arch!r}")
    try:
        module = timm.create_model(arch, pretrained=False, num_classes=spec.num_classes, **dict(spec.kwargs))
    except Exception as exc:  # noqa: BLE001 - a bad kwarg is the same start-up error
        raise ModelLoadError(f"model {spec.name!r}: cannot build timm {arch!r}: {exc}") from exc
    load_weights(module, spec)
    return module, _timm_spec(spec, module)


def build_factory(spec: ModelSpec) -> Built:
    """``factory:package.module:function`` called with the entry's ``kwargs``; weights optional."""
    kwargs = dict(spec.kwargs)
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
        load_weights(module, spec)
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


def build_archive(spec: ModelSpec) -> Built:
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


def build_onnx(spec: ModelSpec) -> Built:
    """An ONNX graph on onnxruntime (:mod:`.onnx_graph`), its onnx2torch conversion attached where it agrees."""
    path = Path(spec.weights)
    if not path.is_file():
        raise ModelLoadError(f"model {spec.name!r}: ONNX file not found: {path}")
    try:
        from .onnx_graph import OnnxError, load_onnx
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ModelLoadError(f"model {spec.name!r} needs onnxruntime, onnx and onnx2torch: "
                             "pip install 'cnnviz[onnx]'") from exc
    try:
        runtime, note = load_onnx(path, spec.input_size if "input_size" in spec.declared else None,
                                  torch.get_num_threads())
    except (ImportError, OnnxError) as exc:
        raise ModelLoadError(f"model {spec.name!r}: {exc}") from exc
    if runtime.input_side and "input_size" not in spec.declared:
        spec = dataclasses.replace(spec, input_size=int(runtime.input_side))
    log.info("model %s: ONNX graph %s on onnxruntime; %s", spec.name, path, note)
    return runtime, spec


BUILDERS: dict[str, Callable[[ModelSpec], Built]] = {
    "torchvision": build_torchvision,
    "timm": build_timm,
    "factory": build_factory,
    "torchscript": build_archive,
    "export": build_archive,
    "onnx": build_onnx,
}
"""The builder of each source (:attr:`ModelSpec.source`)."""


def build(spec: ModelSpec) -> Built:
    """The network with its weights, and the spec completed from what the source knows."""
    return BUILDERS[spec.source](spec)
