"""The ``cnnviz`` command: ``serve`` runs the API (and, with no REDIS_URL, an embedded Redis and a
worker beside it); ``worker`` runs job workers against a shared Redis."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from types import FrameType

from core.store.config import QUEUES

log = logging.getLogger("cnnviz")


def _spawn_worker(redis_url: str, log_level: str, kind: str) -> subprocess.Popen[bytes]:
    """An embedded worker for one kind of work: a separate process, so jobs never slow the API's event loop."""
    from stack.embedded import die_with_parent

    env = {**os.environ, "REDIS_URL": redis_url}
    cmd = [sys.executable, "-m", "stack.cli", "--log-level", log_level, "worker", "--queues", kind]
    return subprocess.Popen(cmd, env=env, preexec_fn=die_with_parent)


def _stop(proc: subprocess.Popen[bytes], name: str, grace_s: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        log.warning("%s did not stop in %.0fs; killing it", name, grace_s)
        proc.kill()
        proc.wait(5)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.settings import Settings

    settings = Settings()
    host = args.host or settings.host
    port = args.port or settings.port
    redis = None
    workers: list[subprocess.Popen[bytes]] = []
    # SIGTERM must unwind through the finally below (uvicorn handles it while serving; this covers start-up).
    previous = signal.signal(signal.SIGTERM, _raise_exit)
    try:
        if not settings.redis_url and not args.no_jobs:
            from stack.embedded import EmbeddedRedis

            redis = EmbeddedRedis().start()
            settings = settings.model_copy(update={"redis_url": redis.url})
            log.info("no REDIS_URL: embedded Redis at %s and one worker per queue (%s)", redis.url,
                     ", ".join(QUEUES))
            workers = [_spawn_worker(redis.url, args.log_level, kind) for kind in QUEUES]
        app = create_app(settings)
        signal.signal(signal.SIGTERM, previous)
        log.info("serving on http://%s:%d", host, port)
        uvicorn.run(app, host=host, port=port, log_level=args.log_level.lower(), timeout_keep_alive=5)
    finally:
        for w in workers:
            _stop(w, "worker")
        if redis is not None:
            redis.close()
    return 0


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _worker(args: argparse.Namespace) -> int:
    if args.device:
        device = args.device
        if device.startswith("cuda:"):
            # Pin the process to one GPU; inside it the card is cuda:0. Set before CUDA initializes.
            os.environ["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
            device = "cuda:0"
        os.environ["CNNVIZ_DEVICE"] = device
    from service.settings import Settings
    from workers.worker import run_worker

    url = Settings().redis_url
    if not url:
        log.error("cnnviz worker needs REDIS_URL (cnnviz serve starts its own worker when it has none)")
        return 2
    queues = [q for q in (args.queues or "").split(",") if q] or None
    return run_worker(url, queues, burst=args.burst, max_jobs=args.max_jobs,
                      preload=None if args.no_preload else "default", log_level=args.log_level.upper())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:  # every other subcommand (predict, explain, job, jobs, ...) is the client's command line
        from cnnviz_client import cli as client_cli
    except ImportError:
        client_cli = None
    if client_cli is not None and client_cli.command_of(argv) not in ("serve", "worker"):
        return int(client_cli.main(argv))
    parser = argparse.ArgumentParser(prog="cnnviz", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("CNNVIZ_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP API (plus embedded Redis and a worker without REDIS_URL)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--no-jobs", action="store_true", help="without REDIS_URL: run no job system at all")
    serve.set_defaults(func=_serve)
    worker = sub.add_parser("worker", help="run a job worker against REDIS_URL")
    worker.add_argument("--queues", default=None, help="comma-separated kinds of work to serve: short, long "
                        "(default both); the rq queues are <CNNVIZ_QUEUE>-<kind>")
    worker.add_argument("--device", default=None, help="cpu, cuda or cuda:N (sets CNNVIZ_DEVICE/CUDA_VISIBLE_DEVICES)")
    worker.add_argument("--max-jobs", type=int, default=None, help="exit after this many jobs (then restart it)")
    worker.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    worker.add_argument("--no-preload", action="store_true", help="load models on the first job, not at start")
    worker.set_defaults(func=_worker)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
