"""Signals and volumes over HTTP (issue 26, items 1, 4, 6): the demonstration models of examples/nd/models.toml,
files in every accepted form, maps on the caller's own grid, NIfTI in the input's affine, bad input as 4xx."""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from cnnviz.models import nd_demo
from tests.nd import nd_files

MODELS = Path(__file__).resolve().parents[2] / "examples" / "nd" / "models.toml"


@pytest.fixture(scope="module")
def client():
    from fastapi.testclient import TestClient

    from core.settings import Settings
    from service.app import create_app

    app = create_app(Settings(models_file=str(MODELS), default_model="ecg-demo", preload_models=False,
                              redis_url=None, api_keys=[], max_signal_samples=200_000, max_volume_voxels=300_000))
    with TestClient(app) as c:
        yield c


def post(client, path, name, data, params=None, **kw):
    form = {"params": json.dumps(params)} if params is not None else None
    return client.post(path, files=[("file", (name, data))], data=form, **kw)


def problem(r, status, slug):
    assert r.status_code == status, r.text
    assert r.json()["type"].endswith("/" + slug), r.json()
    return r.json()


def test_catalog_says_each_models_input(client):
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert models["ecg-demo"]["input"] == "signal" and models["ecg-demo"]["input_shape"] == [1, 256]
    assert models["ct-demo"]["input"] == "volume" and models["ct-demo"]["input_shape"] == [1, 32, 32, 32]
    detail = client.get("/v1/models/ct-demo").json()
    assert detail["layers"][0]["grid"] == "cdhw" and "gradcam" in detail["methods"]


def test_signal_explain_maps_on_the_callers_samples(client):
    s = nd_demo.signals(8, seed=11)
    i = next(k for k in range(8) if int(s.y[k]) == 0)
    # The trace at twice the model's rate (512 samples as CSV with a header): the map comes back on all 512.
    trace = np.interp(np.arange(512) / 2, np.arange(256), s.x[i, 0].numpy())
    r = post(client, "/v1/models/ecg-demo/explain/gradcam", "lead.csv", nd_files.csv(trace[None], ["lead II"]),
             {"target": 0, "faithfulness": {"steps": 8}})
    assert r.status_code == 200, r.text
    body = r.json()
    inp = body["inputs"][0]
    e = inp["explanations"][0]
    assert inp["format"] == "csv" and inp["channel_names"] == ["lead II"] and inp["shape"] == [1, 512]
    assert e["map"]["shape"] == [512] and len(e["map"]["values"]) == 512 and e["map"]["native_shape"] == [64]
    assert abs(e["map"]["peak"][0] / 2 - float(s.centres[i, 0])) <= nd_demo.SUPPORT * nd_demo.SIGNAL_SIGMA
    assert e["map"]["values"].index(max(e["map"]["values"])) == e["map"]["peak"][0]
    assert base64.b64decode(e["signal_png"]).startswith(b"\x89PNG")
    f = e["faithfulness"]
    assert len(f["deletion_curve"]) == 9 and f["deletion_auc"] < f["insertion_auc"]
    png = post(client, "/v1/models/ecg-demo/explain/gradcam", "lead.npy", nd_files.npy(trace.astype(np.float32)),
               {"target": 0}, headers={"accept": "image/png"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    pred = post(client, "/v1/models/ecg-demo/predict", "lead.json", json.dumps(s.x[i, 0].tolist()).encode())
    assert pred.status_code == 200 and pred.json()["inputs"][0]["predictions"][0]["label"] == "bump"
    # The Python client reads these answers as its signal and volume types (cnnviz_client.types).
    from cnnviz_client import NdExplainResult, NdPredictResult

    res = NdExplainResult.from_json(body)
    assert res.input_kind == "signal" and res.explanations[0].shape == [512]
    assert res.explanations[0].pictures["signal_png"] == base64.b64decode(e["signal_png"])
    assert NdPredictResult.from_json(pred.json()).top[0].label == "bump"


def test_volume_nifti_answer_in_the_inputs_affine(client):
    v = nd_demo.volumes(6, seed=12)
    i = next(k for k in range(6) if int(v.y[k]) == 0)
    affine = np.array([[-1.5, 0, 0, 40], [0, 1.5, 0, -30], [0, 0, 2.0, 12], [0, 0, 0, 1]])
    nii = nd_files.nifti(v.x[i, 0].numpy()[:, :, :24], affine, gz=True)  # W cut to 24: resampled to 32 and back
    r = post(client, "/v1/models/ct-demo/explain/gradcam", "scan.nii.gz", nii, {"target": 0})
    assert r.status_code == 200, r.text
    e = r.json()["inputs"][0]["explanations"][0]
    assert e["map"]["shape"] == [32, 32, 24] and r.json()["inputs"][0]["spacing"] == [2.0, 1.5, 1.5]
    assert base64.b64decode(e["slices_png"]).startswith(b"\x89PNG")
    assert base64.b64decode(e["montage_png"]).startswith(b"\x89PNG")
    peak = e["map"]["peak"]
    np.testing.assert_allclose(e["map"]["peak_mm"], (affine @ [peak[2], peak[1], peak[0], 1])[:3], atol=1e-3)
    r = post(client, "/v1/models/ct-demo/explain/gradcam", "scan.nii.gz", nii, {"target": 0},
             headers={"accept": "application/x-nifti"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-nifti"
    import nibabel as nib

    img = nib.Nifti1Image.from_bytes(gzip.decompress(r.content))
    np.testing.assert_allclose(img.affine, affine)
    assert img.shape == (24, 32, 32)  # NIfTI order i, j, k = W, H, D: lays over the scan voxel for voxel
    assert tuple(int(a) for a in np.unravel_index(np.argmax(img.get_fdata()), img.shape)) == tuple(peak[::-1])


def test_bad_input_is_a_clear_4xx(client):
    sig = nd_files.npy(np.zeros((1, 256), np.float32))
    two = nd_files.npy(np.zeros((2, 256), np.float32))
    problem(post(client, "/v1/models/ecg-demo/explain/gradcam", "two.npy", two), 422, "wrong-channel-count")
    problem(post(client, "/v1/models/ecg-demo/explain/gradcam", "x.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64), 415,
            "input-kind-mismatch")
    # A volume sent to the signal model (a .npy of [D,H,W] reads as too many channels or a wrong shape).
    problem(post(client, "/v1/models/ecg-demo/explain/gradcam", "v.nii", nd_files.nifti(np.zeros((4, 4, 4)),
                                                                                         np.eye(4))), 415,
            "unsupported-signal-format")
    # A signal sent to an image model.
    problem(client.post("/v1/models/efficientnet-lite0/explain/gradcam", files=[("image", ("s.npy", sig))]), 415,
            "input-kind-mismatch")
    # Over the voxel budget (300 000 here): refused from the header, naming the budget.
    big = nd_files.npy(np.zeros((70, 70, 70), np.float32))
    p = problem(post(client, "/v1/models/ct-demo/explain/gradcam", "big.npy", big), 413, "request-too-many-voxels")
    assert p["budget"] == 300_000 and p["setting"] == "CNNVIZ_MAX_VOLUME_VOXELS"
    p = problem(post(client, "/v1/models/ecg-demo/explain/gradcam", "s.npy", sig, {"resolution": 64}), 422,
                "not-for-this-input")
    assert p["parameters"] == ["resolution"]
    problem(post(client, "/v1/models/ecg-demo/explain/gradcam", "s.npy", sig, {"layer": "9x"}), 422, "unknown-layer")
    p = problem(post(client, "/v1/models/ecg-demo/explain/rise", "s.npy", sig, {"masks": 8000}), 413,
                "over-inline-budget")
    assert p["cost"] > p["budget"]
    problem(post(client, "/v1/models/ecg-demo/explain/gradcam", "s.npy", sig,
                 headers={"accept": "application/x-nifti"}), 406, "not-acceptable")
