"""Hostile params over HTTP: deep nesting, huge numbers, non-finite floats and bad boxes are 422 problems.

Each case is sent as a multipart ``params`` field and inside a JSON body, on predict, explain and
inspect (jobs and collections need Redis: tests/jobs/test_hardening.py). Standard JSON's ``1e999``
is infinity, so the text is sent as written, never through ``json.dumps``.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest
from conftest import encode

pytestmark = pytest.mark.model

URL = "/v1/models/efficientnet-lite0"
DEEP = "[" * 10_000 + "]" * 10_000
ROUTES = [f"{URL}/predict", f"{URL}/explain/gradcam", f"{URL}/explain/occlusion", f"{URL}/inspect/activations"]


@pytest.fixture(scope="module")
def small_png() -> bytes:
    return encode(np.full((32, 32, 3), 128, np.uint8), "PNG")


def problem(r, status: int, slug: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["type"].endswith("/" + slug), body
    return body


def multipart(client, path: str, image: bytes, params_text: str):
    return client.post(path, files=[("image", ("a.png", image, "image/png"))], data={"params": params_text})


def json_body(client, path: str, image: bytes, params_text: str):
    body = '{"images": ["' + base64.b64encode(image).decode() + '"], "params": ' + params_text + "}"
    return client.post(path, content=body.encode(), headers={"content-type": "application/json"})


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("text", [f'{{"x": {DEEP}}}', '{"top_k": ' + "9" * 5000 + "}",
                                  '{"top_k": 1.' + "5" * 5000 + "}"], ids=["deep", "digits", "float-digits"])
def test_deep_or_huge_params_are_422(client, small_png, path, text):
    body = problem(multipart(client, path, small_png, text), 422, "invalid-params-json")
    assert "limit" in body["title"]
    body = problem(json_body(client, path, small_png, text), 422, "invalid-json")
    assert body["max_depth"] == 32 and body["max_number_chars"] == 64


def test_a_deep_json_body_is_422(client):
    r = client.post(f"{URL}/predict", content=DEEP.encode(), headers={"content-type": "application/json"})
    problem(r, 422, "invalid-json")
    r = client.post(f"{URL}/predict", content=b"{nope", headers={"content-type": "application/json"})
    problem(r, 422, "invalid-json")


@pytest.mark.parametrize("path,text,field", [
    (f"{URL}/explain/occlusion", '{"sigma": 1e999}', "sigma"),
    (f"{URL}/explain/occlusion", '{"sigma": NaN}', "sigma"),
    (f"{URL}/explain/gradcam", '{"output": {"alpha": -Infinity}}', "output.alpha"),
    (f"{URL}/explain/gradcam", '{"faithfulness": {"box": [10, 0, 5, 20]}}', "faithfulness.box"),
    (f"{URL}/explain/gradcam", '{"faithfulness": {"box": [0, 0, 5, 1000000]}}', "faithfulness.box.3"),
    (f"{URL}/explain/gradcam", '{"faithfulness": {"box": [-1, 0, 5, 5]}}', "faithfulness.box.0"),
    (f"{URL}/inspect/invariance", '{"scales": [1e999]}', "scales.0"),
    (f"{URL}/inspect/activations", '{"channels": [1, 2, 1e999]}', "channels.2"),
])
def test_non_finite_and_bad_boxes_name_the_field(client, small_png, path, text, field):
    for send in (multipart, json_body):
        body = problem(send(client, path, small_png, text), 422, "invalid-parameters")
        assert any(".".join(e["loc"]) == field for e in body["errors"]), body["errors"]


def test_a_good_box_still_runs(client, small_png):
    r = multipart(client, f"{URL}/explain/gradcam", small_png,
                  '{"faithfulness": {"box": [0, 0, 16, 16], "deletion_insertion": false}}')
    assert r.status_code == 200, r.text
    assert r.json()["images"][0]["explanations"][0]["faithfulness"]["pointing_hit"] in (True, False)
