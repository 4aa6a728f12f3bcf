"""The real app over HTTP: predict, explain, the answer's shape, and every bad input as a 4xx."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import numpy as np
import pytest
from conftest import encode
from PIL import Image

from cnnviz.attribution import METHODS

pytestmark = pytest.mark.model

URL = "/v1/models/efficientnet-lite0"


def post(client, path, images, params=None, headers=None):
    files = [("image", (f"i{i}.bin", data, "application/octet-stream")) for i, data in enumerate(images)]
    data = {"params": json.dumps(params)} if params is not None else None
    return client.post(path, files=files, data=data, headers=headers or {})


def problem(r, status, slug):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["type"].endswith("/" + slug), body
    assert body["status"] == status
    return body


def test_health_and_catalog(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    models = client.get("/v1/models").json()
    assert models["default"] == "efficientnet-lite0"
    detail = client.get(URL).json()
    assert detail["input_size"] == 224 and detail["num_labels"] == 1000
    assert detail["default_layer"] == "act_head"
    layers = {li["name"]: li for li in detail["layers"]}
    assert layers["act_head"]["output_shape"] == [1280, 7, 7]
    assert "Egyptian cat" in detail["labels"]


def test_predict_chelsea(client, chelsea_jpeg):
    r = post(client, f"{URL}/predict", [chelsea_jpeg], {"top_k": 3})
    assert r.status_code == 200, r.text
    preds = r.json()["images"][0]["predictions"]
    assert preds[0]["label"] in {"Egyptian cat", "tabby", "tiger cat"}
    assert len(preds) == 3 and preds[0]["probability"] >= preds[1]["probability"]


def test_gradcam_answer_shape(client, chelsea_jpeg):
    r = post(client, f"{URL}/explain/gradcam", [chelsea_jpeg],
             {"top_k": 2, "localization": {}, "output": {"raw": True}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "efficientnet-lite0" and body["method"] == "gradcam"
    assert body["layer"] == "act_head"
    img = body["images"][0]
    assert (img["width"], img["height"]) == (451, 300)
    first, second = img["explanations"]
    assert first["target"]["label"] in {"Egyptian cat", "tabby", "tiger cat"}
    assert first["target"]["probability"] > second["target"]["probability"]
    raw = first["map"]
    assert raw["shape"] == [7, 7] and len(raw["values"]) == 7
    assert raw["max"] == pytest.approx(max(max(r) for r in raw["values"]), rel=1e-4)
    overlay = Image.open(io.BytesIO(base64.b64decode(first["overlay_png"])))
    assert overlay.size == (451, 300)  # the original image size
    assert first["regions"] and first["regions"][0]["box"][2] <= 451
    assert set(body["timings"]) >= {"compute_ms", "render_ms", "total_ms"}


def test_accept_png_returns_overlay(client, chelsea_jpeg):
    r = post(client, f"{URL}/explain/gradcam", [chelsea_jpeg], headers={"accept": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (451, 300)


def test_png_answer_sends_exactly_the_documented_headers(app, client, chelsea_jpeg):
    """The PNG answer's X-Cnnviz-* headers are those the explain route's OpenAPI entry lists, no more, no fewer."""
    from service.openapi_doc import render

    r = post(client, f"{URL}/explain/gradcam", [chelsea_jpeg], headers={"accept": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    sent = {h.lower() for h in r.headers if h.lower().startswith("x-cnnviz-")}
    entry = json.loads(render(app))["paths"]["/v1/models/{model}/explain/{method}"]["post"]
    documented = {h.lower() for h in entry["responses"]["200"]["headers"]}
    assert sent == documented and "x-cnnviz-precision" in sent
    assert r.headers["x-cnnviz-precision"] == "fp32" and r.headers["x-cnnviz-method"] == "gradcam"


def test_several_images_each_with_targets(client, chelsea, coffee):
    r = post(client, f"{URL}/explain/gradcam", [encode(chelsea), encode(coffee, "PNG")],
             {"targets": [[285, 281], [967]], "output": {"heatmap": False, "overlay": False}})
    assert r.status_code == 200, r.text
    imgs = r.json()["images"]
    assert [e["target"]["index"] for e in imgs[0]["explanations"]] == [285, 281]
    assert [e["target"]["index"] for e in imgs[1]["explanations"]] == [967]
    assert imgs[1]["explanations"][0]["overlay_png"] is None


def test_json_body_with_base64(client, chelsea_jpeg):
    body = {"images": [base64.b64encode(chelsea_jpeg).decode()],
            "params": {"target": 285, "output": {"size": [64, 32]}}}
    r = client.post(f"{URL}/explain/gradcam", json=body)
    assert r.status_code == 200, r.text
    e = r.json()["images"][0]["explanations"][0]
    assert Image.open(io.BytesIO(base64.b64decode(e["heatmap_png"]))).size == (64, 32)


def test_higher_resolution_gives_finer_maps(client, chelsea_jpeg):
    r = post(client, f"{URL}/explain/gradcam", [chelsea_jpeg], {"resolution": 448})
    assert r.json()["images"][0]["explanations"][0]["map"]["shape"] == [14, 14]


def test_methods_listing(client):
    body = client.get("/v1/methods").json()
    names = {m["name"]: m for m in body["methods"]}
    assert {"gradcam", "cam", "scorecam", "ablationcam", "eigencam"} <= set(names)
    assert names["gradcam"]["inline"] and not names["scorecam"]["inline"]
    assert "batch_size" in names["scorecam"]["params_schema"]["properties"]
    jobs = {n: m for n, m in names.items() if m["kind"] == "job"}
    assert {"style", "class_viz", "fast_style", "triplet_head"} <= set(jobs)
    assert not jobs["fast_style"]["inline"] and jobs["fast_style"]["cost_hint"] > 10_000  # 2000 steps x batch 4
    assert "margin" in jobs["triplet_head"]["params_schema"]["properties"]
    # the same types as POST /v1/jobs takes, every family (explain hand-offs and collection views too)
    from core.jobtypes import JOB_TYPES

    assert set(jobs) == set(JOB_TYPES)
    assert jobs["explain"]["family"] == "explain" and jobs["collection"]["queue"] == "short"
    # The map kinds offered are each method class's own declaration (default first), for every method.
    for name, method in METHODS.items():
        assert names[name]["map_kinds"] == list(type(method).map_kinds), name


# ---- bad input ---------------------------------------------------------------------------------


def _png_header_bomb(w: int, h: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _tiff() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buf, "TIFF")
    return buf.getvalue()


@pytest.mark.parametrize("data,status,slug", [
    (b"", 400, "invalid-image"),
    (b"not an image at all", 400, "invalid-image"),
    (b"\xff\xd8\xff\xe0" + b"\0" * 64, 400, "invalid-image"),
    (_tiff(), 415, "unsupported-image-format"),
    (_png_header_bomb(30000, 30000), 413, "image-too-large"),
    (encode(np.zeros((4, 4, 3), np.uint8), "PNG"), 400, "image-too-small"),
])
def test_bad_images(client, data, status, slug):
    problem(post(client, f"{URL}/explain/gradcam", [data]), status, slug)


def test_bad_image_among_several_is_named(client, chelsea_jpeg):
    from core.imaging import ALLOWED_FORMATS

    files = [("image", ("cat.jpg", chelsea_jpeg, "image/jpeg")), ("image", ("notes.txt", b"notes\n", "text/plain"))]
    body = problem(client.post(f"{URL}/predict", files=files), 400, "invalid-image")  # the type stays
    assert body["index"] == 1 and body["filename"] == "notes.txt"
    assert body["allowed_formats"] == list(ALLOWED_FORMATS)
    assert body["detail"].startswith("Image 1 (notes.txt): ") and all(f in body["detail"] for f in ALLOWED_FORMATS)
    # base64 images have no file name: the index alone
    images = [base64.b64encode(b).decode() for b in (chelsea_jpeg, chelsea_jpeg, b"notes")]
    body = problem(client.post(f"{URL}/predict", json={"images": images}), 400, "invalid-image")
    assert body["index"] == 2 and "filename" not in body and body["detail"].startswith("Image 2: ")
    # other refusals of one image say which one as well
    files = [("image", ("a.tif", _tiff(), "image/tiff")), ("image", ("cat.jpg", chelsea_jpeg, "image/jpeg"))]
    body = problem(client.post(f"{URL}/predict", files=files), 415, "unsupported-image-format")
    assert body["index"] == 0 and body["filename"] == "a.tif" and body["allowed_formats"] == list(ALLOWED_FORMATS)


@pytest.mark.parametrize("params,slug", [
    ({"top_k": 0}, "invalid-parameters"),
    ({"top_k": 1000}, "invalid-parameters"),
    ({"resolution": 100000}, "invalid-parameters"),
    ({"colour": "red"}, "invalid-parameters"),
    ({"output": {"alpha": 2}}, "invalid-parameters"),
    ({"target": 1, "targets": [[1]]}, "invalid-parameters"),
    ({"target": 999999}, "invalid-parameters"),
    ({"target": 1000}, "unknown-class"),
    ({"layer": "no.such.layer"}, "unknown-layer"),
    ({"layer": "_fc"}, "layer-not-spatial"),
    ({"targets": [[1], [2]]}, "bad-targets"),
])
def test_bad_params(client, chelsea_jpeg, params, slug):
    body = problem(post(client, f"{URL}/explain/gradcam", [chelsea_jpeg], params), 422, slug)
    if slug == "unknown-layer":
        assert "act_head" in body["choices"]


def test_bad_params_json(client, chelsea_jpeg):
    r = client.post(f"{URL}/explain/gradcam", files=[("image", ("a", chelsea_jpeg))], data={"params": "{nope"})
    problem(r, 422, "invalid-params-json")


def test_unknown_model_and_method(client, chelsea_jpeg):
    body = problem(post(client, "/v1/models/nope/explain/gradcam", [chelsea_jpeg]), 404, "unknown-model")
    assert "efficientnet-lite0" in body["choices"]
    body = problem(post(client, f"{URL}/explain/magic", [chelsea_jpeg]), 404, "unknown-method")
    assert "gradcam" in body["choices"]


def test_missing_image_and_wrong_media_type(client):
    problem(client.post(f"{URL}/explain/gradcam", files=[("params", (None, "{}"))]), 422, "missing-image")
    problem(client.post(f"{URL}/explain/gradcam", content=b"x", headers={"content-type": "text/plain"}),
            415, "unsupported-media-type")


def test_too_many_images(client, chelsea_jpeg):
    problem(post(client, f"{URL}/predict", [chelsea_jpeg] * 17), 413, "too-many-images")


def test_body_limit_is_enforced_before_parsing(client):
    big = b"0" * (5 * 1024 * 1024)
    problem(post(client, f"{URL}/predict", [big]), 413, "request-too-large")

    def chunks():
        for _ in range(6):
            yield b"0" * (1024 * 1024)

    r = client.post(f"{URL}/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    problem(r, 413, "request-too-large")


def test_cam_undefined_on_a_non_gap_layer(client, chelsea_jpeg):
    problem(post(client, f"{URL}/explain/cam", [chelsea_jpeg], {"layer": "_blocks.15"}), 422, "cam-undefined")


def test_over_inline_budget(client, chelsea_jpeg):
    r = post(client, f"{URL}/explain/scorecam", [chelsea_jpeg])
    assert r.status_code in (202, 422)
    if r.status_code == 422:
        assert r.json()["estimate"] > r.json()["budget"]


def test_openapi_is_in_sync(app):
    from pathlib import Path

    from service.openapi_doc import render

    committed = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"
    assert committed.read_text() == render(app), "openapi/openapi.json drifted: run `make openapi`"


CHEAP = {"integrated_gradients": {"steps": 4, "adaptive": False}, "smoothgrad": {"samples": 2}, "rise": {"masks": 16},
         "occlusion": {"window": 112, "stride": 112}, "scorecam": {"layer": "_blocks.15", "resolution": 64}}


def test_every_method_answers_over_http(client, chelsea_jpeg):
    from cnnviz.attribution import METHODS

    for method in sorted(METHODS):
        params = {**CHEAP.get(method, {}), "output": {"raw": False, "heatmap": False}}
        r = post(client, f"{URL}/explain/{method}", [chelsea_jpeg], params)
        if method == "attention_rollout":  # transformers only (tests/http/test_own_models.py)
            problem(r, 422, "attention-unavailable")
            continue
        if method == "drise":  # detectors only (tests/http/test_detection_api.py): refused before it is priced
            problem(r, 422, "task-unsupported")
            continue
        assert r.status_code == 200, (method, r.text)
        e = r.json()["images"][0]["explanations"][0]
        assert e["map"]["max"] >= e["map"]["min"] and e["overlay_png"], method


def test_unit_target_over_http(client, chelsea_jpeg):
    r = post(client, f"{URL}/explain/guided_backprop", [chelsea_jpeg], {"unit": {"layer": "_blocks.10", "channel": 3}})
    assert r.status_code == 200, r.text
    t = r.json()["images"][0]["explanations"][0]["target"]
    assert t["kind"] == "channel" and t["label"] == "_blocks.10[3]"
    body = problem(post(client, f"{URL}/explain/saliency", [chelsea_jpeg],
                        {"unit": {"layer": "_blocks.10", "channel": 3000}}), 422, "unknown-channel")
    assert "111" in body["detail"]
    problem(post(client, f"{URL}/explain/gradcam", [chelsea_jpeg], {"unit": {"layer": "_blocks.10", "channel": 1}}),
            422, "unsupported-target")


@pytest.mark.parametrize("method,params", [
    ("integrated_gradients", {"steps": 1}), ("integrated_gradients", {"baseline": "white"}),
    ("smoothgrad", {"samples": 100000}), ("occlusion", {"window": 0}), ("rise", {"p": 1.5}),
    ("saliency", {"reduce": "median"}), ("scorecam", {"batch_size": 0}),
])
def test_method_parameter_bounds(client, chelsea_jpeg, method, params):
    problem(post(client, f"{URL}/explain/{method}", [chelsea_jpeg], params), 422, "invalid-parameters")


def test_stride_over_window_is_rejected(client, chelsea_jpeg):
    problem(post(client, f"{URL}/explain/occlusion", [chelsea_jpeg], {"window": 8, "stride": 16}), 422, "bad-parameter")


@pytest.mark.parametrize("engine", ["auto", "full"])
def test_occlusion_answer_says_which_engine_ran(client, chelsea_jpeg, engine):
    r = post(client, f"{URL}/explain/occlusion", [chelsea_jpeg],
             {"window": 112, "stride": 112, "resolution": 224, "engine": engine})
    assert r.status_code == 200, r.text
    d = r.json()["details"]
    assert d["engine"] == ("incremental" if engine == "auto" else "full")
    assert (d["window"], d["stride"], d["windows"]) == (112, 112, 4)


def test_output_size_is_bounded(client, chelsea_jpeg):
    problem(post(client, f"{URL}/explain/gradcam", [chelsea_jpeg], {"output": {"size": [8192, 8192]}}), 422,
            "invalid-parameters")


def test_huge_originals_get_capped_overlays(client):
    big = encode(np.full((2100, 3000, 3), 90, np.uint8), "PNG")
    r = post(client, f"{URL}/explain/gradcam", [big], {"output": {"heatmap": False}})
    assert r.status_code == 200, r.text
    ov = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]["explanations"][0]["overlay_png"])))
    assert ov.size == (2048, 1434)


@pytest.mark.parametrize("raw", [{"layer": "blocks.10"}, {"unit": {"layer": "blocks.10", "channel": 0}}])
def test_explain_checks_layers_before_any_hand_off(lite0, raw: dict) -> None:
    """A layer typo is a 422 with the closest names at submission, also for a request that would become a job."""
    from core.errors import Invalid
    from core.explaining import check_explain

    with pytest.raises(Invalid) as exc:
        check_explain(lite0, "saliency" if "unit" in raw else "gradcam", raw, 1)
    assert exc.value.slug == "unknown-layer" and "_blocks.10" in exc.value.extra["choices"]
