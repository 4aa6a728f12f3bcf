"""Collection-view jobs: top activating patches, neighbours, embedding maps, threshold calibration.

The collection's images come from Redis by key (:mod:`core.store.collections`); a neighbours job
also carries its query image as the job's own input. Progress counts images through the network,
and cancel is checked between batches by the engine.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from cnnviz.inspection import (
    calibrate_threshold,
    embed,
    extract_features,
    make_thumbnail,
    neighbour_lists,
    patch_grid,
    reduce_2d,
    thumbnail_map,
    top_activating_patches,
)
from cnnviz.inspection.embedding_map import thumb_size_for
from cnnviz.inspection.neighbours import neighbour_strip
from cnnviz.render import encode_png
from cnnviz.training import head_embed
from core.imaging import decode_rgb
from core.schemas.collections import CollectionViewParams
from core.store.collections import CollectionStore, gallery_key
from core.store.trained import TrainedStore
from workers.runtime import JobContext, execute

log = logging.getLogger(__name__)


def _embeddings(ctx: JobContext, model: Any, images: list[torch.Tensor], params: CollectionViewParams,
                common: dict[str, Any]) -> tuple[str, str, torch.Tensor]:
    """``(layer, gallery cache key, embeddings)`` of a collection: a layer's features or a trained head's.

    The keys are the ones the identify route reads, so an enrolled gallery is found there.
    """
    size = params.size
    head_name = params.head
    if head_name is None:
        layer = params.layer or model.default_layer
        key = gallery_key(layer, size or model.preprocessing.input_size)
        return layer, key, embed(model, images, layer, size=size, **common)
    found = TrainedStore(ctx.store.redis, ctx.store.prefix).load("embedder", ctx.record["owner"], head_name)
    if found is None:
        raise ValueError(f"embedder {head_name!r} was deleted")
    head, rec = found
    config = rec["meta"]["config"]
    size = size or int(config["size"])
    e = head_embed(model, head, images, config["layer"], size, **common)
    return config["layer"], gallery_key(config["layer"], size, head=head_name, version=rec["version"]), e


def run_view(ctx: JobContext) -> None:
    params = CollectionViewParams.model_validate(ctx.spec.get("params") or {})
    view, cid = params.view, params.collection
    store = CollectionStore(ctx.store.redis, ctx.store.prefix)
    rec = store.get(cid)
    if rec is None:
        raise RuntimeError(f"collection {cid} has expired or was deleted")
    model = ctx.model()
    images = [decode_rgb(b) for b in store.images(cid, int(rec["count"]))]

    def progress(done: int, total: int, stage: str) -> None:
        ctx.progress(done, total, stage)

    common = {"progress": progress, "cancel": ctx.cancelled}
    summary: dict[str, Any] = {"model": model.name, "view": view, "collection": cid, "count": len(images)}
    warnings: list[str] = []
    main = "result.json"
    if view == "top_patches":
        channels = top_activating_patches(model, images, params.layer, params.channels,
                                          top_channels=params.top_channels, k=params.k,
                                          projection=params.projection, size=params.size,
                                          **common)
        layer = params.layer or model.default_layer
        ctx.put("patches.png", encode_png(patch_grid(channels, layer=layer, projection=params.projection)),
                "image/png")
        short = [c.channel for c in channels if len(c.patches) < params.k]
        if short:
            got = min(len(c.patches) for c in channels)
            warnings.append(f"top_patches asked k={params.k} but got {got} patches per channel for {len(short)} "
                            f"channel(s): the collection has {len(images)} images and each image counts once")
        summary["channels"] = [{"channel": c.channel, "score": c.score,
                                "patches": [{"image": p.image, "y": p.y, "x": p.x, "activation": p.activation,
                                             "box": list(p.box)} for p in c.patches]} for c in channels]
        main = "patches.png"
    elif view == "neighbours":
        query = decode_rgb(ctx.inputs()[0])
        nl = neighbour_lists(model, query, images, params.layer, k=min(params.k, len(images)),
                             metric=params.metric, size=params.size, **common)
        if params.k > len(images):
            warnings.append(f"neighbours asked k={params.k} but the collection has {len(images)} images: "
                            f"{len(images)} neighbours per row")
        summary.update(layer=nl.layer, metric=nl.metric, feature_indices=nl.feature_indices,
                       feature_distances=nl.feature_distances, pixel_indices=nl.pixel_indices,
                       pixel_distances=nl.pixel_distances)
        ctx.put("neighbours.png", encode_png(neighbour_strip(query, images, nl)), "image/png")
        main = "neighbours.png"
    elif view == "embedding_map":
        feats = extract_features(model, images, params.layer, size=params.size, **common)
        coords = reduce_2d(feats, params.method, seed=params.seed)
        thumb = thumb_size_for(len(images), params.map_size)
        labels = rec.get("labels") or None
        picture = thumbnail_map(coords, [make_thumbnail(im, thumb) for im in images], size=params.map_size,
                                thumb=thumb, labels=labels,
                                title=f"{params.method} of layer {params.layer or model.default_layer}, "
                                      f"{len(images)} images")
        ctx.put("map.png", encode_png(picture), "image/png")
        summary.update(method=params.method, coords=[[round(float(v), 5) for v in c] for c in coords])
        main = "map.png"
    elif view == "enroll":
        layer, key, e = _embeddings(ctx, model, images, params, common)
        store.put_embeddings(cid, model.name, key, e)
        summary.update(layer=layer, head=params.head, enrolled=int(e.shape[0]), dim=int(e.shape[1]))
    elif view == "calibrate":
        labels = rec.get("labels")
        if not labels:
            raise ValueError("calibration needs a collection uploaded with labels")
        layer, _key, e = _embeddings(ctx, model, images, params, common)
        cal = calibrate_threshold(e, labels)
        summary.update(threshold=cal.threshold, accuracy=cal.accuracy, same_pairs=cal.n_same_pairs,
                       different_pairs=cal.n_diff_pairs)
    else:
        raise ValueError(f"unknown collection view {view!r}")
    if warnings:
        summary["warnings"] = warnings
    ctx.put_json("result.json", summary)
    ctx.succeed(main)


def run(job_id: str, prefix: str) -> dict[str, Any]:
    """rq entry point for ``type: collection``."""
    return execute(job_id, prefix, run_view)
