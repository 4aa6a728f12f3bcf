"""The web explorer and offline API docs, served by the service itself.

Everything the browser loads comes from files committed in the package under ``service/static``:

* ``/ui/`` — the explorer (plain HTML, CSS and ES modules; no build step, no CDN);
* ``/ui/vendor/`` — Swagger UI and ReDoc, copied from the ``swagger-ui-dist`` and ``redoc`` npm
  packages (see ``service/static/vendor/README.md``);
* ``/docs`` and ``/redoc`` — FastAPI's documentation pages pointed at those local copies, so they
  render on a machine without internet (FastAPI's defaults load their JavaScript from a CDN);
* ``/`` — a redirect to ``/ui/``.

None of these routes is part of the OpenAPI document, and none needs an API key: the pages are
static, and the explorer sends the key (kept in the browser's localStorage) on its ``/v1`` calls.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.routing import Route

STATIC = Path(__file__).resolve().parent / "static"
EXPLORER_DIR = STATIC / "explorer"
VENDOR_DIR = STATIC / "vendor"

UI_PATH = "/ui"
DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"

# Swagger UI options: no online validator badge (it would fetch validator.swagger.io), keep a key
# typed into "Authorize" across reloads, and let "Try it out" stay collapsed until asked for.
SWAGGER_PARAMETERS = {"validatorUrl": None, "persistAuthorization": True, "displayRequestDuration": True,
                      "defaultModelsExpandDepth": 0, "docExpansion": "list", "filter": True}


def _root(request: Request) -> str:
    """The prefix the app is mounted under (``root_path``), without a trailing slash."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _drop_default_docs(app: FastAPI) -> None:
    """Remove the CDN-backed ``/docs``, ``/docs/oauth2-redirect`` and ``/redoc`` FastAPI added at init."""
    default = {app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url, DOCS_URL, REDOC_URL,
               OAUTH2_REDIRECT_URL} - {None}
    app.router.routes[:] = [r for r in app.router.routes if not (isinstance(r, Route) and r.path in default)]
    app.docs_url = DOCS_URL
    app.redoc_url = REDOC_URL
    app.swagger_ui_oauth2_redirect_url = OAUTH2_REDIRECT_URL


def install_explorer(app: FastAPI) -> None:
    """Mount the explorer at ``/ui/``, redirect ``/`` there, and serve ``/docs`` and ``/redoc`` offline."""
    for path in (EXPLORER_DIR / "index.html", VENDOR_DIR / "swagger-ui" / "swagger-ui-bundle.js",
                 VENDOR_DIR / "redoc" / "redoc.standalone.js"):
        if not path.is_file():  # a broken install would otherwise serve blank pages
            raise RuntimeError(f"explorer asset missing: {path} (is the package data installed?)")
    _drop_default_docs(app)
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/", include_in_schema=False)
    async def root(request: Request) -> RedirectResponse:
        return RedirectResponse(f"{_root(request)}{UI_PATH}/", status_code=307)

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_swagger_ui_html(
            openapi_url=root + openapi_url, title=f"{app.title} — Swagger UI",
            swagger_js_url=f"{root}{UI_PATH}/vendor/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{UI_PATH}/vendor/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{root}{UI_PATH}/icon.svg",
            oauth2_redirect_url=root + OAUTH2_REDIRECT_URL, swagger_ui_parameters=SWAGGER_PARAMETERS)

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_redoc_html(openapi_url=root + openapi_url, title=f"{app.title} — ReDoc",
                              redoc_js_url=f"{root}{UI_PATH}/vendor/redoc/redoc.standalone.js",
                              redoc_favicon_url=f"{root}{UI_PATH}/icon.svg", with_google_fonts=False)

    # The more specific mount first: /ui/vendor/... are the documentation assets, the rest is the explorer.
    app.mount(f"{UI_PATH}/vendor", StaticFiles(directory=VENDOR_DIR), name="vendor")
    app.mount(UI_PATH, StaticFiles(directory=EXPLORER_DIR, html=True), name="explorer")
