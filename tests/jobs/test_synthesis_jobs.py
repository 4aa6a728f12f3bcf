"""Every optimization job type end to end through Redis and a real worker, at tiny sizes."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.jobs.jobkit import wait_done

pytestmark = pytest.mark.jobs

TINY = {
    "class_viz": ({"target": 285, "steps": 3, "size": 32, "preview_every": 1}, 0),
    "adversarial": ({"target": 1, "method": "fgsm", "size": 32}, 1),
    "inversion": ({"layer": "_blocks.3", "steps": 3, "size": 32}, 1),
    "texture": ({"steps": 3, "size": 32, "optimizer": "adam"}, 1),
    "texture_nn": ({"size": 8, "window": 3}, 1),
    "style": ({"steps": 2, "size": 32, "optimizer": "adam"}, 2),
}


def _post(api: httpx.Client, job_type: str, params: dict, images: list[bytes]) -> httpx.Response:
    body = {"params": json.dumps({"type": job_type, "params": params})}
    files = [("image", (f"i{i}.png", b, "image/png")) for i, b in enumerate(images)]
    if files:
        return api.post("/v1/jobs", files=files, data=body)
    return api.post("/v1/jobs", json={"params": {"type": job_type, "params": params}})


@pytest.mark.parametrize("job_type", sorted(TINY))
def test_synthesis_job_types(api: httpx.Client, cat_png: bytes, job_type: str) -> None:
    params, n_images = TINY[job_type]
    r = _post(api, job_type, params, [cat_png] * n_images)
    assert r.status_code == 202, r.text
    body = wait_done(api, r.json()["id"], timeout_s=120)
    assert body["status"] == "succeeded", body
    summary = api.get(f"/v1/jobs/{body['id']}/artifacts/result.json").json()
    assert summary["type"] == job_type and "image.png" in summary["pictures"]
    if job_type != "texture_nn":
        assert summary["objective"] and all(isinstance(v, float) for v in summary["objective"])
    res = api.get(f"/v1/jobs/{body['id']}/result")
    assert res.status_code == 200 and res.content[:4] == b"\x89PNG"


def test_synthesis_job_validation(api: httpx.Client, cat_png: bytes) -> None:
    r = _post(api, "style", {"steps": 2}, [cat_png])
    assert r.status_code == 422 and r.json()["type"].endswith("wrong-image-count")
    r = _post(api, "inversion", {"layer": "nope"}, [cat_png])
    assert r.status_code == 422 and r.json()["type"].endswith("unknown-layer")
    r = _post(api, "adversarial", {"target": 1, "eps": 5}, [cat_png])
    assert r.status_code == 422 and r.json()["type"].endswith("invalid-parameters")
    r = _post(api, "class_viz", {"steps": 5000, "size": 1024}, [])
    assert r.status_code == 422 and r.json()["type"].endswith("job-too-expensive")
