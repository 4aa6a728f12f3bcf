"""Inline views of a model's insides and of embeddings, from typed params to answers.

The inspect route, the identify route and the collection-view jobs call these; they raise domain
or engine errors (never HTTP ones) and return the answer models of :mod:`core.schemas.inspect`.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from pydantic import BaseModel
from torch import nn

from cnnviz.errors import closest
from cnnviz.inspection import (
    UNKNOWN,
    Gallery,
    embed,
    filter_tiles,
    first_conv,
    invariance_curves,
    layer_activations,
    plot_curves,
    verify,
)
from cnnviz.models import LoadedModel, validate_layer
from cnnviz.render import apply_colormap, encode_png, make_grid, normalize_map, resize_map
from cnnviz.training import VerificationHead, head_embed
from core.errors import Conflict, NotFound
from core.imaging import decode_rgb
from core.lookups import check_layers
from core.schemas.collections import Candidate, IdentifyParams, IdentifyResponse
from core.schemas.inspect import (
    ActivationsParams,
    ActivationsResponse,
    ChannelOut,
    EmbedParams,
    EmbedResponse,
    FiltersParams,
    FiltersResponse,
    InvarianceParams,
    InvarianceResponse,
    VerifyParams,
    VerifyResponse,
)
from core.store.collections import CollectionStore, gallery_key
from core.store.trained import TrainedStore, load_embedder, load_verification_head

# view -> (params model, min images, max images)
VIEW_INPUTS: dict[str, tuple[type[BaseModel], int, int]] = {
    "filters": (FiltersParams, 0, 1), "activations": (ActivationsParams, 1, 1),
    "embed": (EmbedParams, 1, 64), "verify": (VerifyParams, 2, 2), "invariance": (InvarianceParams, 1, 1)}
VIEWS = tuple(VIEW_INPUTS)


def _png_b64(img: torch.Tensor) -> str:
    return base64.b64encode(encode_png(img)).decode("ascii")


def filters_view(model: LoadedModel, params: FiltersParams) -> FiltersResponse:
    if params.layer is None:
        name, conv = first_conv(model)
    else:
        check_layers(model, [params.layer], only=nn.Conv2d)
        name, conv = params.layer, model.submodule(params.layer)
    tiles = filter_tiles(conv.weight[: params.max_filters], params.scale, params.per_filter)
    return FiltersResponse(model=model.name, layer=name, shape=list(conv.weight.shape),
                           grid_png=_png_b64(make_grid(tiles, pad=2)))


def activations_view(model: LoadedModel, image: torch.Tensor, params: ActivationsParams) -> ActivationsResponse:
    x = model.preprocessing.batch([image], params.resolution, device=model.device)
    acts = layer_activations(model, x, params.layer, params.top, params.channels, params.rank_by)
    tiles = [apply_colormap(resize_map(normalize_map(m, "max"), (params.tile, params.tile)), params.colormap)
             for m in acts.maps]
    chans = [ChannelOut(channel=s.channel, mean=s.mean, max=s.max, active_fraction=s.active_fraction,
                        values=acts.maps[i].tolist() if params.values else None) for i, s in enumerate(acts.channels)]
    return ActivationsResponse(model=model.name, layer=acts.layer, shape=list(acts.shape), channels=chans,
                               grid_png=_png_b64(make_grid(tiles, pad=2)))


def embed_view(model: LoadedModel, images: list[torch.Tensor], how: Embedding) -> EmbedResponse:
    e = how.embed(images)
    return EmbedResponse(model=model.name, layer=how.layer, head=how.head, dim=int(e.shape[1]),
                         embeddings=[[round(float(v), 6) for v in row] for row in e.tolist()])


def verify_view(model: LoadedModel, images: list[torch.Tensor], how: Embedding, params: VerifyParams) -> VerifyResponse:
    e = how.embed(images)
    threshold = params.threshold if params.threshold is not None else how.threshold
    dist, same = verify(e[0], e[1], threshold, metric=params.metric)
    probability = None
    if how.unit is not None:
        with torch.no_grad():
            probability = float(how.unit.probability(e[0:1], e[1:2])[0])
        same = probability >= 0.5
    return VerifyResponse(model=model.name, layer=how.layer, head=how.head, verifier=how.verifier,
                          metric=params.metric, distance=float(dist), threshold=threshold, same=bool(same),
                          probability=probability)


def invariance_view(model: LoadedModel, image: torch.Tensor, params: InvarianceParams) -> InvarianceResponse:
    layer = validate_layer(model, params.layer, spatial=False)
    curves = invariance_curves(model, image, layer, shifts=params.shifts, scales=params.scales,
                               rotations=params.rotations, size=params.resolution, shift_axis=params.shift_axis)
    return InvarianceResponse(model=model.name, curves=curves, plot_png=_png_b64(plot_curves(curves)))



DEFAULT_THRESHOLD = 0.9


@dataclass(frozen=True)
class Embedding:
    """How images become embeddings for one request: a layer's pooled features, or a trained head."""

    layer: str
    size: int | None
    head: str | None
    threshold: float  # the default "same" threshold: the head's calibrated one, else 0.9
    cache_key: str  # names cached gallery embeddings; a retrained head gets a new one
    embed: Callable[[list[torch.Tensor]], torch.Tensor]
    verifier: str | None = None  # a trained verification head's name; its unit decides "same"
    unit: VerificationHead | None = None


def resolve_embedding(model: LoadedModel, layer: str | None, size: int | None, head: str | None,
                      trained: TrainedStore | None, owner: str, pool: str = "avg",
                      verifier: str | None = None) -> Embedding:
    """The embedding a request asks for; unknown layers, heads and verifiers, or one of another model, are 4xx.

    A verifier's embedding is the plain one of its layer and size, so a gallery's cached embeddings
    of that layer serve it and the plain distance answers beside it.
    """
    if verifier is not None:
        if trained is None:
            raise NotFound("verifier-not-found", f"No verifier named {verifier!r}", "This service has no job system.")
        unit, rec = load_verification_head(trained, owner, verifier, model)
        config, summary = rec["meta"]["config"], rec.get("summary") or {}
        name, vsize = config["layer"], int(config["size"])
        return Embedding(name, vsize, None, float(summary.get("threshold") or DEFAULT_THRESHOLD),
                         gallery_key(name, vsize), lambda images: embed(model, images, name, "avg", size=vsize),
                         verifier=verifier, unit=unit)
    if head is None:
        name = validate_layer(model, layer, spatial=False)
        return Embedding(name, size, None, DEFAULT_THRESHOLD,
                         gallery_key(name, size or model.preprocessing.input_size, pool=pool),
                         lambda images: embed(model, images, name, pool, size=size))
    if trained is None:
        raise NotFound("embedder-not-found", f"No embedder named {head!r}", "This service has no job system.")
    net, rec = load_embedder(trained, owner, head, model)
    config = rec["meta"]["config"]
    name, size = config["layer"], size or int(config["size"])
    threshold = float((rec.get("summary") or {}).get("threshold") or DEFAULT_THRESHOLD)
    return Embedding(name, size, head, threshold, gallery_key(name, size, head=head, version=rec["version"]),
                     lambda images: head_embed(model, net, images, name, size))  # type: ignore[arg-type]


def inspect_view(view: str, model: LoadedModel, images: list[torch.Tensor], params: Any,
                 embedding: Callable[[], Embedding]) -> BaseModel:
    """One inspect view's answer; ``embedding`` resolves the embed/verify embedding when needed."""
    if view == "filters":
        return filters_view(model, params)
    if view == "activations":
        return activations_view(model, images[0], params)
    if view == "embed":
        return embed_view(model, images, embedding())
    if view == "verify":
        return verify_view(model, images, embedding(), params)
    return invariance_view(model, images[0], params)


def check_view(view: str) -> tuple[type[BaseModel], int, int]:
    if view not in VIEW_INPUTS:
        raise NotFound("unknown-view", f"No view named {view!r}", choices=closest(view, list(VIEWS)))
    return VIEW_INPUTS[view]


def identify_query(model: Any, store: CollectionStore, rec: dict[str, Any], query: Any, how: Embedding,
                   params: IdentifyParams, budget: float) -> IdentifyResponse:
    """Embed the gallery once (then cached in Redis beside the collection) and search it 1:K."""
    gallery_e = store.get_embeddings(rec["id"], model.name, how.cache_key)
    cached = gallery_e is not None
    if gallery_e is None:
        if rec["count"] > budget:
            raise Conflict("gallery-not-enrolled", "This gallery is too large to embed inline",
                               "Run a collection job with view=enroll first; identification then uses its cache.")
        images = [decode_rgb(b) for b in store.images(rec["id"], int(rec["count"]))]
        gallery_e = how.embed(images)
        store.put_embeddings(rec["id"], model.name, how.cache_key, gallery_e)
    gallery = Gallery()
    gallery.enroll(rec["labels"], gallery_e)
    q = how.embed([query])[0]
    threshold = params.threshold if params.threshold is not None else how.threshold
    if how.unit is not None:
        return _identify_by_verifier(model, how, gallery, q, threshold, params.k, cached)
    ident = gallery.identify(q, threshold, params.k)
    return IdentifyResponse(model=model.name, layer=how.layer, head=how.head, label=ident.label,
                            distance=ident.distance, threshold=threshold, enrolled=len(gallery), cached=cached,
                            candidates=[Candidate(label=lb, distance=d) for lb, d in ident.candidates])


def _identify_by_verifier(model: Any, how: Embedding, gallery: Gallery, q: torch.Tensor, threshold: float, k: int,
                          cached: bool) -> IdentifyResponse:
    """1:K by a verification head: each label scored by its best probability over its enrolled embeddings;
    the best label answers when that probability reaches 0.5, else ``unknown``."""
    assert how.unit is not None
    with torch.no_grad():
        p = how.unit.probability(q.float().reshape(1, -1), gallery.embeddings).float()
    d = (gallery.embeddings - q.float().reshape(1, -1)).norm(dim=1)
    best: dict[str, tuple[float, float]] = {}
    for lb, pi, di in zip(gallery.labels, p.tolist(), d.tolist(), strict=True):
        if lb not in best or pi > best[lb][0]:
            best[lb] = (pi, di)
    ranked = sorted(best.items(), key=lambda kv: -kv[1][0])[:k]
    top_label, (top_p, top_d) = ranked[0]
    return IdentifyResponse(model=model.name, layer=how.layer, verifier=how.verifier,
                            label=top_label if top_p >= 0.5 else UNKNOWN, distance=top_d, probability=top_p,
                            threshold=threshold, enrolled=len(gallery), cached=cached,
                            candidates=[Candidate(label=lb, distance=di, probability=pi)
                                        for lb, (pi, di) in ranked])
