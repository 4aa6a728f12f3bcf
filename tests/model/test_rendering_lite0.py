"""Pictures a person can read, with the API's defaults on the real model: per-kind rendering, light
answers, the multi-map PNG, timings that add up."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from conftest import encode
from PIL import Image

from cnnviz.attribution import METHODS
from cnnviz.render import center_color, colormap_lut
from core.errors import DomainError
from core.explaining import run_explanation
from core.imaging import decode_image
from core.schemas.explain import params_model

pytestmark = pytest.mark.model

URL = "/v1/models/efficientnet-lite0"
# The cat in chelsea (451x300): its head fills the middle of the frame; the margins are background.
CAT_BOX = (40, 20, 400, 300)
# Cheap settings where a method has a cost knob; the rendering stays the default one.
CHEAP = {"integrated_gradients": {"steps": 4, "adaptive": False}, "smoothgrad": {"samples": 2},
         "rise": {"masks": 64, "resolution": 128}, "occlusion": {"window": 56, "stride": 56},
         # Score-CAM costs a forward per channel: a 112-channel layer at 128 px (it finds the cat at full
         # resolution, see test_lite0; here the point is how its map is drawn).
         "scorecam": {"layer": "_blocks.10", "resolution": 128, "batch_size": 64},
         "ablationcam": {"resolution": 160}}
VISIBLE = 24  # a pixel counts as visible when a channel differs from the zero colour by more than this


def _zero_colour(rendering) -> np.ndarray:
    """The colour of "nothing" in the heatmap: the colormap's bottom, or its centre for signed maps."""
    if rendering.kind == "signed":
        return np.asarray(center_color(rendering.colormap), dtype=int)
    return colormap_lut(rendering.colormap)[0].numpy().astype(int)


def _decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")).astype(int)


@pytest.fixture(scope="module")
def chelsea_decoded(chelsea):
    return decode_image(encode(chelsea, "PNG"))


@pytest.fixture(scope="module")
def default_answers(lite0, chelsea_decoded):
    """Every method once, through run_explanation with default output options (heatmaps as PNG)."""
    out = {}
    for name in sorted(METHODS):
        params = params_model(name).model_validate({**CHEAP.get(name, {}), "output": {"format": "png"}})
        try:
            out[name] = run_explanation(lite0, name, [chelsea_decoded], params).images[0].explanations[0]
        except DomainError as exc:  # a method for other architectures (e.g. attention maps of a ViT)
            out[name] = exc
    return out


def _display_values(heat: np.ndarray, rendering) -> np.ndarray:
    """How strongly each heatmap pixel speaks, read back from its colour: the nearest colormap entry,
    in [0, 1] (for signed maps, the distance from the centre either way)."""
    lut = colormap_lut(rendering.colormap).float()
    idx = torch.cdist(torch.from_numpy(heat).float().reshape(-1, 3), lut).argmin(1).float() / 255
    v = (idx - 0.5).abs() * 2 if rendering.kind == "signed" else idx
    return v.reshape(heat.shape[:2])


@pytest.mark.parametrize("method", sorted(METHODS))
def test_default_heatmap_is_visible_and_peaks_on_the_cat(default_answers, method):
    e = default_answers[method]
    if isinstance(e, DomainError):
        pytest.skip(f"{method} does not apply to EfficientNet-Lite0: {e.slug}")
    assert e.map.values is None  # raw values only when asked
    heat = _decode(e.heatmap_png)
    assert heat.shape[:2] == (300, 451)
    visible = float((np.abs(heat - _zero_colour(e.rendering)).max(-1) > VISIBLE).mean())
    assert visible > 0.10, (method, e.rendering.kind, visible)
    # The brightest region: the top 5 % of the display values smoothed over 31 px (pixel maps are
    # speckled; a region is where the evidence is dense). Most of it lies on the cat.
    v = _display_values(heat, e.rendering)
    smooth = torch.nn.functional.avg_pool2d(v[None, None], 31, stride=1, padding=15, count_include_pad=False)[0, 0]
    ys, xs = np.nonzero((smooth >= torch.quantile(smooth.flatten(), 0.95)).numpy())
    inside = (xs >= CAT_BOX[0]) & (xs < CAT_BOX[2]) & (ys >= CAT_BOX[1]) & (ys < CAT_BOX[3])
    assert inside.mean() >= 0.5, (method, float(inside.mean()))


def test_kinds_follow_the_method(default_answers):
    kinds = {m: e.rendering.kind for m, e in default_answers.items() if not isinstance(e, DomainError)}
    assert kinds["gradcam"] == "positive" and kinds["scorecam"] == "positive" and kinds["rise"] == "positive"
    assert kinds["saliency"] == kinds["guided_backprop"] == kinds["smoothgrad"] == "unsigned"
    assert kinds["integrated_gradients"] == kinds["input_x_gradient"] == kinds["occlusion"] == "signed"
    assert default_answers["saliency"].rendering.clip_percentile == 99.0
    assert default_answers["integrated_gradients"].rendering.colormap == "seismic"


def test_signed_maps_put_zero_at_the_centre_colour(lite0, chelsea_decoded):
    # Output at the map's own size (224 px, stretched input) so each heatmap pixel is one raw value.
    params = params_model("input_x_gradient").model_validate(
        {"output": {"format": "png", "raw": True, "size": [224, 224], "overlay": False}})
    e = run_explanation(lite0, "input_x_gradient", [chelsea_decoded], params).images[0].explanations[0]
    raw = np.asarray(e.map.values)
    heat = _decode(e.heatmap_png)
    assert e.rendering.center == 0.0 and e.rendering.lo == -e.rendering.hi
    near_zero = np.abs(raw) < 1e-3 * e.rendering.hi
    assert near_zero.sum() > 100
    # Zero is display 0.5, between LUT entries 127 and 128: the centre colour (128) or, for values a
    # hair below zero, its neighbour; both are white to within a few levels.
    lut = colormap_lut("seismic").numpy().astype(int)
    assert tuple(lut[128]) == center_color("seismic") and (lut[128] >= 250).all()
    is_centre = (heat[near_zero][:, None, :] == lut[None, 127:129, :]).all(-1).any(-1)
    assert is_centre.all(), heat[near_zero][~is_centre][:5]
    # +v and -v equally far from the centre: the strongest positive and negative pixels are saturated.
    assert np.abs(heat[raw >= e.rendering.hi] - colormap_lut("seismic")[255].numpy()).max() <= 3
    assert np.abs(heat[raw <= e.rendering.lo] - colormap_lut("seismic")[0].numpy()).max() <= 3


def test_gradient_rgb_and_outline_and_kind_errors(lite0, chelsea_decoded):
    p = params_model("guided_backprop").model_validate(
        {"output": {"kind": "gradient_rgb", "mode": "outline", "figure": True, "format": "png"}})
    e = run_explanation(lite0, "guided_backprop", [chelsea_decoded], p).images[0].explanations[0]
    assert e.rendering.kind == "gradient_rgb" and e.rendering.colormap is None
    heat = _decode(e.heatmap_png)
    assert np.abs(heat - 128).max(-1).mean() > 10  # a picture of the gradient around grey, not flat grey
    ov = _decode(e.overlay_png)
    assert (ov == [0, 255, 64]).all(-1).sum() > 500  # the outline's green line over the photo
    fig = _decode(e.figure_png)
    assert fig.shape[0] > 300 and fig.shape[1] >= 451
    from core.errors import Invalid

    bad = params_model("gradcam").model_validate({"output": {"kind": "signed"}})
    with pytest.raises(Invalid) as exc:
        run_explanation(lite0, "gradcam", [chelsea_decoded], bad)
    assert exc.value.slug == "unsupported-kind" and exc.value.extra["choices"] == ["positive"]


def test_legacy_normalize_only_when_given(lite0, chelsea_decoded):
    p = params_model("integrated_gradients").model_validate(
        {"steps": 4, "adaptive": False, "output": {"normalize": "max"}})
    e = run_explanation(lite0, "integrated_gradients", [chelsea_decoded], p).images[0].explanations[0]
    assert e.rendering.kind is None and e.rendering.normalize == "max" and e.rendering.colormap == "jet"
    assert e.rendering.lo == 0.0


def post(client, path, images, params=None, headers=None):
    files = [("image", (f"i{i}.bin", data, "application/octet-stream")) for i, data in enumerate(images)]
    data = {"params": json.dumps(params)} if params is not None else None
    return client.post(path, files=files, data=data, headers=headers or {})


def test_default_gradcam_top2_answer_is_light(client, chelsea_jpeg):
    r = post(client, f"{URL}/explain/gradcam", [chelsea_jpeg], {"top_k": 2})
    assert r.status_code == 200, r.text
    assert len(r.content) < 200_000, len(r.content)
    exps = r.json()["images"][0]["explanations"]
    assert len(exps) == 2
    for e in exps:
        assert e["media_type"] == "image/jpeg" and e["map"]["values"] is None
        assert Image.open(io.BytesIO(base64.b64decode(e["overlay_png"]))).size == (451, 300)
        assert Image.open(io.BytesIO(base64.b64decode(e["heatmap_png"]))).format == "JPEG"


def test_formats_figure_and_no_store(client, chelsea_jpeg):
    r = post(client, f"{URL}/explain/gradcam", [chelsea_jpeg], {"output": {"format": "webp", "figure": True}})
    e = r.json()["images"][0]["explanations"][0]
    assert e["media_type"] == "image/webp"
    fig = Image.open(io.BytesIO(base64.b64decode(e["figure_png"])))
    assert fig.format == "WEBP" and fig.size[0] > 451 and fig.size[1] > 300  # title band and colour bar
    # No Redis in this app: pictures cannot be stored, said clearly.
    r = post(client, f"{URL}/explain/gradcam", [chelsea_jpeg], {"output": {"inline": False}})
    assert r.status_code == 422 and r.json()["type"].endswith("/inline-needs-store")
    for bad in ({"clip_percentile": 0}, {"clip_percentile": 101}, {"alpha": 2}, {"format": "gif"},
                {"quality": 0}, {"outline_fraction": 1}):
        r = post(client, f"{URL}/explain/gradcam", [chelsea_jpeg], {"output": bad})
        assert r.status_code == 422 and r.json()["type"].endswith("/invalid-parameters"), bad
    r = post(client, f"{URL}/explain/gradcam", [chelsea_jpeg], {"output": {"clip_percentile": float("nan")}})
    assert r.status_code in (400, 422), r.text


def test_accept_png_with_several_maps_is_a_labelled_grid(client, chelsea_jpeg, coffee):
    r = post(client, f"{URL}/explain/gradcam", [chelsea_jpeg], {"top_k": 2}, headers={"accept": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    grid = Image.open(io.BytesIO(r.content))
    assert grid.size[0] > 2 * 451 and grid.size[1] > 300  # two overlays side by side, a title and captions
    assert r.headers["x-cnnviz-model"] == "efficientnet-lite0"
    assert r.headers["x-cnnviz-method"] == "gradcam" and r.headers["x-cnnviz-layer"] == "act_head"
    tiles = r.headers["x-cnnviz-tiles"].split(",")
    assert len(tiles) == 2 and tiles[0].startswith("0:") and tiles[0].count(":") == 2
    assert int(tiles[0].split(":")[1]) in range(281, 286)
    # Two images, one map each: one row per image; a single map stays the plain overlay.
    r = post(client, f"{URL}/explain/gradcam", [chelsea_jpeg, encode(coffee)], {"targets": [[285], [967]]},
             headers={"accept": "image/png"})
    assert r.headers["x-cnnviz-tiles"] == "0:285:Egyptian cat,1:967:espresso"
    w, h = Image.open(io.BytesIO(r.content)).size
    assert w >= 451 and h > 300 + 512  # chelsea above coffee (600 px tall, drawn at 512)
    r = post(client, f"{URL}/explain/gradcam", [chelsea_jpeg], headers={"accept": "image/png"})
    assert Image.open(io.BytesIO(r.content)).size == (451, 300) and r.headers["x-cnnviz-tiles"].count(",") == 0


def test_timings_say_where_the_time_went(client, chelsea_jpeg):
    r = post(client, f"{URL}/explain/gradcam", [chelsea_jpeg],
             {"localization": {}, "faithfulness": {"steps": 4}, "output": {"figure": True}})
    t = r.json()["timings"]
    parts = ("decode_ms", "preprocess_ms", "compute_ms", "localization_ms", "faithfulness_ms", "render_ms",
             "encode_ms")
    assert all(t[k] >= 0 for k in parts) and t["total_ms"] > 0
    assert t["faithfulness_ms"] > 0 and t["localization_ms"] > 0 and t["encode_ms"] > 0
    assert sum(t[k] for k in parts) == pytest.approx(t["total_ms"], rel=0.05, abs=2.0)


def test_methods_list_their_map_kinds(client):
    kinds = {m["name"]: m.get("map_kinds") for m in client.get("/v1/methods").json()["methods"]}
    assert kinds["gradcam"] == ["positive"] and kinds["guided_backprop"][0] == "unsigned"
    assert "gradient_rgb" in kinds["guided_backprop"] and kinds["integrated_gradients"][0] == "signed"


def test_raw_values_untouched_by_rendering(lite0, chelsea_decoded):
    base = params_model("saliency").model_validate({"output": {"raw": True}})
    other = params_model("saliency").model_validate(
        {"output": {"raw": True, "kind": "signed", "clip_percentile": 50, "colormap": "viridis"}})
    a = run_explanation(lite0, "saliency", [chelsea_decoded], base).images[0].explanations[0]
    b = run_explanation(lite0, "saliency", [chelsea_decoded], other).images[0].explanations[0]
    assert torch.allclose(torch.tensor(a.map.values), torch.tensor(b.map.values))
    assert a.heatmap_png != b.heatmap_png
