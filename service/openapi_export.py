"""``python -m service.openapi_export``: the committed OpenAPI document (``make openapi``)."""

from __future__ import annotations

import sys

from core.settings import Settings
from service.app import create_app
from service.openapi_doc import render


def main() -> None:
    sys.stdout.write(render(create_app(Settings(preload_models=False))))


if __name__ == "__main__":
    main()
