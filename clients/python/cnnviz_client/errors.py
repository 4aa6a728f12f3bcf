"""Exceptions of the cnnviz client.

Every answer the service refuses is an RFC 9457 ``application/problem+json`` document with a
stable ``type`` URI per failure; :class:`ProblemError` carries its members so callers can switch
on ``type`` (or :attr:`ProblemError.slug`) instead of parsing messages.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

    from .types import JobStatus

__all__ = ["CnnvizError", "ImageFormatError", "JobFailedError", "JobTimeoutError", "ProblemError"]

STANDARD_MEMBERS = ("type", "title", "status", "detail", "instance")


class CnnvizError(Exception):
    """Base class of every error this client raises on purpose."""


class ImageFormatError(CnnvizError, ValueError):
    """A picture cannot be saved in the format its file name asks for (converting needs Pillow)."""


class ProblemError(CnnvizError):
    """A problem answer (4xx/5xx) from the service.

    ``extra`` holds the members beyond the standard five (e.g. ``choices`` of an unknown method,
    ``errors`` of a validation failure, ``limit``); they are also readable as attributes and items.
    """

    def __init__(self, status: int, type: str = "about:blank", title: str = "", detail: str | None = None,
                 instance: str | None = None, extra: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.type = type
        self.title = title or f"HTTP {status}"
        self.detail = detail
        self.instance = instance
        self.extra: dict[str, Any] = dict(extra or {})
        self.headers: dict[str, str] = dict(headers or {})
        super().__init__(str(self))

    def __reduce__(self) -> tuple[Any, ...]:  # picklable (multiprocessing, task queues) despite the custom __init__
        return (type(self), (self.status, self.type, self.title, self.detail, self.instance, self.extra, self.headers))

    @property
    def slug(self) -> str:
        """The last path segment of ``type`` (``unknown-method`` of ``.../problems/unknown-method``)."""
        return self.type.rstrip("/").rsplit("/", 1)[-1]

    @property
    def retry_after(self) -> str | None:
        return self.headers.get("retry-after")

    def __str__(self) -> str:
        return f"{self.title}: {self.detail}" if self.detail else self.title

    def __repr__(self) -> str:
        return f"ProblemError(status={self.status}, type={self.type!r}, title={self.title!r}, detail={self.detail!r})"

    def __getattr__(self, name: str) -> Any:
        # Only called for names not found normally: the problem's extension members.
        extra = self.__dict__.get("extra") or {}
        if name in extra:
            return extra[name]
        raise AttributeError(name)

    def __getitem__(self, name: str) -> Any:
        return self.to_dict()[name]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "title": self.title, "status": self.status}
        if self.detail is not None:
            out["detail"] = self.detail
        if self.instance is not None:
            out["instance"] = self.instance
        out.update(self.extra)
        return out

    @classmethod
    def from_response(cls, response: httpx.Response) -> ProblemError:
        """Parse a problem document; anything else (a proxy's HTML page) becomes an ``about:blank`` problem."""
        headers = {k.lower(): v for k, v in response.headers.items()}
        body: Any = None
        ctype = headers.get("content-type", "")
        if "json" in ctype:
            try:
                body = response.json()
            except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
                body = None
        if isinstance(body, dict) and ("title" in body or "type" in body):
            extra = {k: v for k, v in body.items() if k not in STANDARD_MEMBERS}
            status = body.get("status") if isinstance(body.get("status"), int) else response.status_code
            return cls(status, str(body.get("type") or "about:blank"), str(body.get("title") or ""),
                       body.get("detail"), body.get("instance"), extra, headers)
        text = response.text.strip() if response.content else ""
        return cls(response.status_code, "about:blank", response.reason_phrase or f"HTTP {response.status_code}",
                   text[:500] or None, None, {}, headers)


class JobFailedError(CnnvizError):
    """A job ended ``failed`` or ``canceled`` where a result was expected (e.g. an explain hand-off)."""

    def __init__(self, status: JobStatus) -> None:
        self.job = status
        err = status.error
        self.error_type = err.type if err else status.status
        self.detail = err.detail if err else ""
        super().__init__(f"job {status.id} {status.status}" + (f": {self.error_type}: {self.detail}" if err else ""))


class JobTimeoutError(CnnvizError, TimeoutError):
    """``Job.wait`` ran out of time; the job itself goes on (cancel it if it is not wanted)."""

    def __init__(self, status: JobStatus, timeout: float) -> None:
        self.job = status
        super().__init__(f"job {status.id} still {status.status} after {timeout:g}s")
