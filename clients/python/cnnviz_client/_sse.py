"""Server-sent events of a job: a text/event-stream parser and the reconnect policy.

Both clients share these; only the loop that reads lines differs (sync or async). The service
ends one stream after a few minutes and may drop it; the cursor remembers the last event id so
the next connection sends ``Last-Event-ID`` and gets only what came after, as the SSE spec intends.
"""

from __future__ import annotations

import json
import time

import httpx

from ._core import Call, RetryPolicy, seg
from .errors import CnnvizError, ProblemError
from .types import Event

__all__ = ["EventCursor", "SSEDecoder"]


class SSEDecoder:
    """Incremental parser of ``text/event-stream`` lines (WHATWG rules: data, event, id, retry, comments)."""

    def __init__(self, last_id: str | None = None) -> None:
        self.last_id = last_id
        self.retry_ms: int | None = None
        self._data: list[str] = []
        self._event: str | None = None

    def feed(self, line: str) -> Event | None:
        """One line without its newline; returns an event when a blank line completes one."""
        if line == "":
            data, event = self._data, self._event
            self._data, self._event = [], None
            if not data:
                return None
            text = "\n".join(data)
            try:
                value = json.loads(text)
            except ValueError:
                value = text
            return Event(event=event or "message", data=value, id=self.last_id)
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self.last_id = value or None
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None


class EventCursor:
    """Where a job's event stream is, and whether (and when) to reconnect."""

    def __init__(self, job_id: str, last_event_id: str | None, retry: RetryPolicy) -> None:
        self.job_id = job_id
        self.decoder = SSEDecoder(last_event_id)
        self.retry = retry
        self.failures = 0
        self.done = False
        self._connected_at = 0.0

    @property
    def last_id(self) -> str | None:
        return self.decoder.last_id

    def call(self) -> Call:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.last_id:
            headers["Last-Event-ID"] = self.last_id
        self._connected_at = time.monotonic()
        self.decoder = SSEDecoder(self.last_id)  # a partial event of a dropped stream is discarded
        return Call("GET", f"/v1/jobs/{seg(self.job_id)}/events", headers=headers)

    def feed(self, line: str) -> Event | None:
        ev = self.decoder.feed(line)
        if ev is not None:
            self.failures = 0
            if ev.event == "done":
                self.done = True
        return ev

    def _reconnect_delay(self) -> float:
        if self.decoder.retry_ms is not None:
            return self.decoder.retry_ms / 1000.0
        return self.retry.delay(max(self.failures, 1))

    def after_status(self, resp: httpx.Response) -> float:
        """A non-200 answer to the stream request: retry 503/429 (bounded), else raise its problem."""
        if resp.status_code in self.retry.statuses and self.failures + 1 < self.retry.attempts:
            self.failures += 1
            return self.retry.delay(self.failures, resp.headers.get("retry-after"))
        raise ProblemError.from_response(resp)

    def after_drop(self, exc: Exception) -> float:
        """The connection failed or broke mid-stream: reconnect after the server's retry delay (bounded)."""
        self.failures += 1
        if self.failures >= self.retry.attempts:
            raise exc
        return self._reconnect_delay()

    def after_end(self) -> float:
        """The server ended the stream before ``done`` (its per-stream time cap): resume where it stopped.

        Only streams that end at once count as failures, so a long quiet job is followed for as
        long as it runs while a server that keeps hanging up is not retried forever.
        """
        if time.monotonic() - self._connected_at < 1.0:
            self.failures += 1
            if self.failures >= self.retry.attempts:
                raise CnnvizError(f"the event stream of job {self.job_id} keeps ending before the job is done")
        return self._reconnect_delay()
