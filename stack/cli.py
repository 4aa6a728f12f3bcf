"""The ``cnnviz`` command: ``serve`` runs the API (and, with no REDIS_URL, a durable embedded Redis
and supervised workers beside it); ``worker`` runs job workers against a shared Redis."""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from core.settings import Settings, get_settings, use_settings
from core.store.config import QUEUES

log = logging.getLogger("cnnviz")


def _spawn_worker(redis_url: str, log_level: str, kind: str, preload: bool = True) -> subprocess.Popen[bytes]:
    """An embedded worker for one kind of work: a separate process, so jobs never slow the API's event loop."""
    from stack.embedded import die_with_parent

    env = {**os.environ, "REDIS_URL": redis_url}
    cmd = [sys.executable, "-m", "stack.cli", "--log-level", log_level, "worker", "--queues", kind]
    if not preload:
        cmd.append("--no-preload")
    # Its own session: a Ctrl-C in the terminal reaches serve alone, which then stops its workers in order
    # (rather than each worker exiting at once and the supervisor starting it again).
    return subprocess.Popen(cmd, env=env, preexec_fn=die_with_parent, start_new_session=True)


def _shown_url(url: str) -> str:
    """A Redis URL with its password replaced, for logs."""
    return re.sub(r"//([^:@/]*):[^@/]*@", r"//\1:<password>@", url)


def _attach_command(settings: Settings) -> str:
    """The command line that attaches one more worker (both queues) to this deployment."""
    env = [f"REDIS_URL={_shown_url(settings.redis_url or '')}"]
    env += [f"CNNVIZ_{name.upper()}={shlex.quote(getattr(settings, name))}" for name in ("queue", "key_prefix")
            if getattr(settings, name) != Settings.model_fields[name].default]
    return " ".join(env) + " cnnviz worker --queues " + ",".join(QUEUES)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from stack.supervise import Supervisor

    if args.workers is not None and args.workers < 0:
        log.error("--workers must be 0 or more")
        return 2
    settings = get_settings()
    host = args.host or settings.host
    port = args.port or settings.port
    redis = None
    supervisor: Supervisor | None = None
    # SIGTERM must unwind through the finally below (uvicorn handles it while serving; this covers start-up).
    previous = signal.signal(signal.SIGTERM, _raise_exit)
    try:
        per_queue = args.workers
        if not settings.redis_url and not args.no_jobs:
            from stack.embedded import EmbeddedRedis, default_data_dir

            data_dir = None if args.ephemeral else Path(args.data_dir or default_data_dir(settings.data_dir))
            redis = EmbeddedRedis(data_dir=data_dir).start()
            settings = settings.model_copy(update={"redis_url": redis.url})
            where = f"data in {redis.dir}, append-only" if data_dir else "ephemeral: nothing is kept"
            log.info("no REDIS_URL: embedded Redis at %s (%s)", redis.url, where)
            per_queue = 1 if per_queue is None else per_queue
        elif settings.redis_url:
            log.info("Redis at %s", _shown_url(settings.redis_url))
        if settings.redis_url and per_queue:
            url = settings.redis_url
            supervisor = Supervisor(lambda kind: _spawn_worker(url, args.log_level, kind, settings.preload_models),
                                    QUEUES, per_queue)
            supervisor.start()
            supervisor.started_event.wait(30)
            log.info("%d supervised worker(s) per queue (%s), restarted when they exit", per_queue,
                     ", ".join(QUEUES))
        app = create_app(settings)
        signal.signal(signal.SIGTERM, previous)
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        log.info("explorer: http://%s:%d/ui/  (API docs: http://%s:%d/docs)", shown, port, shown, port)
        if settings.redis_url:
            log.info("Redis: %s", _shown_url(settings.redis_url))
            log.info("attach another worker: %s", _attach_command(settings))
        uvicorn.run(app, host=host, port=port, log_level=args.log_level.lower(), timeout_keep_alive=5)
    finally:
        if supervisor is not None:
            supervisor.stop()
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
        use_settings(get_settings().model_copy(update={"device": device}))  # what the worker's catalog reads
    from workers.worker import run_worker

    url = get_settings().redis_url
    if not url:
        log.error("cnnviz worker needs REDIS_URL (cnnviz serve starts its own worker when it has none)")
        return 2
    queues = [q for q in (args.queues or "").split(",") if q] or None
    return run_worker(url, queues, burst=args.burst, max_jobs=args.max_jobs,
                      preload=None if args.no_preload else "default", log_level=args.log_level.upper())


def _samples(args: argparse.Namespace) -> int:
    from stack.samples import write_samples

    for path in write_samples(Path(args.folder)):
        sys.stdout.write(f"{path}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:  # every other subcommand (predict, explain, job, jobs, ...) is the client's command line
        from cnnviz_client import cli as client_cli
    except ImportError:
        client_cli = None
    if client_cli is not None and client_cli.command_of(argv) not in ("serve", "worker", "samples"):
        return int(client_cli.main(argv))
    parser = argparse.ArgumentParser(prog="cnnviz", description=__doc__)
    parser.add_argument("--log-level", default=get_settings().log_level)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP API (plus embedded Redis and a worker without REDIS_URL)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--no-jobs", action="store_true", help="without REDIS_URL: run no job system at all")
    serve.add_argument("--data-dir", default=None, help="without REDIS_URL: where the embedded Redis keeps its "
                       "data (env CNNVIZ_DATA_DIR; default $XDG_DATA_HOME/cnnviz or ~/.local/share/cnnviz)")
    serve.add_argument("--ephemeral", action="store_true", help="without REDIS_URL: keep nothing (a temporary "
                       "embedded Redis, gone when serve stops)")
    serve.add_argument("--workers", type=int, default=None, metavar="N", help="supervised workers per queue "
                       "(default 1 with the embedded Redis, 0 with REDIS_URL)")
    serve.set_defaults(func=_serve)
    worker = sub.add_parser("worker", help="run a job worker against REDIS_URL")
    worker.add_argument("--queues", default=None, help="comma-separated kinds of work to serve: short, long "
                        "(default both); the rq queues are <CNNVIZ_QUEUE>-<kind>")
    worker.add_argument("--device", default=None, help="cpu, cuda or cuda:N (sets CNNVIZ_DEVICE/CUDA_VISIBLE_DEVICES)")
    worker.add_argument("--max-jobs", type=int, default=None, help="exit after this many jobs (then restart it)")
    worker.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    worker.add_argument("--no-preload", action="store_true", help="load models on the first job, not at start")
    worker.set_defaults(func=_worker)
    samples = sub.add_parser("samples", help="write the photos and collections the README's examples send")
    samples.add_argument("folder", nargs="?", default="scratch", help="where to write them (default: scratch)")
    samples.set_defaults(func=_samples)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
