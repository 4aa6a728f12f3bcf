"""Domain errors: every failure a client must hear about, without any HTTP type.

Each class names a kind of failure (the resource is missing, the request is invalid, a limit
is exceeded...); each instance carries a stable ``slug`` (the problem type clients switch on), a
``title``, an optional ``detail`` and extra members (limits, valid choices). The service maps each
class to its HTTP status in one table (``service.errors``); workers record the slug on the job.
"""

from __future__ import annotations

from typing import Any

from cnnviz.errors import EngineError


class DomainError(Exception):
    """Base: a failure the caller caused or must know about."""

    def __init__(self, slug: str, title: str, detail: str | None = None, *, retry_after: float | None = None,
                 **extra: Any) -> None:
        super().__init__(detail or title)
        self.slug = slug
        self.title = title
        self.detail = detail
        self.retry_after = retry_after
        self.extra = extra


class BadInput(DomainError):
    """The request body cannot be read at all (broken image, multipart or JSON)."""


class Invalid(DomainError):
    """The request is readable but asks for something undefined (bad parameter, layer, count)."""


class NotFound(DomainError):
    """The named thing (model, method, job, collection, trained network) does not exist for this caller."""


class Conflict(DomainError):
    """The thing exists but is not in a state that allows this (job not finished, training running)."""


class TimedOut(DomainError):
    """The client took too long (a stalled request body)."""


class Gone(DomainError):
    """It existed and has expired or was deleted."""


class TooLarge(DomainError):
    """A body, image, pixel count or item count is over a limit."""


class Unsupported(DomainError):
    """A media type or image format the service does not read."""


class TooMany(DomainError):
    """Too many jobs in flight for this caller."""


class Unavailable(DomainError):
    """A part the request needs (Redis, a model, compute slots) is not available now; retry later."""


class Unauthorized(DomainError):
    """No valid API key."""


class NotAcceptable(DomainError):
    """The answer cannot be given in the media type asked for."""


def from_engine(exc: EngineError, title: str = "The request cannot be computed as asked") -> DomainError:
    """An engine error as a domain error: unknown methods are missing things, the rest invalid requests."""
    extra: dict[str, Any] = dict(exc.extra)
    if exc.choices is not None:
        extra["choices"] = exc.choices
    cls = NotFound if exc.slug == "unknown-method" else Invalid
    return cls(exc.slug, title, str(exc), **extra)


def jobs_unavailable(detail: str = "The job system (Redis) is unreachable; try again shortly.") -> Unavailable:
    return Unavailable("jobs-unavailable", "Jobs are unavailable", detail, retry_after=5)


def inline_needs_store() -> Invalid:
    """``output.inline: false`` where pictures cannot be stored: they are stored in the job store (Redis)."""
    return Invalid("inline-needs-store", "output.inline false needs the job store (Redis), which this deployment "
                   "does not have", "ask for inline pictures (the default output.inline true)")
