"""Collections and collection-view jobs end to end with a real Redis and worker."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest
import skimage.data
from PIL import Image

from tests.jobs.jobkit import KEY_B, wait_done

pytestmark = pytest.mark.jobs


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).resize((64, 64)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    cat, cup, rocket = skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket()
    return [_png(cat), _png(cat[:, ::-1].copy()), _png(cup), _png(cup[10:, 10:].copy()), _png(rocket),
            _png(rocket[:, ::-1].copy())]


def _collection(api: httpx.Client, photos: list[bytes], labels: list[str] | None = None) -> str:
    files = [("image", (f"p{i}.png", b, "image/png")) for i, b in enumerate(photos)]
    r = api.post("/v1/collections", files=files, data={"params": json.dumps({"labels": labels})})
    assert r.status_code == 201, r.text
    assert r.json()["count"] == len(photos)
    return r.json()["id"]


def _view(api: httpx.Client, params: dict, query: bytes | None = None) -> dict:
    body = {"params": json.dumps({"type": "collection", "params": params})}
    files = [("image", ("q.png", query, "image/png"))] if query else None
    r = api.post("/v1/jobs", files=files, data=body) if files else \
        api.post("/v1/jobs", json={"params": {"type": "collection", "params": params}})
    assert r.status_code == 202, r.text
    done = wait_done(api, r.json()["id"], timeout_s=120)
    assert done["status"] == "succeeded", done
    return api.get(f"/v1/jobs/{done['id']}/artifacts/result.json").json()


def test_collection_views(api: httpx.Client, photos: list[bytes]) -> None:
    labels = ["cat", "cat", "cup", "cup", "rocket", "rocket"]
    cid = _collection(api, photos, labels)
    info = api.get(f"/v1/collections/{cid}").json()
    assert info["labels"] == labels
    res = _view(api, {"collection": cid, "view": "neighbours", "k": 3, "size": 96}, query=photos[0])
    assert set(res["feature_indices"][:2]) == {0, 1}  # the photo itself and its mirror image first
    res = _view(api, {"collection": cid, "view": "top_patches", "top_channels": 2, "k": 3, "size": 96,
                      "layer": "_blocks.3"})
    assert len(res["channels"]) == 2 and len(res["channels"][0]["patches"]) == 3
    res = _view(api, {"collection": cid, "view": "embedding_map", "method": "pca", "size": 96})
    assert len(res["coords"]) == 6
    res = _view(api, {"collection": cid, "view": "calibrate", "size": 96})
    assert res["accuracy"] >= 0.9 and res["same_pairs"] == 3
    assert api.delete(f"/v1/collections/{cid}").status_code == 204
    assert api.get(f"/v1/collections/{cid}").status_code == 404


def test_collection_errors_and_ownership(api: httpx.Client, photos: list[bytes]) -> None:
    cid = _collection(api, photos[:2])
    assert api.get(f"/v1/collections/{cid}", headers={"X-API-Key": KEY_B}).status_code in (401, 404)
    r = api.post("/v1/jobs", json={"params": {"type": "collection", "params": {"collection": cid,
                                                                               "view": "calibrate"}}})
    assert r.status_code == 422 and r.json()["type"].endswith("missing-labels")
    r = api.post("/v1/jobs", json={"params": {"type": "collection", "params": {"collection": cid,
                                                                               "view": "neighbours"}}})
    assert r.status_code == 422 and r.json()["type"].endswith("wrong-image-count")
    r = api.post("/v1/jobs", json={"params": {"type": "collection", "params": {"collection": "abc123",
                                                                               "view": "embedding_map"}}})
    assert r.status_code == 404
    files = [("image", ("a.png", photos[0], "image/png")), ("image", ("b.png", photos[1], "image/png"))]
    r = api.post("/v1/collections", files=files, data={"params": json.dumps({"labels": ["x"]})})
    assert r.status_code == 422 and r.json()["type"].endswith("bad-labels")


def test_gallery_identify_and_enroll(api: httpx.Client, photos: list[bytes]) -> None:
    gallery = [photos[0], photos[2], photos[4]]
    cid = _collection(api, gallery, ["cat", "cup", "rocket"])
    params = {"layer": "_blocks.15", "size": 96, "threshold": 0.6}

    def identify(img: bytes) -> dict:
        r = api.post(f"/v1/collections/{cid}/identify", files=[("image", ("q.png", img, "image/png"))],
                     data={"params": json.dumps(params)})
        assert r.status_code == 200, r.text
        return r.json()

    first = identify(photos[1])  # the mirrored cat
    assert first["label"] == "cat" and not first["cached"] and first["candidates"][0]["label"] == "cat"
    assert identify(photos[5])["label"] == "rocket"
    gravel = np.stack([skimage.data.gravel()] * 3, -1)
    unknown = identify(_png(gravel))
    assert unknown["label"] == "unknown" and unknown["cached"]
    # An enroll job fills the same cache for another layer.
    res = _view(api, {"collection": cid, "view": "enroll", "layer": "act_head", "size": 96})
    assert res["enrolled"] == 3 and res["dim"] == 1280
    r = api.post(f"/v1/collections/{cid}/identify", files=[("image", ("q.png", photos[3], "image/png"))],
                 data={"params": json.dumps({**params, "layer": "act_head"})})
    assert r.status_code == 200 and r.json()["cached"] and r.json()["candidates"][0]["label"] == "cup"


def test_collection_from_zip(api: httpx.Client, photos: list[bytes]) -> None:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, b in enumerate(photos[:3]):
            zf.writestr(f"set/p{i}.png", b)
        zf.writestr("__MACOSX/junk", b"x")
    r = api.post("/v1/collections", files=[("zip", ("set.zip", buf.getvalue(), "application/zip"))])
    assert r.status_code == 201, r.text
    assert r.json()["count"] == 3
    r = api.post("/v1/collections", files=[("zip", ("set.zip", b"not a zip", "application/zip"))])
    assert r.status_code == 400 and r.json()["type"].endswith("invalid-zip")
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.png", b"\0" * (200 * 1024 * 1024))
    r = api.post("/v1/collections", files=[("zip", ("bomb.zip", bomb.getvalue(), "application/zip"))])
    assert r.status_code == 413 and r.json()["type"].endswith("zip-too-large")
