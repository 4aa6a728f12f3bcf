"""The explorer's and the docs' files, checked without a browser (these run even where chromium is absent).

Every file the pages load is in the package and is served by the app itself; none of them names an
http(s) URL to load from; ``/``, ``/ui/``, ``/docs`` and ``/redoc`` answer without an API key and
stay out of the OpenAPI document.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.explorer import EXPLORER_DIR, VENDOR_DIR

# What a page would fetch: src/href attributes, CSS url(), ES imports, fetch() of a literal.
LOADS = re.compile(r"""(?:src|href)\s*=\s*["'](https?:)?//|url\(\s*["']?https?://|import[^;]*from\s*["']https?://"""
                   r"""|fetch\(\s*["']https?://""")


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    from cnnviz.models import Catalog
    from core.settings import Settings
    from service.app import create_app

    settings = Settings(preload_models=False, api_keys=["k"])
    with TestClient(create_app(settings, catalog=Catalog.open(models_file=None, device="cpu", default=None))) as c:
        yield c


def test_root_redirects_to_the_explorer_and_it_is_served(client: TestClient) -> None:
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/ui/"
    page = client.get("/ui/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for ref in re.findall(r'(?:src|href)="([^"#]+)"', page.text):
        if not ref.startswith(".."):
            assert client.get(f"/ui/{ref}").status_code == 200, ref
    js_type = client.get("/ui/js/main.js").headers["content-type"]
    assert js_type.startswith(("text/javascript", "application/javascript")), js_type  # ES modules need it
    for sample in ("chelsea", "coffee", "astronaut", "rocket"):
        blob = client.get(f"/ui/samples/{sample}.jpg")
        assert blob.status_code == 200 and 15_000 < len(blob.content) < 80_000


def test_docs_pages_use_the_local_copies(client: TestClient) -> None:
    for path, asset in (("/docs", "/ui/vendor/swagger-ui/swagger-ui-bundle.js"),
                        ("/redoc", "/ui/vendor/redoc/redoc.standalone.js")):
        html = client.get(path).text
        assert asset in html
        assert "cdn." not in html and "fonts.googleapis" not in html and "fastapi.tiangolo.com" not in html
        assert client.get(asset).status_code == 200
    assert '"validatorUrl": null' in client.get("/docs").text
    assert client.get("/ui/vendor/swagger-ui/swagger-ui.css").status_code == 200
    assert client.get("/docs/oauth2-redirect").status_code == 200


def test_pages_are_out_of_the_api_document(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p in ("/", "/docs", "/redoc") or p.startswith("/ui")]
    assert client.get("/v1/models").status_code == 401  # the API still wants its key; the pages do not


def test_no_asset_loads_anything_from_the_internet() -> None:
    files = [p for p in EXPLORER_DIR.rglob("*") if p.suffix in (".html", ".js", ".css", ".svg")]
    assert len(files) >= 8
    for path in files:
        assert not LOADS.search(path.read_text(encoding="utf-8")), path
    redoc = (VENDOR_DIR / "redoc" / "redoc.standalone.js").read_text(encoding="utf-8")
    assert "cdn.redoc.ly" not in redoc  # its logo would be fetched from there (see vendor/README.md)
    for name in ("swagger-ui/LICENSE", "swagger-ui/NOTICE", "redoc/LICENSE", "README.md"):
        assert (VENDOR_DIR / name).is_file(), name
    total = sum(p.stat().st_size for p in (EXPLORER_DIR.parent).rglob("*") if p.is_file())
    assert total < 4_000_000, f"static assets grew to {total} bytes"
