"""Shared things routes receive as dependencies: settings, the catalog, a loaded model."""

from __future__ import annotations

from fastapi import Path, Request

from cnnviz.models import Catalog, LoadedModel, ModelLoadError, UnknownModelError

from .errors import ProblemError
from .settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_catalog(request: Request) -> Catalog:
    return request.app.state.catalog


def lookup_model(catalog: Catalog, name: str) -> LoadedModel:
    try:
        return catalog.get(name)
    except UnknownModelError as exc:
        raise ProblemError(404, "unknown-model", f"No model named {name!r}", choices=exc.known) from exc
    except ModelLoadError as exc:
        raise ProblemError(503, "model-unavailable", f"Model {name!r} failed to load", str(exc)) from exc


def get_model(request: Request, model: str = Path(..., max_length=100)) -> LoadedModel:
    return lookup_model(request.app.state.catalog, model)
