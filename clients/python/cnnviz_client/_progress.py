"""A dependency-free progress bar for ``Job.wait(progress=True)``, drawn on stderr.

On a terminal it redraws one line in place; elsewhere (a log file, CI) it writes a line only when
the job advances by a tenth or changes stage, so logs stay short.
"""

from __future__ import annotations

import sys
from typing import TextIO

from .types import JobStatus

__all__ = ["ProgressBar"]


class ProgressBar:
    def __init__(self, label: str = "", stream: TextIO | None = None, width: int = 30) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.label = label
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_key: tuple[str, str, int] | None = None
        self._drawn = False

    def line(self, status: JobStatus) -> str:
        p = status.progress
        frac = 1.0 if status.succeeded else max(0.0, min(1.0, p.fraction or (p.step / p.total if p.total else 0.0)))
        filled = int(round(frac * self.width))
        bar = "#" * filled + "." * (self.width - filled)
        parts = [self.label or status.id, f"[{bar}]", f"{frac * 100:3.0f}%"]
        if p.total:
            parts.append(f"{p.step}/{p.total}")
        parts.append(status.status if status.status != "running" else (p.stage or "running"))
        if status.status == "queued" and status.queue_position is not None:
            parts.append(f"(position {status.queue_position})")
        if p.objective is not None:
            parts.append(f"objective {p.objective:.4g}")
        return " ".join(parts)

    def update(self, status: JobStatus) -> None:
        text = self.line(status)
        if self.tty:
            self.stream.write("\r\x1b[K" + text)
            self._drawn = True
        else:
            p = status.progress
            tenth = int((p.fraction or 0.0) * 10)
            key = (status.status, p.stage, tenth)
            if key == self._last_key:
                return
            self._last_key = key
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
        self._drawn = False

    def __call__(self, status: JobStatus) -> None:
        self.update(status)
        if status.done:
            self.close()
