"""The OpenAPI document, with the parameter models that request bodies reference by name.

Routes that parse their own bodies (multipart or JSON) point at ``#/components/schemas/<Params>``;
this adds those models (and their nested definitions) to the generated document.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, TypeAdapter


def install_openapi(app: FastAPI, extra_models: list[type[BaseModel]],
                    named: dict[str, TypeAdapter[Any]] | None = None) -> None:
    """Add ``extra_models`` (by class name) and ``named`` adapters (e.g. the ``JobRequest`` union) to the document."""

    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        ref = "#/components/schemas/{model}"
        items = [(m.__name__, m.model_json_schema(ref_template=ref)) for m in extra_models]
        items += [(name, adapter.json_schema(ref_template=ref)) for name, adapter in (named or {}).items()]
        for name, js in items:
            for sub_name, sub in js.pop("$defs", {}).items():
                schemas.setdefault(sub_name, sub)
            schemas.setdefault(name, js)
        _document_unauthorized(doc)
        app.openapi_schema = doc
        return doc

    app.openapi = build  # type: ignore[method-assign]


_UNAUTHORIZED = {"description": "Missing or wrong API key (when the service has keys configured)",
                 "content": {"application/problem+json": {"schema": {"type": "object"}}}}


def _document_unauthorized(doc: dict[str, Any]) -> None:
    """Every operation behind the API key may answer 401 (schemathesis found it undocumented on most)."""
    for item in doc.get("paths", {}).values():
        for op in item.values():
            if isinstance(op, dict) and op.get("security"):
                op.setdefault("responses", {}).setdefault("401", _UNAUTHORIZED)


def render(app: FastAPI) -> str:
    """The document as committed in ``openapi/openapi.json`` (stable key order, trailing newline)."""
    import json

    return json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n"
