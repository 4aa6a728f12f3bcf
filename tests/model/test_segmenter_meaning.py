"""What a region target's map means, on the repository's own segmenter and held-out synthetic scenes.

Seg-Grad-CAM explains a class's logit summed over a region; on scenes whose objects are known, the
map of each shape's predicted region should sit on that shape: most of its positive mass inside the
region (the energy-based pointing game) and Grad-CAM's maximum inside it (the pointing game).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.explaining import run_explanation
from core.imaging import decode_image
from core.schemas.explain import params_model

SCENES = Path(__file__).resolve().parents[2] / "models" / "shapes"


@pytest.fixture(scope="module")
def segmenter():
    from cnnviz.models import Catalog

    return Catalog.open(models_file=str(SCENES / "models.toml"), device="cpu", default=None).get("shapes-segmenter")


def _held_out() -> list[tuple[object, np.ndarray]]:
    out = []
    for png in sorted((SCENES / "segmenter-scenes").glob("scene-?.png")):
        truth = np.asarray(Image.open(png.with_name(png.stem + "-labels.png")))
        out.append((decode_image(png.read_bytes()), truth))
    return out


def _regions(model, method: str, **extra) -> list[tuple[float, bool]]:
    """(energy in region, pointing hit) of every shape class of every held-out scene."""
    found = []
    for image, truth in _held_out():
        for cls in sorted(set(np.unique(truth).tolist()) - {0}):
            p = params_model(method).model_validate({
                "region": {"target": cls}, "faithfulness": {"deletion_insertion": False, "tolerance": 0},
                "output": {"overlay": False, "heatmap": False}, **extra})
            f = run_explanation(model, method, [image], p).images[0].explanations[0].faithfulness
            found.append((f.energy_in_region, f.pointing_hit))
    return found


def test_the_segmenter_segments_held_out_scenes(segmenter) -> None:
    import json

    record = json.loads((SCENES / "segmenter.json").read_text())
    assert record["held_out_mean_iou"] >= 0.7, record  # the meaning tests below need a segmenter that works


@pytest.mark.parametrize(("method", "extra", "energy"), [
    ("gradcam", {}, 0.55),  # at the default layer, the backbone's last stage (16 x 16 at 64 px)
    ("hirescam", {}, 0.65),
])
def test_a_region_map_has_most_of_its_mass_inside_the_region(segmenter, method, extra, energy) -> None:
    assert segmenter.default_layer == "backbone.stage2"
    found = _regions(segmenter, method, **extra)
    assert len(found) >= 8  # every shape class of every held-out scene
    energies = [e for e, _ in found]
    assert float(np.mean(energies)) > energy, energies
    hits = [h for _, h in found]
    assert sum(hits) >= 0.9 * len(hits), hits  # the maximum inside the region (the pointing game)
