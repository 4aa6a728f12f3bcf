"""The ``Accept: image/png`` answer to an explain request: a picture, and headers that say what it shows.

Kept apart from :mod:`core.explain_pictures` because it runs a whole explanation
(:func:`core.explaining.run_explanation`), which renders with that module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import torch

from cnnviz.models import LoadedModel
from cnnviz.render import encode_png
from core.explain_pictures import grid_png, stack_rows
from core.explaining import Engine, compute, light_work, run_explanation
from core.imaging import DecodedImage
from core.lanes import DIRECT
from core.lookups import known_method
from core.schemas.explain import ExplainParams, TargetExplanation

PNG_HEADERS: dict[str, str] = {
    "X-Cnnviz-Model": "The model's name",
    "X-Cnnviz-Method": "The method's name",
    "X-Cnnviz-Layer": "The layer explained (empty for methods without one; a layer sweep's, comma-separated)",
    "X-Cnnviz-Tiles": "`image:class:label` per tile, comma-separated, labels percent-encoded",
    "X-Cnnviz-Precision": "The precision the method's forwards ran at (`fp32`, `bf16`, `fp16`)",
}
"""Every header of the PNG answer, in order, with what it says: :func:`png_answer` fills exactly
these, and the explain route's OpenAPI entry lists them."""


def png_answer(model: LoadedModel, method: str, images: list[DecodedImage],
               params: ExplainParams, engine: Engine = compute,
               lane: Callable[..., Any] = DIRECT) -> tuple[bytes, dict[str, str]]:
    """For ``Accept: image/png``: PNG bytes and the :data:`PNG_HEADERS` (model, method, layer, tiles, precision).

    One map: its overlay at the original size. More (several images, ``top_k`` > 1, ``targets``):
    a captioned grid of every overlay, one row per image, each tile at most 512 px long. A layer
    sweep: per image and target, one captioned row of the layers' overlays.
    """
    # Only overlays are drawn: no heatmap, figure or raw values, nothing encoded but the PNG.
    output = params.output.model_copy(update={"overlay": True, "heatmap": False, "raw": False, "figure": False,
                                              "inline": True, "format": "png"})
    kept: list[tuple[int, TargetExplanation, torch.Tensor]] = []
    resp = run_explanation(model, method, images, params.model_copy(update={"output": output}), keep=kept,
                           engine=engine, lane=lane)
    title = known_method(method).title or method
    tiles = [f"{i}:{e.target.index}:{_header_text(e.target.label or '')}" for i, e, _ in kept]
    layer = ",".join(resp.layers) if resp.layers else resp.layer or ""
    headers = dict(zip(PNG_HEADERS, (resp.model, method, layer, ",".join(tiles), resp.precision),
                       strict=True))
    around = DIRECT if light_work(images, params) else lane
    if resp.layers:  # a layer sweep: each (image, target) kept its captioned row of overlays
        return around(lambda: encode_png(stack_rows([row for _i, _e, row in kept]))), headers
    if len(kept) == 1:
        return around(lambda: encode_png(kept[0][2].cpu())), headers
    return around(grid_png, kept, resp, title), headers


def _header_text(s: str) -> str:
    """A label safe in a header list: percent-encoded except letters, digits, space and ``-_.'()``."""
    return quote(s, safe=" -_.'()")
