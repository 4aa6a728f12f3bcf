"""Render the example pictures shown in the README with the project's own code.

    .venv/bin/python bench/make_examples.py      # writes docs/examples/*.png
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import skimage.data
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cnnviz.attribution import ClassTargets, get_method  # noqa: E402
from cnnviz.models import Catalog  # noqa: E402
from cnnviz.render import apply_colormap, encode_png, make_grid, normalize_map, overlay, resize_map  # noqa: E402
from cnnviz.synthesis import DeepDreamConfig, deep_dream  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "examples"
log = logging.getLogger("examples")


def tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).float() / 255


def methods_grid(model, img: np.ndarray) -> torch.Tensor:
    x = model.preprocessing.batch([tensor(img)], device=model.device)
    base = torch.from_numpy(np.array(img, copy=True))
    tiles = []
    for name, params in [("gradcam", {}), ("gradcampp", {}), ("layercam", {}), ("ablationcam", {}),
                         ("guided_backprop", {}), ("integrated_gradients", {"steps": 32}),
                         ("smoothgrad", {"samples": 16}), ("occlusion", {"window": 32, "stride": 16})]:
        m = get_method(name).attribute(model, x, ClassTargets(top_k=1), **params).maps[0][0]
        heat = apply_colormap(resize_map(normalize_map(m, "max"), img.shape[:2]), "jet")
        tiles.append(overlay(base, heat, 0.5))
    return make_grid(tiles, ncols=4, pad=4)


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    OUT.mkdir(parents=True, exist_ok=True)
    model = Catalog.from_environment(device="cpu").get("efficientnet-lite0")
    chelsea = skimage.data.chelsea()[::3, ::3]
    (OUT / "methods_chelsea.png").write_bytes(encode_png(methods_grid(model, chelsea)))
    cfg = DeepDreamConfig(layer="_blocks.10", octaves=4, octave_scale=1.4, steps=12, step_size=0.02, jitter=8,
                          size=256, seed=0)
    dream = deep_dream(model, tensor(skimage.data.chelsea()), cfg)
    (OUT / "deepdream_chelsea.png").write_bytes(encode_png((dream.image.permute(1, 2, 0) * 255).round().byte()))
    log.info("wrote %s", sorted(p.name for p in OUT.iterdir()))


if __name__ == "__main__":
    main()
