"""The ``cnnviz`` command: ``serve`` runs the API (and, with no REDIS_URL, an embedded Redis and a
worker beside it); ``worker`` runs job workers against a shared Redis."""

from __future__ import annotations

import argparse
import logging
import os
import sys

log = logging.getLogger("cnnviz")


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app
    from .settings import Settings

    settings = Settings()
    host = args.host or settings.host
    port = args.port or settings.port
    app = create_app(settings)
    log.info("serving on http://%s:%d", host, port)
    uvicorn.run(app, host=host, port=port, log_level=args.log_level.lower(), timeout_keep_alive=5)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cnnviz", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("CNNVIZ_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP API")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.set_defaults(func=_serve)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
