"""One fit per image (issue 30, part 8): HTTP predict and explain see what the model's own transform gives.

With ``resize: center-crop`` the predict route used to fit each image to the network input and
``predict_images`` fit the result again, so the model saw a 0.875 crop of the crop, zoomed. Here
the answers on real photos must equal the real Lite0 run in-process on ``Preprocessing.fit`` then
``normalize`` of the decoded photo, for both fits and at a resolution other than the input size;
and a models-file entry's ``resize`` must be predict's default fit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from conftest import encode, to_tensor

pytestmark = pytest.mark.model

URL = "/v1/models/efficientnet-lite0"
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")  # landscape, landscape, square, portrait
CASES = [(mode, res) for mode in ("stretch", "center-crop") for res in (None, 256)]
ATOL = 2e-3  # float32 rounding of a batch of four against a batch of one, logits of order 10


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [getattr(skimage.data, name)() for name in PHOTOS]


@pytest.fixture(scope="module")
def pngs(photos) -> list[bytes]:
    return [encode(p, "PNG") for p in photos]  # lossless: the server decodes exactly these pixels


def _post(client, path, images, params):
    files = [("image", (f"i{i}.png", data, "image/png")) for i, data in enumerate(images)]
    r = client.post(path, files=files, data={"params": json.dumps(params)})
    assert r.status_code == 200, r.text
    return r.json()


def _logits(model, photo: np.ndarray, size: int | None, mode: str) -> torch.Tensor:
    """The model on its own transform: fit the decoded photo once, normalize, forward."""
    prep = model.preprocessing
    x = prep.normalize(prep.fit(to_tensor(photo), size or prep.input_size, mode)[None])
    with torch.no_grad():
        return model.module(x)[0]


@pytest.mark.parametrize(("mode", "res"), CASES)
def test_predict_and_explain_equal_the_model_on_its_transform(client, lite0, photos, pngs, mode, res):
    want = [_logits(lite0, p, res, mode) for p in photos]
    params = {"top_k": 3, "resize": mode, **({"resolution": res} if res else {})}
    body = _post(client, f"{URL}/predict", pngs, params)
    assert body["input_size"] == [res or 224] * 2
    for img, ref in zip(body["images"], want, strict=True):
        preds = img["predictions"]
        assert [p["index"] for p in preds] == ref.topk(3).indices.tolist()
        for p in preds:
            assert p["logit"] == pytest.approx(float(ref[p["index"]]), abs=ATOL)
    ex_params = {**params, "top_k": 1, "output": {"overlay": False, "heatmap": False}}
    for photo, png, ref in zip(photos, pngs, want, strict=True):
        target = _post(client, f"{URL}/explain/gradcam", [png], ex_params)["images"][0]["explanations"][0]["target"]
        assert target["index"] == int(ref.argmax()), photo.shape
        assert target["score"] == pytest.approx(float(ref.max()), abs=ATOL)


def test_center_crop_differs_from_stretch(lite0, photos):
    """The cases above tell the fits apart: on a non-square photo the two fits give other logits."""
    a, b = _logits(lite0, photos[0], None, "stretch"), _logits(lite0, photos[0], None, "center-crop")
    assert float((a - b).abs().max()) > 0.5


@pytest.fixture(scope="module")
def crop_client(tmp_path_factory, lite0):
    """An app whose models file declares Lite0's weights again, with ``resize = "center-crop"``."""
    from fastapi.testclient import TestClient

    from cnnviz.models import Catalog
    from core.settings import Settings
    from service.app import create_app

    spec = lite0.spec
    toml = Path(tmp_path_factory.mktemp("models")) / "models.toml"
    toml.write_text(f"""[models.lite0-crop]
arch = "{spec.arch}"
weights = "{spec.weights}"
mean = {list(spec.mean)}
std = {list(spec.std)}
resize = "center-crop"
""")
    catalog = Catalog.open(str(toml), "cpu", None)
    with TestClient(create_app(Settings(preload_models=False), catalog=catalog)) as c:
        yield c


def test_models_file_entry_chooses_predicts_default_fit(crop_client, lite0, photos, pngs):
    body = _post(crop_client, "/v1/models/lite0-crop/predict", pngs[:1], {"top_k": 1})
    pred = body["images"][0]["predictions"][0]
    crop = _logits(lite0, photos[0], None, "center-crop")
    assert pred["index"] == int(crop.argmax()) and pred["logit"] == pytest.approx(float(crop.max()), abs=ATOL)
    # A request's own resize still wins over the entry's.
    stretch = _logits(lite0, photos[0], None, "stretch")
    body = _post(crop_client, "/v1/models/lite0-crop/predict", pngs[:1], {"top_k": 1, "resize": "stretch"})
    assert body["images"][0]["predictions"][0]["logit"] == pytest.approx(float(stretch.max()), abs=ATOL)
