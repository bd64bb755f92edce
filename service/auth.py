"""API keys: creation, hashing, and the guard every ``/v1/orgs/{org}`` route passes.

A key looks like ``okr_<key id>_<secret>``. Only its SHA-256 is stored; the key is
shown once, when it is created. Each request looks the hash up in Redis (one round
trip, together with the rate counter), so a revoked key stops working at once:
there is no cache to go stale.

Decisions, in order: no or unknown key -> 401; a key of another organisation
-> 404 (the organisation's existence is not revealed); over the key's rate limit
-> 429 with Retry-After; missing scope -> 403. ``admin`` holds every scope.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from service.keys import ORG_PATTERN
from service.problems import ProblemError
from service.schemas import SCOPES
from service.settings import Settings
from service.store import ApiKeyRecord, Store

__all__ = ["SCOPE_OPT", "hash_key", "new_api_key", "require_scope"]

#: Route handlers name the scope they need in ``opt={SCOPE_OPT: "grades:write"}``.
SCOPE_OPT = "scope"
_PREFIX = "okr_"


def hash_key(key: str) -> str:
    """The stored form of a key: hex SHA-256 (keys are random, so no salt is needed)."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key(
    org: str,
    scopes: Iterable[str],
    *,
    name: str | None = None,
    rate_limit: int | None = None,
    now_us: int | None = None,
) -> tuple[str, ApiKeyRecord]:
    """A fresh key and the record to store for it. The key itself is not kept anywhere.

    >>> key, record = new_api_key("acme", ["scores:read"])
    >>> key.startswith("okr_") and record.key_hash == hash_key(key)
    True
    """
    if not ORG_PATTERN.match(org):
        raise ValueError(f"invalid organisation id {org!r}")
    wanted = list(dict.fromkeys(scopes))
    unknown = [s for s in wanted if s not in SCOPES]
    if unknown or not wanted:
        problem = f"unknown scope {unknown[0]!r}" if unknown else "a key needs at least one scope"
        raise ValueError(f"{problem}; scopes are {', '.join(SCOPES)}")
    if rate_limit is not None and rate_limit < 1:
        raise ValueError("rate_limit must be at least 1 request per second")
    key_id = secrets.token_hex(6)
    key = f"{_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    record = ApiKeyRecord(
        key_id=key_id,
        org=org,
        key_hash=hash_key(key),
        scopes=wanted,
        name=name,
        rate_limit=rate_limit,
        created_us=time.time_ns() // 1000 if now_us is None else now_us,
    )
    return key, record


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(401, detail, headers={"WWW-Authenticate": 'Bearer realm="okrcal"'})


async def require_scope(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Litestar guard: a valid key of the path's organisation holding the handler's scope."""
    header = connection.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise _unauthorized("send an API key as 'Authorization: Bearer <key>'")
    store: Store = connection.app.state.store
    settings: Settings = connection.app.state.settings
    record, count = await store.authenticate(hash_key(key), int(time.time()))
    if record is None:
        raise _unauthorized("unknown or revoked API key")
    org = connection.path_params.get("org")
    if org is not None and org != record.org:
        raise ProblemError(404, f"no organisation {org!r}")
    limit = record.rate_limit or settings.rate_limit
    if count > limit:
        raise ProblemError(
            429, f"rate limit of {limit} requests per second exceeded", headers={"Retry-After": "1"}
        )
    scope = handler.opt.get(SCOPE_OPT)
    if scope is not None:
        wanted = scope if isinstance(scope, tuple) else (scope,)
        if "admin" not in record.scopes and not any(s in record.scopes for s in wanted):
            raise ProblemError(403, f"this API key lacks the scope {' or '.join(wanted)!r}")
    connection.state.api_key = record
