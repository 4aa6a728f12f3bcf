"""Keeps ``cnnviz serve``'s embedded workers running: a worker that exits or is killed (a segfault
inside a job, the OOM killer, kill -9) is started again after an exponential backoff.

A worker runs its jobs in its own process (rq's SimpleWorker), so a crash costs the job it was
running, which the API settles as failed/``abandoned`` when the job's heartbeat key expires;
the next job runs on the restarted worker. Restarts are bounded: a slot that needed
``max_restarts`` restarts within ``window_s`` is given up (logged as an error), and ``/readyz``
then reports the queue that has no worker, rather than a crash loop burning the machine.

The supervisor thread starts, restarts and stops every worker itself: on Linux each worker is
tied to the thread that started it (``PR_SET_PDEATHSIG``), so that thread outlives them all.
"""

from __future__ import annotations

import collections
import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger("cnnviz.supervisor")


@dataclass
class Slot:
    """One worker the supervisor keeps alive (``short-1``, ``long-2``, ...)."""

    name: str
    kind: str
    proc: subprocess.Popen[bytes] | None = None
    restarts: collections.deque[float] = field(default_factory=collections.deque)
    start_at: float = 0.0  # when the next start is due (monotonic); 0 = running or not yet handled
    given_up: bool = False


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


class Supervisor(threading.Thread):
    """Starts ``per_queue`` workers for each kind in ``kinds`` and restarts any that stop."""

    def __init__(self, spawn: Callable[[str], subprocess.Popen[bytes]], kinds: tuple[str, ...] | list[str],
                 per_queue: int = 1, *, base_delay_s: float = 0.5, max_delay_s: float = 30.0,
                 max_restarts: int = 10, window_s: float = 300.0, poll_s: float = 0.2,
                 grace_s: float = 10.0) -> None:
        super().__init__(name="cnnviz-supervisor", daemon=True)
        self.spawn = spawn
        self.slots = [Slot(f"{kind}-{i + 1}", kind) for kind in kinds for i in range(per_queue)]
        self.base_delay_s, self.max_delay_s = base_delay_s, max_delay_s
        self.max_restarts, self.window_s = max_restarts, window_s
        self.poll_s, self.grace_s = poll_s, grace_s
        self._stop_event = threading.Event()
        self.started_event = threading.Event()

    # --- the loop -------------------------------------------------------------------------
    def run(self) -> None:
        try:
            for slot in self.slots:
                self._start(slot)
            self.started_event.set()
            while not self._stop_event.wait(self.poll_s):
                for slot in self.slots:
                    self._check(slot)
        except Exception:  # noqa: BLE001 - the supervisor must never die silently
            log.exception("worker supervisor failed")
        finally:
            self.started_event.set()
            self._stop_all()

    def _start(self, slot: Slot) -> None:
        try:
            slot.proc = self.spawn(slot.kind)
            slot.start_at = 0.0
            log.info("worker %s started (pid %d)", slot.name, slot.proc.pid)
        except OSError as exc:
            log.error("could not start worker %s: %s", slot.name, exc)
            slot.proc = None
            self._schedule(slot, time.monotonic())

    def _schedule(self, slot: Slot, now: float) -> None:
        """Book the next start of a stopped worker, or give up when it restarted too often."""
        while slot.restarts and now - slot.restarts[0] > self.window_s:
            slot.restarts.popleft()
        if len(slot.restarts) >= self.max_restarts:
            slot.given_up = True
            log.error("worker %s restarted %d times in %.0fs; not restarting it again (readyz reports the "
                      "missing worker; restart cnnviz serve or attach a worker by hand)", slot.name,
                      len(slot.restarts), self.window_s)
            return
        delay = min(self.max_delay_s, self.base_delay_s * 2 ** len(slot.restarts))
        slot.restarts.append(now)
        slot.start_at = now + delay
        log.warning("restarting worker %s in %.1fs (restart %d in the last %.0fs)", slot.name, delay,
                    len(slot.restarts), self.window_s)

    def _check(self, slot: Slot) -> None:
        if slot.given_up:
            return
        now = time.monotonic()
        if slot.proc is not None:
            code = slot.proc.poll()
            if code is None:
                return
            log.warning("worker %s (pid %d) %s", slot.name, slot.proc.pid, describe_exit(code))
            slot.proc = None
            self._schedule(slot, now)
        elif slot.start_at and now >= slot.start_at:
            self._start(slot)

    # --- stopping -------------------------------------------------------------------------
    def stop(self, timeout_s: float | None = None) -> None:
        """Stop every worker (SIGTERM: each finishes or settles its job), then the thread."""
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout_s if timeout_s is not None else self.grace_s + 10)

    def _stop_all(self) -> None:
        procs = [(s.name, s.proc) for s in self.slots if s.proc is not None and s.proc.poll() is None]
        for _, proc in procs:
            proc.terminate()
        deadline = time.monotonic() + self.grace_s
        for name, proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker %s did not stop in %.0fs; killing it", name, self.grace_s)
                proc.kill()
                proc.wait(5)
        if procs:
            log.info("stopped %d worker(s)", len(procs))

    def pids(self) -> dict[str, int]:
        """The running workers' process ids by slot name."""
        return {s.name: s.proc.pid for s in self.slots if s.proc is not None and s.proc.poll() is None}
