"""Boxes come back in the pixels of the image the client sent, even when it was decoded smaller."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from core.explaining import run_explanation
from core.imaging import decode_image
from core.schemas.explain import params_model


def test_boxes_are_in_original_pixels_when_decoding_downscales(lite0, chelsea) -> None:
    big = Image.fromarray(chelsea).resize((3000, 2000))
    buf = io.BytesIO()
    big.save(buf, format="JPEG", quality=90)
    d = decode_image(buf.getvalue(), max_side=1024)
    assert (d.width, d.height) == (3000, 2000) and max(d.image.size) <= 1024
    p = params_model("gradcam").model_validate({"localization": {"method": "otsu"}, "output": {"overlay": False,
                                                                                              "heatmap": False}})
    exp = run_explanation(lite0, "gradcam", [d], p).images[0].explanations[0]
    boxes = np.array([r.box for r in exp.regions])
    assert len(boxes) >= 1
    assert boxes[:, [0, 2]].max() <= 3000 and boxes[:, [1, 3]].max() <= 2000
    # The cat fills most of chelsea: its box spans well past the decoded 1024 px.
    assert boxes[:, 2].max() > 1500 and boxes[:, 3].max() > 1000
