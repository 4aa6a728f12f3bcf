"""The collection job's pictures say what they show, and a view that gets fewer items than asked says so.

The worker's ``run_view`` runs against a tiny network and in-memory stand-ins for the job context and
the collection store (no Redis): four known images, labelled, viewed three ways.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny import tiny_model  # noqa: E402

import workers.runners.collection as collection  # noqa: E402

CID = "abc123"
LABELS = ["red", "red", "blue", "blue"]


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _images() -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for i, label in enumerate(LABELS):
        a = rng.integers(0, 60, (40, 40, 3), dtype=np.uint8)
        a[..., 0 if label == "red" else 2] += 150 + 20 * i
        out.append(_png(a))
    return out


class FakeStore:
    def __init__(self, redis: Any, prefix: str) -> None:
        pass

    def get(self, cid: str) -> dict[str, Any]:
        return {"id": cid, "count": len(LABELS), "labels": LABELS}

    def images(self, cid: str, n: int) -> list[bytes]:
        return _images()[:n]


class FakeContext:
    def __init__(self, params: dict[str, Any]) -> None:
        self.spec = {"params": {"collection": CID, **params}}
        self.store = type("S", (), {"redis": None, "prefix": "t"})()
        self.record = {"owner": "o"}
        self.put_calls: dict[str, bytes] = {}
        self.model_ = tiny_model()

    def model(self):
        return self.model_

    def inputs(self) -> list[bytes]:
        return _images()[:1]

    def progress(self, *a: Any, **k: Any) -> None:
        pass

    def cancelled(self) -> bool:
        return False

    def put(self, name: str, data: bytes, media_type: str) -> None:
        self.put_calls[name] = data

    def put_json(self, name: str, value: Any) -> None:
        self.put_calls[name] = json.dumps(value).encode()

    def succeed(self, main: str) -> None:
        self.main = main


@pytest.fixture(autouse=True)
def _fake_store(monkeypatch):
    monkeypatch.setattr(collection, "CollectionStore", FakeStore)


def _run(params: dict[str, Any]) -> tuple[FakeContext, dict[str, Any], np.ndarray]:
    ctx = FakeContext(params)
    collection.run_view(ctx)  # type: ignore[arg-type]
    summary = json.loads(ctx.put_calls["result.json"])
    picture = np.asarray(Image.open(io.BytesIO(ctx.put_calls[ctx.main])).convert("RGB"))
    return ctx, summary, picture


def test_top_patches_warns_when_the_collection_is_smaller_than_k():
    _, summary, picture = _run({"view": "top_patches", "top_channels": 2, "k": 9, "projection": "none"})
    assert all(len(c["patches"]) == 4 for c in summary["channels"])
    assert summary["warnings"] and "k=9" in summary["warnings"][0] and "4 images" in summary["warnings"][0]
    assert picture.shape[0] > 64 and (picture < 100).all(-1).any()  # a header and captions: dark text


def test_neighbours_strip_and_warning():
    _, summary, picture = _run({"view": "neighbours", "k": 6})
    assert len(summary["feature_indices"]) == 4 and "k=6" in summary["warnings"][0]
    assert picture.shape[1] > 4 * 96  # the query beside four captioned neighbours


def test_embedding_map_thumbnails_are_sized_for_the_count_and_labelled():
    _, summary, picture = _run({"view": "embedding_map", "map_size": 256})
    assert "warnings" not in summary and len(summary["coords"]) == 4
    assert picture.shape[1] == 256 and picture.shape[0] > 256  # a title band and a legend
