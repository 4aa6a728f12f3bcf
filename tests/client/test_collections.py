"""Collections (images or a ZIP, get, identify, views as jobs, delete) and trained networks (a tiny
fast style: list, get, apply, delete; embedders) through the client against the live stack."""

from __future__ import annotations

import io
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
from cnnviz_client import Client, ProblemError
from PIL import Image

pytestmark = pytest.mark.jobs
PNG = b"\x89PNG\r\n\x1a\n"
TINY_STYLE = {"steps": 2, "size": 32, "batch_size": 1, "width": 4, "blocks": 1, "checkpoint_every": 0,
              "preview_every": 0, "eval_every": 100}
TINY_HEAD = {"steps": 2, "size": 32, "views": 1, "dim": 4, "eval_every": 100, "checkpoint_every": 0,
             "layer": "_blocks.3", "classes_per_batch": 2, "per_class": 2}


def _flip(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png)).transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def test_collection_lifecycle(viz: Client, cat_png: bytes, cup_png: bytes, tmp_path: Path) -> None:
    labels = ["cat", "cat", "cup", "cup"]
    col = viz.create_collection([cat_png, _flip(cat_png), cup_png, np.asarray(_flip(cup_png))], labels=labels)
    assert col.count == 4 and col.labels == labels and col.links["self"] == f"/v1/collections/{col.id}"
    assert viz.collection(col.id).count == 4

    # Four images are over the inline budget of this stack: identification needs them enrolled by a job first.
    with pytest.raises(ProblemError) as info:
        viz.identify(col.id, cat_png, layer="_blocks.5", size=64)
    assert info.value.status == 409 and info.value.slug == "gallery-not-enrolled"
    assert viz.submit("collection", collection=col.id, view="enroll", layer="_blocks.5", size=64).wait(60).succeeded
    ident = viz.identify(col.id, _flip(cat_png), layer="_blocks.5", size=64, k=2)
    assert ident.label == "cat" and ident.cached and ident.enrolled == 4 and ident.candidates[0]["label"] == "cat"

    # A view with a query image: its nearest neighbours are the cat and its mirror image.
    job = viz.submit("collection", cat_png, collection=col.id, view="neighbours", k=2, size=64)
    assert job.wait(timeout=60).succeeded
    assert job.result().content.startswith(PNG)  # the neighbours sheet
    assert set(job.artifact("result.json").json()["feature_indices"][:2]) == {0, 1}

    viz.delete_collection(col.id)
    with pytest.raises(ProblemError) as info:
        viz.collection(col.id)
    assert info.value.status == 404 and info.value.slug == "collection-not-found"

    # From a ZIP archive (a path here; bytes and files work too), alone or beside images.
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.png", cat_png)
        zf.writestr("b.png", cup_png)
    assert viz.create_collection(zip=archive).count == 2
    assert viz.create_collection([cat_png], zip=archive.read_bytes(), labels=["x", "y", "z"]).count == 3
    with pytest.raises(ValueError):
        viz.create_collection(zip=cat_png)  # not a ZIP: refused before sending


def test_styles_and_embedders(viz: Client, cat_png: bytes, cup_png: bytes, tmp_path: Path) -> None:
    name, head = f"client-{uuid.uuid4().hex[:8]}", f"client-head-{uuid.uuid4().hex[:8]}"
    col = viz.create_collection([cat_png, cup_png, _flip(cat_png), _flip(cup_png)], labels=["cat", "cup"] * 2)
    yy, xx = np.mgrid[0:32, 0:32]
    stripes = (np.stack([(xx + yy) // 4 % 2] * 3, -1) * 255).astype(np.uint8)
    style_job = viz.submit("fast_style", stripes, name=name, collection=col.id, **TINY_STYLE)
    head_job = viz.submit("triplet_head", name=head, collection=col.id, **TINY_HEAD)
    assert style_job.wait(timeout=120).succeeded
    assert head_job.wait(timeout=120).succeeded, head_job.last_status

    assert name in [s.name for s in viz.styles()]
    info = viz.style(name)
    assert info.kind == "style" and info.model == "efficientnet-lite0" and info.job == style_job.id
    out = viz.apply_style(name, cat_png, size=32, strength=0.5)
    assert (out.width, out.height) == (32, 24) and out.image.startswith(PNG)
    assert Path(out.save(tmp_path / "styled.png")).read_bytes() == out.image
    viz.delete_style(name)
    with pytest.raises(ProblemError) as err:
        viz.style(name)
    assert err.value.status == 404 and err.value.slug == "style-not-found"
    with pytest.raises(ProblemError) as err:
        viz.apply_style(name, cat_png)
    assert err.value.status == 404

    assert head in [e.name for e in viz.embedders()]
    emb = viz.embedder(head)
    assert emb.kind == "embedder" and emb.job == head_job.id and emb.summary["threshold"] > 0
    same = viz.inspect("verify", [cat_png, cat_png], head=head)
    assert same.data["head"] == head and same.data["same"] is True
    viz.delete_embedder(head)
    with pytest.raises(ProblemError) as err:
        viz.embedder(head)
    assert err.value.slug == "embedder-not-found"
    with pytest.raises(ProblemError):
        viz.delete_embedder(head)
