"""Issue 12, memory: a per-request budget in decoded pixels, images downscaled at decode time.

The budget is counted from the image headers, image by image, before any pixel is decoded; an
image is decoded at most ``max_decode_side`` on its long side (a JPEG by the decoder's DCT scaling),
while answers keep the original's size. The last test runs the API under uvicorn in its own
process and measures its peak RSS (``VmHWM``) under the worst request the limits allow.
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from core.imaging import decode_image
from core.settings import Settings
from stack.embedded import free_port
from tests.jobs.jobkit import Proc

BIG = 6300  # the grey PNG: 37-52 KB on the wire, 39.7 Mpx (under the 40 Mpx per-image limit)


def _grey_png(side: int = BIG) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (side, side), 128).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def big_png() -> bytes:
    return _grey_png()


def test_decode_downscales_but_keeps_the_original_size(big_png: bytes) -> None:
    d = decode_image(big_png, max_side=2048)
    assert d.image.size == (2048, 2048) and d.image.mode == "RGB"
    assert (d.width, d.height) == (BIG, BIG)
    # A JPEG is decoded small by the decoder itself; EXIF rotation swaps the reported sides.
    rng = np.random.default_rng(0)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (3000, 5000, 3), dtype=np.uint8)).save(buf, "JPEG", exif=exif.tobytes())
    seen: list[tuple[int, ...]] = []
    d = decode_image(buf.getvalue(), max_side=1000, check=lambda *a: seen.append(a))
    assert seen == [(5000, 3000, 1000, 600)]
    assert d.image.size == (600, 1000) and (d.width, d.height) == (3000, 5000)
    # Without max_side nothing changes.
    small = decode_image(buf.getvalue())
    assert small.image.size == (3000, 5000)


def test_request_pixel_budget_refused_before_decoding(client, big_png: bytes) -> None:
    budget = Settings().max_request_pixels
    per_image = 2048 * 2048
    n = budget // per_image + 1  # one image over the budget (explain decodes at 2048 px, the output cap)
    files = [("image", (f"{i}.png", big_png, "image/png")) for i in range(n)]
    r = client.post("/v1/models/efficientnet-lite0/explain/gradcam", files=files)
    assert r.status_code == 413, r.text
    p = r.json()
    assert p["type"].endswith("/request-too-many-pixels")
    assert p["budget"] == budget and p["total"] == n * per_image > budget
    assert p["images"][0] == {"width": BIG, "height": BIG, "decoded_width": 2048, "decoded_height": 2048}
    assert len(p["images"]) == n and str(budget) in p["detail"] and f"{BIG}x{BIG}" in p["detail"]
    # The same body as JSON with base64 images is refused the same way.
    body = {"images": [base64.b64encode(big_png).decode()] * n}
    r = client.post("/v1/models/efficientnet-lite0/explain/gradcam", json=body)
    assert r.status_code == 413 and r.json()["type"].endswith("/request-too-many-pixels")


def test_explain_of_a_large_image_comes_back_at_the_original_size(client) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (2600, 1300), (90, 140, 60)).save(buf, "PNG")
    r = client.post("/v1/models/efficientnet-lite0/explain/gradcam", files={"image": ("a.png", buf.getvalue())},
                    data={"params": json.dumps({"output": {"heatmap": False}})})
    assert r.status_code == 200, r.text
    img = r.json()["images"][0]
    assert (img["width"], img["height"]) == (2600, 1300)
    overlay = Image.open(io.BytesIO(base64.b64decode(img["explanations"][0]["overlay_png"])))
    assert overlay.size == (2048, 1024)  # the original capped at the 2048 px output side, as before


def _vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


@pytest.mark.timeout(240)
def test_peak_rss_under_the_worst_allowed_request(big_png: bytes) -> None:
    """Predict and Grad-CAM with as many 6300x6300 grey PNGs as the limits allow.

    Predict decodes at most 1024 px (its largest network input), so 16 (``max_images``) fit the
    64 Mpx budget; Grad-CAM decodes at 2048 px (the output cap), so 15 do.

    Before the budget and decode-time downscaling, 1, 4 and 8 of them raised the API's peak RSS by
    0.6, 2.4 and 4.4 GB. Now the extra peak is bounded by the budget: images are kept downscaled,
    decoding is one image at a time, and predict fits each image to the network input before the
    next one's tensor exists and runs its forward four images at a time (core.predicting.EAGER_CHUNK:
    as one batch of sixteen, the activations alone took the extra peak from about 230 to 400-430 MB).
    """
    port = free_port()
    env = {**os.environ, "CNNVIZ_PRELOAD_MODELS": "true", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "CNNVIZ_MAX_BODY_BYTES": str(8 * 1024 * 1024)}
    env.pop("REDIS_URL", None)
    api = Proc("api-rss", ["serve", "--no-jobs", "--host", "127.0.0.1", "--port", str(port)], env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert api.alive(), api.tail()
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "API did not come up"
            time.sleep(0.3)
        settings = Settings()
        n_predict = min(settings.max_images, settings.max_request_pixels // (1024 * 1024))
        n = min(settings.max_images, settings.max_request_pixels // (2048 * 2048))
        with httpx.Client(base_url=base, timeout=180) as c:
            small = _grey_png(256)
            # Warm up every code path once at a small size, so the baseline holds the model and kernels.
            assert c.post("/v1/models/efficientnet-lite0/predict", files={"image": ("s.png", small)}).status_code == 200
            assert c.post("/v1/models/efficientnet-lite0/explain/gradcam",
                          files={"image": ("s.png", small)}).status_code == 200
            base_kb = _vm_hwm_kb(api.pid)
            files = [("image", (f"{i}.png", big_png, "image/png")) for i in range(n_predict)]
            t0 = time.perf_counter()
            r = c.post("/v1/models/efficientnet-lite0/predict", files=files)
            predict_s = time.perf_counter() - t0
            assert r.status_code == 200, r.text
            assert [(i["width"], i["height"]) for i in r.json()["images"]] == [(BIG, BIG)] * n_predict
            files = files[:n]
            predict_kb = _vm_hwm_kb(api.pid)
            t0 = time.perf_counter()
            r = c.post("/v1/models/efficientnet-lite0/explain/gradcam", files=files,
                       data={"params": json.dumps({"output": {"heatmap": False}})})
            explain_s = time.perf_counter() - t0
            assert r.status_code == 200, r.text
            explain_kb = _vm_hwm_kb(api.pid)
        predict_mb, explain_mb = (predict_kb - base_kb) / 1024, (explain_kb - base_kb) / 1024
        print(  # noqa: T201 - the figures, shown with -s
            f"RSS peak: baseline {base_kb / 1024:.0f} MB; {BIG}x{BIG} grey PNGs: predict x{n_predict} "
              f"+{predict_mb:.0f} MB ({predict_s:.1f} s), gradcam x{n} +{explain_mb:.0f} MB ({explain_s:.1f} s)")
        assert predict_mb < 320, f"predict raised peak RSS by {predict_mb:.0f} MB"
        assert explain_mb < 2000, f"gradcam raised peak RSS by {explain_mb:.0f} MB"
    finally:
        api.stop()
