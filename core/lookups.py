"""The names a request refers to, each checked in one place: models, methods, layers, collections.

A route, a job type's ``prepare`` and a view all look names up through these, so a missing thing
is the same problem (slug, status, wording, closest choices) wherever the client names it.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from cnnviz.attribution import METHODS, Method
from cnnviz.errors import closest
from cnnviz.models import Catalog, LoadedModel, ModelLoadError, UnknownModelError
from core.errors import Invalid, NotFound, Unavailable
from core.store.collections import CollectionStore


def lookup_model(catalog: Catalog, name: str) -> LoadedModel:
    """The named model, loaded; 404 with the closest names, 503 when its weights fail to load."""
    try:
        return catalog.get(name)
    except UnknownModelError as exc:
        raise NotFound("unknown-model", f"No model named {name!r}", choices=closest(name, exc.known)) from exc
    except ModelLoadError as exc:
        raise Unavailable("model-unavailable", f"Model {name!r} failed to load", str(exc)) from exc


def known_method(name: str) -> Method:
    """The explanation method named ``name``; 404 with the closest names."""
    try:
        return METHODS[name]
    except KeyError:
        raise NotFound("unknown-method", f"No method named {name!r}", choices=closest(name, sorted(METHODS))) from None


def check_layers(model: LoadedModel, names: list[str], only: type[nn.Module] | None = None) -> None:
    """Each of ``names`` is a layer of ``model`` (an ``only`` module where given); else 422 with the closest.

    ``only`` narrows what counts: the filters view needs a ``Conv2d``, whose weights it draws.
    """
    for n in names:
        if model.has_layer(n) and _is(model, n, only):
            continue
        usable = [li.name for li in model.layers if _is(model, li.name, only)]
        what = "layer" if only is None else f"{only.__name__} layer"
        raise Invalid("unknown-layer", f"Model {model.name!r} has no {what} {n!r}",
                      "See the model's layer table for the names.",
                      choices=closest(n, usable, also=usable[:1]), model=model.name)


def _is(model: LoadedModel, layer: str, only: type[nn.Module] | None) -> bool:
    if only is None:
        return True
    try:
        return isinstance(model.submodule(layer), only)
    except AttributeError:  # a layer the table lists but the module tree does not reach (an archive's)
        return False


def owned_collection(store: CollectionStore | None, owner: str, cid: str) -> dict[str, Any]:
    """The caller's collection ``cid``; another key's, an unknown id or no store at all is 404."""
    rec = store.get(cid) if store is not None else None
    if rec is None or rec.get("owner") != owner:
        raise NotFound("collection-not-found", f"No collection {cid!r}")
    return rec
