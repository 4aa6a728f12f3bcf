"""API keys: ``X-API-Key`` checked on every /v1 route; jobs are stamped with the key's hash.

With no keys configured the service is open and every caller is the same owner, ``public``.
Only a SHA-256 of a key is ever stored or compared (constant time), so Redis never holds a usable
key and a job's owner cannot be turned back into one.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from fastapi import Request, Security
from fastapi.security import APIKeyHeader

from core.errors import Unauthorized

HEADER = "X-API-Key"
PUBLIC = "public"
_scheme = APIKeyHeader(name=HEADER, auto_error=False, description="API key, when the service has keys configured")


@dataclass(frozen=True)
class Principal:
    """Who is calling: ``owner`` is the hash jobs are stamped with."""

    owner: str
    authenticated: bool


def key_hash(key: str) -> str:
    return hashlib.sha256(b"cnnviz-api-key:" + key.encode("utf-8")).hexdigest()[:40]


def _known_hashes(request: Request) -> list[str]:
    cached = getattr(request.app.state, "api_key_hashes", None)
    if cached is None:
        cached = [key_hash(k) for k in request.app.state.settings.api_keys if k]
        request.app.state.api_key_hashes = cached
    return cached


def authenticate(request: Request, key: str | None) -> Principal:
    known = _known_hashes(request)
    if not known:
        return Principal(PUBLIC, False)
    if key:
        h = key_hash(key)
        if any(hmac.compare_digest(h, k) for k in known):
            return Principal(h, True)
    raise Unauthorized("unauthorized", "A valid API key is required",
                       f"Send your key in the {HEADER} header.", headers={"WWW-Authenticate": "ApiKey"})


async def require_api_key(request: Request, key: str | None = Security(_scheme)) -> Principal:
    """Dependency for every /v1 route; stores the principal on ``request.state`` for later use."""
    principal = authenticate(request, key)
    request.state.principal = principal
    return principal


def current_principal(request: Request) -> Principal:
    """The caller as authenticated by the router dependency (or now, if it did not run)."""
    p = getattr(request.state, "principal", None)
    return p if isinstance(p, Principal) else authenticate(request, request.headers.get(HEADER))
