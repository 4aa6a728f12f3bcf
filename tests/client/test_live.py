"""The client's inline calls against the live app: catalog, predict, explain (inline and the 202
hand-off), inspect, problems; every kind of image input."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from cnnviz_client import Client, ExplainResult, ProblemError
from PIL import Image

from .conftest import INLINE_BUDGET

pytestmark = pytest.mark.jobs
PNG = b"\x89PNG\r\n\x1a\n"


def test_models_model_methods(viz: Client) -> None:
    models = viz.models()
    default = next(m for m in models if m.default)
    assert default.name == "efficientnet-lite0" and default.input_size == 224 and default.num_labels == 1000
    detail = viz.model()  # the default one, resolved from the catalog
    assert detail.name == default.name and len(detail.labels) == 1000 and detail.labels[285] == "Egyptian cat"
    assert detail.default_layer and detail.layer(detail.default_layer).spatial
    assert detail.label_index("Egyptian cat") == 285
    methods = viz.methods()
    assert methods.inline_budget == INLINE_BUDGET
    assert {"gradcam", "occlusion", "class_viz", "fast_style"} <= set(methods.names)
    assert methods["gradcam"].kind == "explain" and methods["gradcam"].uses_layer
    assert methods["class_viz"].kind == "job" and "properties" in methods["class_viz"].params_schema


def test_predict_every_image_kind(viz: Client, cat_png: bytes, cat_file: Path) -> None:
    pil = Image.open(io.BytesIO(cat_png))
    arr = np.asarray(pil.convert("RGB"))
    with cat_file.open("rb") as fh:
        res = viz.predict([cat_file, str(cat_file), cat_png, fh, pil, arr, arr / 255.0], top_k=3)
    assert res.model == "efficientnet-lite0" and len(res.images) == 7
    tops = [im.predictions[0].index for im in res.images]
    assert len(set(tops)) == 1, tops  # the same picture, however it was sent
    assert all(len(im.predictions) == 3 and (im.width, im.height) == (64, 48) for im in res.images)
    probs = [p.probability for p in res.top]
    assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1
    # A 4-D array is a batch of images.
    assert len(viz.predict(np.stack([arr, arr[:, ::-1]]), top_k=1).images) == 2


def test_explain_inline(viz: Client, cat_png: bytes, tmp_path: Path) -> None:
    res = viz.explain(cat_png, "gradcam", top_k=2, resolution=64, localization={"method": "otsu"},
                      output={"raw": True, "format": "png"})
    assert isinstance(res, ExplainResult) and res.job_id is None  # answered inline: under the budget
    assert res.method == "gradcam" and res.layer and res.input_size == (64, 64)
    exps = res.images[0].explanations
    assert len(exps) == 2 and exps[0].target.probability >= exps[1].target.probability
    m = exps[0].map
    assert m.values is not None and len(m.values) == m.shape[0] and len(m.values[0]) == m.shape[1]
    assert m.min <= min(min(r) for r in m.values) + 1e-6 and exps[0].regions
    assert exps[0].overlay.startswith(PNG) and exps[0].heatmap.startswith(PNG)
    out = res.save(tmp_path / "overlay.png")
    with Image.open(out) as im:
        assert im.size == (64, 48)  # the overlay is at the size of the image sent
    exps[1].save(tmp_path / "heat.png", which="heatmap")
    assert (tmp_path / "heat.png").read_bytes() == exps[1].heatmap
    assert res.explanations[0].to_pil().size == (64, 48)
    assert m.to_numpy().shape == tuple(m.shape)


def test_explain_hand_off_followed(viz: Client, cat_png: bytes, cup_png: bytes) -> None:
    # Over the inline budget (1.5 passes at 224 px > 1.2): the service answers 202 and the client follows the job.
    res = viz.explain(cat_png, "gradcam", target=285)
    assert res.job_id is not None and res.method == "gradcam" and res.input_size == (224, 224)
    ex = res.explanations[0]
    assert ex.target.index == 285 and ex.target.label == "Egyptian cat" and ex.overlay.startswith(PNG)
    job = viz.job(res.job_id).status()
    assert job.type == "explain" and job.status == "succeeded"
    # Cheap, but asked to run asynchronously (Prefer: respond-async): a job all the same.
    res2 = viz.explain([cat_png, cup_png], "gradcam", resolution=64, respond_async=True)
    assert res2.job_id not in (None, res.job_id) and len(res2.images) == 2
    assert viz.job(res2.job_id).artifact("overlay-1-0.png").content == res2.images[1].explanations[0].overlay


def test_inspect_view(viz: Client, cat_png: bytes, tmp_path: Path) -> None:
    res = viz.inspect("filters", max_filters=8)
    assert res.data["shape"][0] >= 8 and res.image.startswith(PNG)
    res = viz.inspect("verify", [cat_png, cat_png], layer="_blocks.5", resolution=64)
    assert res.data["same"] is True and res.data["distance"] < 1e-3
    assert Path(viz.inspect("filters").save(tmp_path / "f.png")).read_bytes().startswith(PNG)


def test_problems(viz: Client, cat_png: bytes, stack) -> None:
    with pytest.raises(ProblemError) as info:
        viz.explain(cat_png, "gradcan")
    p = info.value
    assert p.status == 404 and p.type.endswith("/unknown-method") and p.slug == "unknown-method"
    assert p.title and "gradcam" in p.choices and p["choices"] == p.extra["choices"]  # the extra members
    assert str(p).startswith(p.title) and p.instance == "/v1/models/efficientnet-lite0/explain/gradcan"

    with pytest.raises(ProblemError) as info:
        viz.explain(cat_png, "gradcam", resolution=64, top_k=99)
    assert info.value.status == 422 and info.value.slug == "invalid-parameters"
    assert info.value.errors and info.value.errors[0]["loc"] == ["top_k"] and "top_k" in info.value.detail

    with pytest.raises(ProblemError) as info:
        viz.predict(cat_png, model="no-such-model")
    assert info.value.status == 404 and info.value.slug == "unknown-model"
    with pytest.raises(ProblemError) as info:
        viz.job("0123456789abcdef").status()
    assert info.value.status == 404 and info.value.slug == "job-not-found"
    with pytest.raises(ProblemError) as info:
        viz.predict(b"not an image at all")
    assert info.value.status in (400, 415, 422) and info.value.detail is not None

    # A wrong key: 401, a problem too.
    with Client(stack.base, api_key="wrong", retry=0) as bad, pytest.raises(ProblemError) as info:
        bad.models()
    assert info.value.status == 401 and info.value.slug == "unauthorized"


def test_client_logs_retries_and_never_prints(viz: Client, capsys: pytest.CaptureFixture[str]) -> None:
    viz.models()
    assert capsys.readouterr() == ("", "")


def test_default_model_is_asked_once(stack, cat_png: bytes) -> None:
    seen: list[str] = []

    def hook(request: httpx.Request) -> None:
        seen.append(request.url.path)

    from tests.jobs.jobkit import KEY_A

    with Client(stack.base, api_key=KEY_A) as c:
        c._http.event_hooks["request"].append(hook)
        c.predict(cat_png, top_k=1)
        c.predict(cat_png, top_k=1)
    assert seen == ["/v1/models", "/v1/models/efficientnet-lite0/predict", "/v1/models/efficientnet-lite0/predict"]
