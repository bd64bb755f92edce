"""Errors as RFC 9457 problem details, mapped in one place.

Handlers raise :class:`ProblemError` (or let a domain error propagate); the map in
:func:`exception_handlers` turns every exception into ``application/problem+json``::

    ProblemError                      status it carries, with every invalid row listed
    calibrate.CalibrateError          400 (InputError names row and field)
    anchors.AnchorError               400 (ScaleError, CatalogueError, EvidenceError)
    litestar ValidationException      400
    litestar HTTPException            its status (404, 405, 413, ...)
    RecursionError                    400: JSON or TOML nested too deeply to decode
    redis ConnectionError/Timeout     503 with Retry-After; the pool reconnects by itself
    anything else                     500, logged, without internals in the body
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec
import redis.exceptions
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from anchors import AnchorError, CatalogueError, EvidenceError
from calibrate import CalibrateError, InputError
from service.schemas import FieldProblem

__all__ = ["PROBLEM_JSON", "ProblemError", "exception_handlers", "problem_response"]

PROBLEM_JSON = "application/problem+json"
_log = logging.getLogger("okrcal.service")

_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Request body too large",
    415: "Unsupported media type",
    422: "Unprocessable request",
    429: "Too many requests",
    500: "Internal server error",
    503: "Service unavailable",
}


class ProblemError(Exception):
    """An HTTP error with a problem-details body; ``errors`` lists every invalid value."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        errors: Sequence[FieldProblem] = (),
        headers: Mapping[str, str] | None = None,
        title: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = list(errors)
        self.headers = dict(headers or {})
        self.title = title or _TITLES.get(status, "Error")


class _Problem(msgspec.Struct, kw_only=True, omit_defaults=True):
    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldProblem] = msgspec.field(default_factory=list)


_encode = msgspec.json.Encoder().encode


def problem_response(
    status: int,
    detail: str,
    *,
    errors: Sequence[FieldProblem] = (),
    headers: Mapping[str, str] | None = None,
    title: str | None = None,
    instance: str | None = None,
) -> Response[bytes]:
    """A problem-details response."""
    body = _Problem(
        title=title or _TITLES.get(status, "Error"),
        status=status,
        detail=detail,
        instance=instance,
        errors=list(errors),
    )
    return Response(
        _encode(body), status_code=status, media_type=PROBLEM_JSON, headers=dict(headers or {})
    )


def _problem(request: Request[Any, Any, Any], exc: ProblemError) -> Response[bytes]:
    return problem_response(
        exc.status,
        exc.detail,
        errors=exc.errors,
        headers=exc.headers,
        title=exc.title,
        instance=request.url.path,
    )


def _calibrate(request: Request[Any, Any, Any], exc: CalibrateError) -> Response[bytes]:
    errors: list[FieldProblem] = []
    if isinstance(exc, InputError):
        errors.append(FieldProblem(problem=exc.problem, field=exc.field, row=exc.row))
    return problem_response(400, str(exc), errors=errors, instance=request.url.path)


def _anchors(request: Request[Any, Any, Any], exc: AnchorError) -> Response[bytes]:
    errors: list[FieldProblem] = []
    if isinstance(exc, CatalogueError):
        errors.append(FieldProblem(problem=exc.problem, field=exc.entry))
    elif isinstance(exc, EvidenceError):
        errors.append(FieldProblem(problem=f"KR {exc.kr_id!r}: {exc.problem}", field=exc.field))
    return problem_response(400, str(exc), errors=errors, instance=request.url.path)


def _validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[bytes]:
    errors: list[FieldProblem] = []
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            errors.append(
                FieldProblem(problem=str(item.get("message", "invalid")), field=item.get("key"))
            )
    return problem_response(400, exc.detail, errors=errors, instance=request.url.path)


def _http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    return problem_response(
        exc.status_code, exc.detail, headers=exc.headers, instance=request.url.path
    )


def _too_deep(request: Request[Any, Any, Any], _: RecursionError) -> Response[bytes]:
    # msgspec (and the TOML reader) recurse per nesting level; a body nested thousands
    # deep exhausts the stack before any validation can name a field.
    return problem_response(
        400, "the body is nested too deeply to decode", instance=request.url.path
    )


def _redis_down(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    _log.warning("redis unavailable: %s", exc)
    return problem_response(
        503,
        "the data store is unreachable; retry shortly",
        headers={"Retry-After": "1"},
        instance=request.url.path,
    )


def _internal(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    _log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return problem_response(500, "internal error", instance=request.url.path)


Handler = Callable[[Request[Any, Any, Any], Any], Response[bytes]]


def exception_handlers() -> dict[type[Exception] | int, Handler]:
    """The one map from exceptions to problem responses (``Litestar(exception_handlers=)``)."""
    return {
        ProblemError: _problem,
        CalibrateError: _calibrate,
        AnchorError: _anchors,
        ValidationException: _validation,
        HTTPException: _http,
        RecursionError: _too_deep,
        redis.exceptions.ConnectionError: _redis_down,
        redis.exceptions.TimeoutError: _redis_down,
        redis.exceptions.BusyLoadingError: _redis_down,
        Exception: _internal,
    }
