"""The learned verification head end to end: a verification_head job on a labelled collection through
Redis and a real worker, listed beside the distance threshold, then used by verify and identify."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from redis import Redis

from cnnviz.training import PairTrainer
from cnnviz.training.triplet import TripletData
from core.store.trained import TrainedStore
from service.auth import key_hash
from tests.jobs.jobkit import KEY_A, Stack, wait_done

pytestmark = pytest.mark.jobs

URL = "/v1/models/efficientnet-lite0"


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _photo(kind: str, seed: int) -> bytes:
    """An easy split: warm noisy blobs against cool stripes, each image drawn anew (64 px)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64]
    if kind == "warm":
        cy, cx = rng.integers(16, 48, 2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 150.0)
        img = np.stack([0.5 + 0.5 * blob, 0.3 * blob, 0.1 + 0 * blob], -1)
    else:
        ph = ((xx * rng.uniform(0.8, 1.2) + yy) // 6) % 2
        img = np.stack([0.1 + 0 * ph, 0.3 + 0.3 * ph, 0.6 + 0.4 * ph], -1)
    img = img + rng.normal(0, 0.05, img.shape)
    return _png((np.clip(img, 0, 1) * 255).astype(np.uint8))


def _post(api: httpx.Client, path: str, images: list[bytes], params: dict) -> httpx.Response:
    files = [("image", (f"i{i}.png", b, "image/png")) for i, b in enumerate(images)]
    return api.post(path, files=files, data={"params": json.dumps(params)})


def test_verification_head_trains_lists_and_serves(api: httpx.Client, stack: Stack) -> None:
    photos = [_photo(k, s) for k in ("warm", "cool") for s in range(4)]
    labels = [k for k in ("warm", "cool") for _ in range(4)]
    r = _post(api, "/v1/collections", photos, {"labels": labels})
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    job = {"type": "verification_head", "params": {"name": "easy", "collection": cid, "steps": 60, "size": 64,
                                                   "views": 1, "eval_every": 30, "lr": 0.05}}
    r = api.post("/v1/jobs", json={"params": job})
    assert r.status_code == 202, r.text
    done = wait_done(api, r.json()["id"], timeout_s=180)
    assert done["status"] == "succeeded", done
    res = api.get(f"/v1/jobs/{done['id']}/artifacts/result.json").json()
    assert res["kind"] == "verifier" and res["link"] == "/v1/verifiers/easy"
    assert res["heldout_accuracy"] > 0.5  # better than chance (balanced) on held-out pairs
    assert [e["step"] for e in res["history"]["evals"]] == [0, 30, 60]

    listed = api.get("/v1/verifiers").json()
    item = next(i for i in listed["items"] if i["name"] == "easy")
    summary = item["summary"]
    assert item["kind"] == "verifier" and summary["form"] == "abs"
    assert summary["heldout_accuracy"] == res["heldout_accuracy"]
    assert 0 <= summary["threshold_accuracy"] <= 1 and summary["threshold"] > 0  # the threshold, same pairs

    # verify: the probability is the stored unit on the two embeddings of its layer and size
    layer = res["config"]["layer"]
    ver = _post(api, f"{URL}/inspect/verify", photos[:2], {"verifier": "easy"})
    assert ver.status_code == 200, ver.text
    v = ver.json()
    emb = _post(api, f"{URL}/inspect/embed", photos[:2], {"layer": layer, "resolution": 64}).json()
    e = torch.tensor(emb["embeddings"])
    store = TrainedStore(Redis.from_url(stack.redis_url), stack.prefix)
    unit, _rec = store.load("verifier", key_hash(KEY_A), "easy")
    assert v["verifier"] == "easy" and v["layer"] == layer
    assert v["probability"] == pytest.approx(float(unit.probability(e[:1], e[1:2])[0]), abs=1e-4)
    assert v["same"] == (v["probability"] >= 0.5)

    # identify against the collection: the gallery's embeddings computed once, then read from the cache
    q = [_photo("warm", 99)]
    first = _post(api, f"/v1/collections/{cid}/identify", q, {"verifier": "easy", "k": 2})
    assert first.status_code == 200, first.text
    a = first.json()
    assert a["verifier"] == "easy" and not a["cached"] and len(a["candidates"]) == 2
    assert a["candidates"][0]["probability"] >= a["candidates"][1]["probability"]
    again = _post(api, f"/v1/collections/{cid}/identify", q, {"verifier": "easy", "k": 2}).json()
    assert again["cached"] and again["candidates"] == a["candidates"]

    # bad input: unknown verifier 404, one trained for another model 422, a verifier with a layer 422
    r = _post(api, f"{URL}/inspect/verify", photos[:2], {"verifier": "nope"})
    assert r.status_code == 404 and r.json()["type"].endswith("verifier-not-found")
    other = PairTrainer(TripletData("act_head", 64, torch.rand(6, 4), torch.tensor([0, 0, 0, 1, 1, 1]),
                                    torch.rand(4, 4), torch.tensor([0, 0, 1, 1]), ["a", "b"], "images"),
                        backbone="efficientnet-lite1", eval_every=0)
    store.save("verifier", key_hash(KEY_A), "lite1", other.weights(name="lite1"), model="efficientnet-lite1",
               job="j", summary={})
    r = _post(api, f"{URL}/inspect/verify", photos[:2], {"verifier": "lite1"})
    assert r.status_code == 422 and r.json()["type"].endswith("verifier-model-mismatch"), r.text
    r = _post(api, f"/v1/collections/{cid}/identify", q, {"verifier": "lite1"})
    assert r.status_code == 422 and r.json()["type"].endswith("verifier-model-mismatch"), r.text
    r = _post(api, f"{URL}/inspect/verify", photos[:2], {"verifier": "easy", "layer": "act_head"})
    assert r.status_code == 422
    assert api.delete("/v1/verifiers/easy").status_code == 204
    assert api.get("/v1/verifiers/easy").status_code == 404
