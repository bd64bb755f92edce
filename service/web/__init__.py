"""Web pages for facilitators and HR, served by the same litestar app under ``/ui``.

Rendered on the server (Jinja2 templates in ``templates/``), figures drawn by
matplotlib (:mod:`service.web.plots`), every asset shipped in ``static/``: the pages
work offline. Registered in :func:`service.app.create_app` as one plugin::

    Litestar(..., plugins=[WebPlugin()])

Pages (the scope each needs; ``admin`` holds all)::

    /ui/signin                      paste an API key -> session cookie
    /ui/cycles                      the organisation's cycles         any read scope
    /ui/cycles/{cycle}              raw vs calibrated, variance, runs scores:read | calibration:run
    /ui/cycles/{cycle}/graders      caterpillar plot and table        scores:read
    /ui/cycles/{cycle}/krs/{kr}     evidence, anchors, grades         scores:read
    /ui/cycles/{cycle}/plots/{name}.{png,svg}   figure downloads
    /ui/cycles/{cycle}/sessions     sessions; open one                scores:read | calibration:run
    /ui/cycles/{cycle}/sessions/{id}  agenda, what-if, adjust, lock, audit; writes: calibration:run
    /ui/drift                       leniency across cycles, drifting  hr:read
    /ui/drift/plots/drift.{png,svg}  the drift figure

Errors on these routes are pages, not problem+json: no session redirects to the
sign-in page, a missing scope is a 403 page.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis.exceptions
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from litestar import Request, Response, Router
from litestar.config.app import AppConfig
from litestar.exceptions import HTTPException
from litestar.plugins import InitPluginProtocol
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from anchors import AnchorError
from calibrate import CalibrateError
from service.problems import ProblemError
from service.web.drift_pages import DriftPages
from service.web.pages import PAGE_PREFIX, CyclePages, SignInPages, page
from service.web.session_pages import SessionPages
from service.web.websession import NotSignedInError, PageError, WebUser

__all__ = ["PAGE_PREFIX", "WebPlugin", "web_router"]

_log = logging.getLogger("okrcal.web")
_HERE = Path(__file__).parent

_TITLES = {
    400: "Bad request",
    401: "Not signed in",
    403: "Not allowed",
    404: "Not found",
    409: "Conflict",
    429: "Too many requests",
    500: "Something went wrong",
    503: "Service unavailable",
}


def _error_page(status: int, message: str, user: WebUser | None = None) -> Template:
    return page(
        user,
        "error.html",
        status_code=status,
        status=status,
        title=_TITLES.get(status, "Error"),
        message=message,
    )


def _sign_in(_: Request[Any, Any, Any], exc: NotSignedInError) -> Response[Any]:
    target = f"{PAGE_PREFIX}/signin?next={quote(exc.next_path, safe='')}"
    return Redirect(target, status_code=303)


def _page_error(_: Request[Any, Any, Any], exc: PageError) -> Template:
    return _error_page(exc.status, exc.message, exc.user)


def _problem(_: Request[Any, Any, Any], exc: ProblemError) -> Template:
    return _error_page(exc.status, exc.detail)


def _bad_input(_: Request[Any, Any, Any], exc: Exception) -> Template:
    return _error_page(400, str(exc))


def _http(_: Request[Any, Any, Any], exc: HTTPException) -> Template:
    return _error_page(exc.status_code, exc.detail)


def _redis_down(_: Request[Any, Any, Any], exc: Exception) -> Template:
    _log.warning("redis unavailable: %s", exc)
    return _error_page(503, "the data store is unreachable; retry shortly")


def _internal(request: Request[Any, Any, Any], exc: Exception) -> Template:
    _log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return _error_page(500, "internal error; it has been logged")


def web_router() -> Router:
    """The pages and their static assets, with errors shown as pages."""
    return Router(
        path="/",
        route_handlers=[
            SignInPages,
            CyclePages,
            SessionPages,
            DriftPages,
            create_static_files_router(
                path=f"{PAGE_PREFIX}/static",
                directories=[_HERE / "static"],
                cache_control=None,
                include_in_schema=True,
                tags=["web pages"],
            ),
        ],
        # Every exception the app maps to problem+json is mapped again here: handlers are
        # chosen by the exception's class first, so one missing type would answer JSON.
        exception_handlers={
            NotSignedInError: _sign_in,
            PageError: _page_error,
            ProblemError: _problem,
            CalibrateError: _bad_input,
            AnchorError: _bad_input,
            HTTPException: _http,
            redis.exceptions.ConnectionError: _redis_down,
            redis.exceptions.TimeoutError: _redis_down,
            redis.exceptions.BusyLoadingError: _redis_down,
            Exception: _internal,
        },
        # listed in the OpenAPI document like every route, as HTML pages
        tags=["web pages"],
    )


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(_HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    env.filters["pct"] = _pct
    return env


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


class WebPlugin(InitPluginProtocol):
    """Adds the web pages, the template engine and the static assets to an app."""

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        """Register the router and the Jinja2 engine."""
        app_config.route_handlers.append(web_router())
        app_config.template_config = TemplateConfig(
            instance=JinjaTemplateEngine.from_environment(_environment())
        )
        return app_config
