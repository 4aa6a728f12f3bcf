"""A layer sweep run as an explain job by a real worker: the same answer shape, and a typo refused at submission."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest
import skimage.data
from PIL import Image

from tests.jobs.jobkit import wait_done

pytestmark = pytest.mark.jobs


def _cat() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(Image.fromarray(skimage.data.chelsea()).resize((64, 43)))).save(buf, "PNG")
    return buf.getvalue()


def test_sweep_as_a_job(api: httpx.Client) -> None:
    job = {"type": "explain", "params": {"method": "gradcam", "explain": {
        "layers": ["_blocks.4", "act_head"], "resolution": 64, "target": 285, "output": {"heatmap": False}}}}
    files = [("image", ("c.png", _cat(), "image/png"))]
    r = api.post("/v1/jobs", files=files, data={"params": json.dumps(job)})
    assert r.status_code == 202, r.text
    done = wait_done(api, r.json()["id"], timeout_s=120)
    assert done["status"] == "succeeded", done
    body = api.get(f"/v1/jobs/{done['id']}/result").json()
    assert body["layers"] == ["_blocks.4", "act_head"]
    layers = body["images"][0]["explanations"][0]["layers"]
    assert [(e["layer"], tuple(e["shape"])) for e in layers] == [("_blocks.4", (8, 8)), ("act_head", (2, 2))]
    assert all(e["overlay_png"] for e in layers)
    job["params"]["explain"]["layers"] = ["_blocks.4", "act_heed"]
    r = api.post("/v1/jobs", files=files, data={"params": json.dumps(job)})
    assert r.status_code == 422 and "act_head" in r.json()["choices"], r.text
