"""The OpenAPI document, with the parameter models that request bodies reference by name.

Routes that parse their own bodies (multipart or JSON) point at ``#/components/schemas/<Params>``;
this adds those models (and their nested definitions) to the generated document.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel


def install_openapi(app: FastAPI, extra_models: list[type[BaseModel]]) -> None:
    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        for model in extra_models:
            js = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, sub in js.pop("$defs", {}).items():
                schemas.setdefault(name, sub)
            schemas.setdefault(model.__name__, js)
        app.openapi_schema = doc
        return doc

    app.openapi = build  # type: ignore[method-assign]


def render(app: FastAPI) -> str:
    """The document as committed in ``openapi/openapi.json`` (stable key order, trailing newline)."""
    import json

    return json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    import sys

    from .app import create_app
    from .settings import Settings

    sys.stdout.write(render(create_app(Settings(preload_models=False))))
