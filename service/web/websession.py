"""Signing in to the web pages: server-side sessions in Redis, CSRF tokens, scope checks.

Signing in with an API key creates a session: a random id goes to the browser in an
HttpOnly, SameSite=Strict cookie; Redis keeps, under the SHA-256 of that id, only the
SHA-256 of the API key (the form the key store already uses), the organisation and a
CSRF token. The key itself is never stored or sent back. Every page request looks the
key up again (:meth:`Store.authenticate`), so a revoked key ends its web sessions at
once and rate limits apply as for the API.

CSRF: every form carries a token. Signed in, it is the session's own token
(synchronizer pattern); on the sign-in form, which has no session yet, a random token
is set both in a SameSite=Strict cookie and in the form (double submit). A request
whose ``Origin`` header names another origin is refused as well.

Failures are exceptions that the web router turns into pages: :class:`NotSignedInError`
(a redirect to the sign-in page) and :class:`PageError` (an error page, 403 for a
missing scope).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterable
from typing import Any

import msgspec
from litestar import Request

from service import keys as K  # noqa: N812 - read as "keys"
from service.auth import hash_key
from service.settings import Settings
from service.store import ApiKeyRecord, Store

__all__ = [
    "COOKIE",
    "CSRF_COOKIE",
    "CSRF_FIELD",
    "SESSION_TTL_SECONDS",
    "WEB_SCOPE_OPT",
    "NotSignedInError",
    "PageError",
    "WebUser",
    "check_csrf",
    "check_same_origin",
    "end_session",
    "session_key",
    "sign_in",
    "signed_in_user",
]

COOKIE = "okrcal_session"
CSRF_COOKIE = "okrcal_signin_csrf"
CSRF_FIELD = "csrf_token"
#: Sessions end after this long without a page view.
SESSION_TTL_SECONDS = 8 * 3600
#: Page handlers name the scopes that may see them: ``opt={WEB_SCOPE_OPT: ("scores:read",)}``.
WEB_SCOPE_OPT = "web_scope"


class NotSignedInError(Exception):
    """No valid session: the browser is sent to the sign-in page, then back to ``next_path``."""

    def __init__(self, next_path: str, message: str | None = None) -> None:
        super().__init__(message or "sign in to continue")
        self.next_path = next_path
        self.message = message


class PageError(Exception):
    """A page that cannot be shown: the status and a sentence for the reader."""

    def __init__(self, status: int, message: str, user: WebUser | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        #: Who is signed in, when known (the error page then offers to sign out).
        self.user = user


class _Stored(msgspec.Struct, frozen=True, kw_only=True):
    key_hash: str
    org: str
    csrf: str
    created_us: int


class WebUser(msgspec.Struct, frozen=True, kw_only=True):
    """The signed-in key: its organisation, id, name, scopes and the session's CSRF token."""

    org: str
    key_id: str
    key_name: str | None
    scopes: tuple[str, ...]
    csrf: str
    record: ApiKeyRecord

    def can(self, *scopes: str) -> bool:
        """True when the key holds any of ``scopes`` (``admin`` holds them all)."""
        return "admin" in self.scopes or any(s in self.scopes for s in scopes)


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(_Stored).decode


def session_key(session_id: str) -> str:
    """Redis key of a web session, by the SHA-256 of its id (a dump reveals no live cookie)."""
    return K.web_session(hashlib.sha256(session_id.encode()).hexdigest())


def _redis(store: Store) -> Any:
    client = getattr(store, "redis", None)
    if client is None:
        raise TypeError("web sessions need the Redis store")
    return client


async def sign_in(store: Store, settings: Settings, api_key: str) -> tuple[str, WebUser]:
    """Check ``api_key`` and open a session; the new session id and who signed in.

    Raises :class:`PageError` (401) for an unknown or revoked key, 429 over its rate.
    """
    key_hash = hash_key(api_key.strip())
    record, count = await store.authenticate(key_hash, int(time.time()))
    if record is None:
        raise PageError(401, "unknown or revoked API key")
    if count > (record.rate_limit or settings.rate_limit):
        raise PageError(429, "this API key is over its rate limit; try again in a second")
    session_id = secrets.token_urlsafe(32)
    stored = _Stored(
        key_hash=key_hash,
        org=record.org,
        csrf=secrets.token_urlsafe(32),
        created_us=time.time_ns() // 1000,
    )
    await _redis(store).set(session_key(session_id), _encode(stored), ex=SESSION_TTL_SECONDS)
    return session_id, _user(record, stored)


def _user(record: ApiKeyRecord, stored: _Stored) -> WebUser:
    return WebUser(
        org=record.org,
        key_id=record.key_id,
        key_name=record.name,
        scopes=tuple(record.scopes),
        csrf=stored.csrf,
        record=record,
    )


async def end_session(store: Store, session_id: str) -> None:
    """Forget a session (sign-out)."""
    await _redis(store).delete(session_key(session_id))


async def signed_in_user(request: Request[Any, Any, Any], scopes: Iterable[str] | None) -> WebUser:
    """The user of the request's session, holding one of ``scopes`` (None: any key).

    No cookie, an expired session or a revoked key: :class:`NotSignedInError`.
    A key without the scope: :class:`PageError` 403.
    """
    store: Store = request.app.state.store
    settings: Settings = request.app.state.settings
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    session_id = request.cookies.get(COOKIE)
    if not session_id:
        raise NotSignedInError(here)
    client = _redis(store)
    key = session_key(session_id)
    raw = await client.get(key)
    if raw is None:
        raise NotSignedInError(here, "your session has ended; sign in again")
    stored = _decode(raw)
    record, count = await store.authenticate(stored.key_hash, int(time.time()))
    if record is None or record.org != stored.org:
        await client.delete(key)
        raise NotSignedInError(here, "the API key of this session was revoked; sign in again")
    if count > (record.rate_limit or settings.rate_limit):
        raise PageError(429, "this API key is over its rate limit; try again in a second")
    await client.expire(key, SESSION_TTL_SECONDS)  # sliding expiry: active sessions stay
    user = _user(record, stored)
    wanted = tuple(scopes or ())
    if wanted and not user.can(*wanted):
        raise PageError(
            403,
            f"this API key lacks the scope {' or '.join(repr(s) for s in wanted)} "
            "needed for this page",
            user,
        )
    return user


def check_same_origin(request: Request[Any, Any, Any]) -> None:
    """Refuse (403) a form posted from another origin, when the browser says where from."""
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return
    own = f"{request.url.scheme}://{request.url.netloc}"
    if origin != own:
        raise PageError(403, "this form was sent from another site and was refused")


def check_csrf(request: Request[Any, Any, Any], expected: str | None, sent: str | None) -> None:
    """Refuse (403) a form whose CSRF token is missing or wrong."""
    check_same_origin(request)
    if not expected or not sent or not secrets.compare_digest(expected, sent):
        raise PageError(
            403, "the form's security token is missing or out of date; reload the page and retry"
        )
