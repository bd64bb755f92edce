"""API keys: creation, hashing, and the check every ``/v1/orgs/{org}`` route passes.

A key looks like ``okr_<key id>_<secret>``. Only its SHA-256 is stored; the key is
shown once, when it is created. Each request reads the key's record in the
organisation its path names (one round trip, together with the rate counter), so a
revoked key stops working at once: there is no cache to go stale.

Decisions, in order: no or unknown key -> 401; a key of another organisation
-> 404 (the organisation's existence is not revealed); over the key's rate limit
-> 429 with Retry-After; missing scope -> 403. ``admin`` holds every scope.

The check runs in one place, :func:`auth_middleware`, after routing and before
the handler, for every route whose handler (or controller) sets ``opt={SCOPE_OPT: ...}``
(``None``: any key of the organisation). A handler may name one item of the
published run to read in the same round trip
(``opt={PUBLISHED_READ_OPT: (part, path parameter)}``); it finds the result with
:func:`prefetched`.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.types import ASGIApp, Receive, Scope, Send

from service.keys import CYCLE_PATTERN, ORG_PATTERN
from service.problems import ProblemError
from service.schemas import SCOPES
from service.settings import Settings
from service.store import ApiKeyRecord, PublishedItem, PublishedRead, ResultPart, Store

__all__ = [
    "PUBLISHED_READ_OPT",
    "SCOPE_OPT",
    "auth_middleware",
    "hash_key",
    "new_api_key",
    "prefetched",
]

#: Route handlers name the scope they need in ``opt={SCOPE_OPT: "grades:write"}``
#: (a tuple: any of them; ``None``: any key of the organisation).
SCOPE_OPT = "scope"
#: ``opt={PUBLISHED_READ_OPT: ("owners", "owner_id")}``: read that item of the published
#: run with the key check (only when the request has no query string).
PUBLISHED_READ_OPT = "published_read"
_PREFIX = "okr_"
_READ = "okrcal.read"  # scope state: (what was read, what it gave)


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


def _bearer(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The key of an ``Authorization: Bearer`` header; 401 without one."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, key = value.decode("latin-1").partition(" ")
            key = key.strip()
            if scheme.lower() == "bearer" and key:
                return key
            break
    raise _unauthorized("send an API key as 'Authorization: Bearer <key>'")


async def _check(
    store: Store,
    settings: Settings,
    scope: Scope,
    wanted: tuple[str, ...] | None,
    read: PublishedRead | None,
) -> None:
    """Every decision on a request's key, in the documented order; raises the problem."""
    key = _bearer(scope["headers"])
    key_hash = hash_key(key)
    org = scope["path_params"].get("org")
    second = int(time.time())
    record: ApiKeyRecord | None = None
    count = 0
    key_id = key[len(_PREFIX) :].partition("_")[0] if key.startswith(_PREFIX) else ""
    if org is not None and key_id and ORG_PATTERN.match(org):
        check = await store.authorize(org, key_id, key_hash, second, read)
        record, count = check.record, check.count
        if record is not None and read is not None:
            scope["state"][_READ] = (read, check.read)  # check.read is set when read is
    if record is None:
        # Not a key of this organisation: tell a key of another one (404) from none (401).
        # (authenticate checks the record found by hash in its own organisation.)
        record, count = await store.authenticate(key_hash, second)
        if record is None:
            raise _unauthorized("unknown or revoked API key")
        if org is not None and record.org != org:
            raise ProblemError(404, f"no organisation {org!r}")
    limit = record.rate_limit or settings.rate_limit
    if count > limit:
        raise ProblemError(
            429, f"rate limit of {limit} requests per second exceeded", headers={"Retry-After": "1"}
        )
    if (
        wanted is not None
        and "admin" not in record.scopes
        and not any(s in record.scopes for s in wanted)
    ):
        raise ProblemError(403, f"this API key lacks the scope {' or '.join(wanted)!r}")
    scope["state"]["api_key"] = record


def _wanted(handler: BaseRouteHandler) -> tuple[str, ...] | None:
    """The scopes a handler accepts (any one of them), or None for any key."""
    scope = handler.opt.get(SCOPE_OPT)
    return None if scope is None else scope if isinstance(scope, tuple) else (scope,)


class _Plan:
    """What the middleware does for one route handler, worked out on its first request."""

    __slots__ = ("needs_key", "read", "wanted")

    def __init__(self, handler: BaseRouteHandler) -> None:
        self.needs_key = SCOPE_OPT in handler.opt
        self.wanted = _wanted(handler)
        self.read: tuple[ResultPart, str] | None = handler.opt.get(PUBLISHED_READ_OPT)


def auth_middleware(store: Store, settings: Settings) -> Callable[[ASGIApp], ASGIApp]:
    """ASGI middleware checking the key of every route that needs one (see the module doc)."""
    plans: dict[int, _Plan] = {}

    def wrap(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            handler = scope.get("route_handler")
            if handler is not None:
                plan = plans.get(id(handler))
                if plan is None:
                    plan = plans[id(handler)] = _Plan(handler)
                if plan.needs_key:
                    read: PublishedRead | None = None
                    if plan.read is not None and not scope.get("query_string"):
                        params = scope["path_params"]
                        cycle = params.get("cycle")
                        if isinstance(cycle, str) and CYCLE_PATTERN.match(cycle):
                            read = (cycle, plan.read[0], params[plan.read[1]])
                    await _check(store, settings, scope, plan.wanted, read)
            await app(scope, receive, send)

        return middleware

    return wrap


def prefetched(
    connection: ASGIConnection[Any, Any, Any, Any], read: PublishedRead
) -> PublishedItem | None:
    """What the key check of this request read for ``read``; None if it read nothing."""
    found: tuple[PublishedRead, PublishedItem] | None = connection.scope["state"].get(_READ)
    return found[1] if found is not None and found[0] == read else None
