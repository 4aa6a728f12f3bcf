"""Train-once networks end to end: fast style and triplet head jobs through Redis and a real worker,
then the trained networks used inline (apply, embed, verify, identify). Tiny sizes and few steps."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest
import skimage.data
from PIL import Image

from tests.jobs.jobkit import KEY_B, wait_done, wait_status

pytestmark = pytest.mark.jobs

TINY_STYLE = {"steps": 6, "size": 32, "batch_size": 2, "width": 4, "blocks": 1, "checkpoint_every": 2,
              "preview_every": 2, "eval_every": 3}


def _png(arr: np.ndarray, size: tuple[int, int] = (64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).resize(size).save(buf, "PNG")
    return buf.getvalue()


def _stripes() -> np.ndarray:
    yy, xx = np.mgrid[0:64, 0:64]
    ph = ((xx + yy) // 8) % 3
    return (np.stack([ph == 0, (ph == 1) * 0.8, ph == 2], -1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def contents() -> list[bytes]:
    return [_png(getattr(skimage.data, n)()) for n in ("chelsea", "coffee", "rocket", "hubble_deep_field")]


def _collection(api: httpx.Client, images: list[bytes], labels: list[str] | None = None) -> str:
    files = [("image", (f"p{i}.png", b, "image/png")) for i, b in enumerate(images)]
    r = api.post("/v1/collections", files=files, data={"params": json.dumps({"labels": labels})})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _submit(api: httpx.Client, job: dict, images: list[bytes] | None = None, **kw) -> httpx.Response:
    if images:
        files = [("image", (f"i{i}.png", b, "image/png")) for i, b in enumerate(images)]
        return api.post("/v1/jobs", files=files, data={"params": json.dumps(job)}, **kw)
    return api.post("/v1/jobs", json={"params": job}, **kw)


def _train(api: httpx.Client, job: dict, images: list[bytes] | None = None) -> tuple[dict, dict]:
    r = _submit(api, job, images)
    assert r.status_code == 202, r.text
    done = wait_done(api, r.json()["id"], timeout_s=180)
    assert done["status"] == "succeeded", done
    return done, api.get(f"/v1/jobs/{done['id']}/artifacts/result.json").json()


def _apply(api: httpx.Client, name: str, image: bytes, params: dict, **kw) -> httpx.Response:
    return api.post(f"/v1/styles/{name}/apply", files=[("image", ("c.png", image, "image/png"))],
                    data={"params": json.dumps(params)}, **kw)


def test_fast_style_train_apply_resume_delete(api: httpx.Client, contents: list[bytes]) -> None:
    """A style trains, is listed with its checkpoint, applies deterministically at the asked size,
    resumes from its checkpoint with the same first steps, is private to its key, and deletes."""
    cid = _collection(api, contents)
    job = {"type": "fast_style", "params": {"name": "stripes", "collection": cid, **TINY_STYLE}}
    done, res = _train(api, job, [_png(_stripes()), contents[0]])
    assert res["resumed_from"] == 0 and len(res["history"]["loss"]) == 6 and res["link"] == "/v1/styles/stripes"
    assert [e["step"] for e in res["history"]["evals"]] == [0, 3, 6]
    assert api.get(f"/v1/jobs/{done['id']}/result").content[:4] == b"\x89PNG"
    assert any(p["name"].startswith("preview-") for p in done["previews"])

    listing = api.get("/v1/styles").json()
    assert [s["name"] for s in listing["items"]] == ["stripes"]
    info = api.get("/v1/styles/stripes").json()
    assert info["checkpoint_step"] == 6 and info["summary"]["config"]["network"]["width"] == 4
    assert info["model"] == "efficientnet-lite0" and info["links"]["apply"] == "/v1/styles/stripes/apply"

    cat = _png(skimage.data.chelsea(), (80, 60))
    a = _apply(api, "stripes", cat, {"size": 48}, headers={"Accept": "image/png"})
    b = _apply(api, "stripes", cat, {"size": 48}, headers={"Accept": "image/png"})
    assert a.status_code == 200 and a.headers["content-type"] == "image/png"
    assert a.content == b.content  # deterministic
    assert Image.open(io.BytesIO(a.content)).size == (48, 36)
    jpg = _apply(api, "stripes", cat, {"size": 48}, headers={"Accept": "image/jpeg"})
    assert jpg.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(jpg.content)).size == (48, 36)
    body = _apply(api, "stripes", cat, {"strength": 0.5, "preserve_color": True}).json()
    assert (body["width"], body["height"]) == (80, 60) and body["timings"]["compute_ms"] > 0

    # Continue the same run for 4 more steps: the history keeps the first 6 steps as they were.
    _, res2 = _train(api, {"type": "fast_style", "params": {"name": "stripes", "resume": True, "steps": 10}})
    assert res2["resumed_from"] == 6 and res2["history"]["loss"][:6] == res["history"]["loss"]
    assert len(res2["history"]["loss"]) == 10 and res2["version"] != res["version"]
    r = _submit(api, {"type": "fast_style", "params": {"name": "stripes", "resume": True, "width": 8}})
    assert r.status_code == 422 and "width" in r.text

    with httpx.Client(base_url=str(api.base_url), headers={"X-API-Key": KEY_B}, timeout=30) as other:
        assert other.get("/v1/styles/stripes").status_code == 404
        assert _apply(other, "stripes", cat, {}).status_code == 404
        assert other.get("/v1/styles").json()["count"] == 0
    assert api.delete("/v1/styles/stripes").status_code == 204
    r = _apply(api, "stripes", cat, {})
    assert r.status_code == 404 and r.json()["type"].endswith("style-not-found")
    r = _submit(api, {"type": "fast_style", "params": {"name": "stripes", "resume": True}})
    assert r.status_code == 404 and r.json()["type"].endswith("no-checkpoint")


def test_cancel_keeps_a_checkpoint_to_resume(api: httpx.Client, contents: list[bytes]) -> None:
    """Cancelling a running training keeps its state; a second run of the name is refused meanwhile;
    a resume starts where the cancel stopped it."""
    cid = _collection(api, contents)
    long = {"name": "long", "collection": cid, **TINY_STYLE, "steps": 2000, "checkpoint_every": 0,
            "preview_every": 0, "eval_every": 1000}
    r = _submit(api, {"type": "fast_style", "params": long}, [_png(_stripes())])
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    wait_status(api, job_id, lambda b: b["status"] == "running" and b["progress"]["step"] >= 3, timeout_s=120)
    again = _submit(api, {"type": "fast_style", "params": long}, [_png(_stripes())])
    assert again.status_code == 409 and again.json()["type"].endswith("training-in-progress")
    assert api.delete(f"/v1/jobs/{job_id}").status_code in (200, 202)
    stopped = wait_done(api, job_id)
    assert stopped["status"] == "canceled"
    kept = stopped["progress"]["checkpoint_step"]
    assert kept >= 3 and "checkpoint" in stopped["progress"]["message"]
    _, res = _train(api, {"type": "fast_style", "params": {"name": "long", "resume": True, "steps": kept + 2}})
    assert res["resumed_from"] == kept and res["steps"] == kept + 2


def test_triplet_head_and_its_endpoints(api: httpx.Client) -> None:
    """A triplet head trains on a labelled collection, reports held-out accuracy beside the frozen
    baseline, and serves embed / verify (with its calibrated threshold) / identify."""
    names = ("chelsea", "coffee", "rocket", "astronaut")
    photos, labels = [], []
    for n in names:
        a = getattr(skimage.data, n)()
        h, w = a.shape[:2]
        photos += [_png(a[: h * 2 // 3, : w * 2 // 3].copy()), _png(a[h // 4:, w // 4:].copy())]
        labels += [n, n]
    cid = _collection(api, photos, labels)
    job = {"type": "triplet_head", "params": {"name": "photos", "collection": cid, "steps": 30, "size": 64,
                                              "views": 2, "dim": 16, "eval_every": 10, "layer": "_blocks.5"}}
    done, res = _train(api, job)
    assert res["kind"] == "embedder" and res["config"]["layer"] == "_blocks.5"
    assert 0 <= res["frozen_accuracy"] <= 1 and 0 <= res["heldout_accuracy"] <= 1 and res["threshold"] > 0
    assert [e["step"] for e in res["history"]["evals"]] == [0, 10, 20, 30]
    assert api.get(f"/v1/jobs/{done['id']}/artifacts/map.png").content[:4] == b"\x89PNG"  # held-out views mapped
    info = api.get("/v1/embedders/photos").json()
    assert "summary" in info, info
    assert info["summary"]["threshold"] == res["threshold"] and info["summary"]["config"]["network"]["dim"] == 16

    files = [("image", ("a.png", photos[0], "image/png")), ("image", ("b.png", photos[1], "image/png"))]
    emb = api.post("/v1/models/efficientnet-lite0/inspect/embed", files=files,
                   data={"params": json.dumps({"head": "photos"})})
    assert emb.status_code == 200, emb.text
    e = np.array(emb.json()["embeddings"])
    assert e.shape == (2, 16) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-4)
    assert emb.json()["head"] == "photos" and emb.json()["layer"] == "_blocks.5"
    ver = api.post("/v1/models/efficientnet-lite0/inspect/verify", files=files,
                   data={"params": json.dumps({"head": "photos"})}).json()
    assert ver["threshold"] == res["threshold"]
    assert abs(ver["distance"] - float(np.linalg.norm(e[0] - e[1]))) < 1e-3
    ident = api.post(f"/v1/collections/{cid}/identify", files=[("image", ("q.png", photos[2], "image/png"))],
                     data={"params": json.dumps({"head": "photos", "threshold": 2.0})}).json()
    assert ident["head"] == "photos" and ident["label"] == "coffee" and ident["distance"] < 1e-3
    assert not ident["cached"]
    # An enroll job with the head fills the cache that identify reads.
    r = _submit(api, {"type": "collection", "params": {"collection": cid, "view": "enroll", "head": "photos"}})
    assert r.status_code == 202, r.text
    enrolled = api.get(f"/v1/jobs/{wait_done(api, r.json()['id'])['id']}/artifacts/result.json").json()
    assert enrolled["enrolled"] == 8 and enrolled["dim"] == 16 and enrolled["head"] == "photos"
    r = _submit(api, {"type": "collection", "params": {"collection": cid, "view": "enroll", "head": "nope"}})
    assert r.status_code == 404 and r.json()["type"].endswith("embedder-not-found")

    r = api.post("/v1/models/efficientnet-lite0/inspect/embed", files=files[:1],
                 data={"params": json.dumps({"head": "nope"})})
    assert r.status_code == 404 and r.json()["type"].endswith("embedder-not-found")
    r = api.post("/v1/models/efficientnet-lite0/inspect/embed", files=files[:1],
                 data={"params": json.dumps({"head": "photos", "layer": "act_head"})})
    assert r.status_code == 422
    assert api.delete("/v1/embedders/photos").status_code == 204
    assert api.get("/v1/embedders/photos").status_code == 404


def test_training_job_validation(api: httpx.Client, contents: list[bytes]) -> None:
    """Bad training requests are 4xx problems before anything is queued."""
    cid = _collection(api, contents[:2])
    labelled = _collection(api, contents[:3], ["a", "a", "b"])
    style = _png(_stripes())
    cases = [
        ({"type": "fast_style", "params": {"name": "s", "collection": cid}}, [], 422, "wrong-image-count"),
        ({"type": "fast_style", "params": {"name": "s"}}, [style], 422, "invalid-parameters"),
        ({"type": "fast_style", "params": {"name": "../x", "collection": cid}}, [style], 422, "invalid-parameters"),
        ({"type": "fast_style", "params": {"name": "s", "collection": "abc"}}, [style], 404, "collection-not-found"),
        ({"type": "fast_style", "params": {"name": "s", "collection": cid, "style_layers": ["nope"]}}, [style], 422,
         "unknown-layer"),
        ({"type": "fast_style", "params": {"name": "s", "collection": cid, "steps": 100000, "size": 512}}, [style],
         422, "job-too-expensive"),
        ({"type": "fast_style", "params": {"name": "s", "collection": cid, "batch_size": 99}}, [style], 422,
         "invalid-parameters"),
        ({"type": "triplet_head", "params": {"name": "h", "collection": cid}}, [], 422, "missing-labels"),
        ({"type": "triplet_head", "params": {"name": "h", "collection": cid}}, [style], 422, "wrong-image-count"),
        ({"type": "triplet_head", "params": {"name": "h", "resume": True}}, [], 404, "no-checkpoint"),
        ({"type": "triplet_head", "params": {"name": "h", "collection": labelled, "split": "images"}}, [], 422,
         "bad-labels"),  # one image of class "b": nothing of it could be held out
        ({"type": "triplet_head", "params": {"name": "h", "collection": labelled, "split": "views", "views": 0}}, [],
         422, "invalid-parameters"),
    ]
    for job, images, status, slug in cases:
        r = _submit(api, job, images)
        assert r.status_code == status and r.json()["type"].endswith(slug), (job, r.text)
    # Applying is bounded by the inline budget: a wide network at 2048 px is refused before any work.
    _train(api, {"type": "fast_style", "params": {"name": "wide", "collection": cid, **TINY_STYLE, "steps": 1,
                                                  "width": 64}}, [style])
    cat = _png(skimage.data.chelsea(), (80, 60))
    r = _apply(api, "wide", cat, {"size": 2048})
    assert r.status_code == 422 and r.json()["type"].endswith("too-expensive") and r.json()["estimate"] > 400
    assert _apply(api, "wide", cat, {"size": 64}).status_code == 200
    r = _apply(api, "wide", cat, {"size": 5000, "strength": 2})
    assert r.status_code == 422 and r.json()["type"].endswith("invalid-parameters")
    assert api.get("/v1/styles/no-such").status_code == 404
    assert api.delete("/v1/embedders/no-such").status_code == 404
    assert api.get("/v1/styles/bad name").status_code == 422
