"""The web pages' routes: sign-in, cycle overview, graders, KR detail and plot downloads.

Every page handler is a few lines: who is signed in (with the scope the page needs),
what to read (:mod:`service.web.data`), which figures (:mod:`service.web.plots`), which
template. Figures render in a worker thread; matplotlib is CPU-bound.
"""

from __future__ import annotations

import functools
import re
import secrets
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import anyio
import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.openapi.spec import (
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Schema,
)
from litestar.params import FromPath
from litestar.response import Redirect, Template
from markupsafe import Markup

from anchors import (
    EvidenceError,
    KeyResult,
    check_outcome,
    grade_evidence,
    infer_kr_type,
    level_index,
)
from calibrate import GraderEffect, KRScore
from calibrate.session import small_group_reason
from service import keys as K  # noqa: N812 - read as "keys"
from service.runs import load_org_catalogue
from service.store import Store
from service.web import data, plots
from service.web.websession import (
    COOKIE,
    CSRF_COOKIE,
    CSRF_FIELD,
    SESSION_TTL_SECONDS,
    NotSignedInError,
    PageError,
    WebUser,
    check_csrf,
    end_session,
    sign_in,
    signed_in_user,
)

__all__ = [
    "MIN_GRADERS",
    "PAGE_HEADERS",
    "PAGE_PREFIX",
    "CyclePages",
    "SignInPages",
    "download_operation",
    "inline_svg",
    "page",
    "plot_download",
    "plot_figure",
    "require",
]

#: Where the pages live.
PAGE_PREFIX = "/ui"
#: Fewer graders than this in a cycle and per-grader statistics are withheld (as in sessions).
MIN_GRADERS = 4
READ_SCOPES = ("scores:read", "calibration:run", "hr:read")
#: Headers of every page: not cached (pages carry pay-related numbers), no scripts at all,
#: no framing, forms post only here. Inline styles stay allowed: matplotlib's SVG uses them.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'none'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
_XML_PROLOGUE = re.compile(rb"^\s*(<\?xml[^>]*\?>\s*)?(<!DOCTYPE[^>]*>\s*)?", re.DOTALL)


async def require(request: Request[Any, Any, Any], *scopes: str, redirect: bool = True) -> WebUser:
    """The signed-in user holding one of ``scopes`` (sign-in redirect or 403 page otherwise).

    ``redirect=False`` (downloads: a file is not a page to come back to) answers a 401
    page instead of sending the browser to sign in.
    """
    if redirect:
        return await signed_in_user(request, scopes or None)
    try:
        return await signed_in_user(request, scopes or None)
    except NotSignedInError as exc:
        raise PageError(401, f"{exc.message or 'sign in'} to download this file") from exc


def download_operation(*media_types: str) -> type[Operation]:
    """An OpenAPI operation for a file download: the file's media types, or a 401 page."""
    binary = Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY)
    html = {"text/html": OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING))}
    ok = OpenAPIResponse(
        description="the file", content={m: OpenAPIMediaType(schema=binary) for m in media_types}
    )
    refused = OpenAPIResponse(description="not signed in, or the session ended", content=html)

    class _Download(Operation):
        # Operation is a dataclass without __post_init__: extend __init__ instead.
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.responses = {**(self.responses or {}), "200": ok, "401": refused}

    return _Download


def page(
    user: WebUser | None,
    name: str,
    status_code: int = 200,
    **context: Any,
) -> Template:
    """A rendered page with the context every page needs (who, the nav, the CSRF token)."""
    return Template(
        template_name=name,
        context={"user": user, "csrf_field": CSRF_FIELD, "prefix": PAGE_PREFIX, **context},
        status_code=status_code,
        headers=PAGE_HEADERS,
    )


def inline_svg(svg: bytes) -> Markup:
    """An SVG document made fit to sit inside HTML (prologue and doctype dropped)."""
    # Trusted markup: matplotlib's own output, whose text it escapes; no user HTML gets here.
    return Markup(_XML_PROLOGUE.sub(b"", svg, count=1).decode())


def _safe_next(target: str | None) -> str:
    """Only a path of these pages: never send a signed-in user to another site."""
    if not target:
        return f"{PAGE_PREFIX}/cycles"
    parts = urlsplit(target)
    # control characters (header splitting) and backslashes (read as "/" by browsers)
    if any(ord(ch) < 33 or ch == "\\" for ch in target):
        return f"{PAGE_PREFIX}/cycles"
    if parts.scheme or parts.netloc or not target.startswith(PAGE_PREFIX + "/"):
        return f"{PAGE_PREFIX}/cycles"
    return target


def _cookie(request: Request[Any, Any, Any], name: str, value: str, max_age: int) -> Cookie:
    return Cookie(
        key=name,
        value=value,
        path=PAGE_PREFIX,
        max_age=max_age,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _check_cycle(cycle: str) -> str:
    if not K.CYCLE_PATTERN.match(cycle):
        raise PageError(400, f"invalid cycle id {cycle!r}: use 1-64 of A-Z a-z 0-9 . _ -")
    return cycle


async def _off_loop(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


# --- sign-in --------------------------------------------------------------------------------


class SignInPages(Controller):
    """Sign-in and sign-out."""

    path = PAGE_PREFIX
    tags = ("web pages",)

    @get("/", sync_to_thread=False)
    def home(self) -> Redirect:
        """The pages start at the list of cycles (which asks to sign in when needed)."""
        return Redirect(f"{PAGE_PREFIX}/cycles")

    @get("/signin")
    async def signin_form(self, request: Request[Any, Any, Any]) -> Template:
        """The sign-in form, with a fresh double-submit CSRF token."""
        return _signin_page(request, next_path=request.query_params.get("next"))

    @post("/signin", status_code=303)
    async def signin(self, request: Request[Any, Any, Any]) -> Template | Redirect:
        """Check the pasted key; on success a session cookie and a redirect to ``next``."""
        form = await request.form()
        next_path = _safe_next(form.get("next"))
        check_csrf(request, request.cookies.get(CSRF_COOKIE), form.get(CSRF_FIELD))
        key = str(form.get("api_key") or "").strip()
        if not key:
            return _signin_page(request, next_path, error="api_key: paste an API key", status=400)
        try:
            session_id, _ = await sign_in(request.app.state.store, request.app.state.settings, key)
        except PageError as exc:
            return _signin_page(request, next_path, error=f"api_key: {exc.message}", status=401)
        previous = request.cookies.get(COOKIE)
        if previous:  # signing in again replaces the session rather than leaving it behind
            await end_session(request.app.state.store, previous)
        return Redirect(
            next_path,
            status_code=303,
            cookies=[
                _cookie(request, COOKIE, session_id, SESSION_TTL_SECONDS),
                _cookie(request, CSRF_COOKIE, "", 0),
            ],
        )

    @post("/signout", status_code=303)
    async def signout(self, request: Request[Any, Any, Any]) -> Redirect:
        """End the session (the form carries the session's CSRF token)."""
        user = await require(request)
        form = await request.form()
        check_csrf(request, user.csrf, form.get(CSRF_FIELD))
        session_id = request.cookies.get(COOKIE)
        if session_id:
            await end_session(request.app.state.store, session_id)
        return Redirect(
            f"{PAGE_PREFIX}/signin",
            status_code=303,
            cookies=[_cookie(request, COOKIE, "", 0)],
        )


def _signin_page(
    request: Request[Any, Any, Any],
    next_path: str | None,
    *,
    error: str | None = None,
    status: int = 200,
) -> Template:
    token = secrets.token_urlsafe(32)
    response = page(
        None,
        "signin.html",
        status_code=status,
        error=error,
        next=_safe_next(next_path),
        csrf=token,
    )
    response.cookies.append(_cookie(request, CSRF_COOKIE, token, 3600))
    return response


# --- figures -----------------------------------------------------------------------------

PlotName = Literal["distribution", "variance", "caterpillar", "kr"]
_PLOTS: tuple[str, ...] = ("distribution", "variance", "caterpillar", "kr")


async def plot_figure(
    store: Store,
    user: WebUser,
    cycle: str,
    name: str,
    run_id: str | None,
    kr_id: str | None,
) -> tuple[Callable[[], Any], str]:
    """A callable that draws the named figure of the cycle (run in a thread), and its file stem."""
    res, why = await data.load_results(store, user.org, cycle, run_id)
    if res is None:
        raise PageError(404, why or "no results")
    stem = f"{name}-{cycle}-{res.run_id}"
    conf = res.fit.confidence
    if name == "distribution":
        krs = await data.read_part(store, user.org, res, "krs")
        return functools.partial(plots.distribution_figure, krs, res.scale), stem
    if name == "variance":
        return functools.partial(plots.variance_figure, res.fit.variance), stem
    if name == "caterpillar":
        graders = await data.read_part(store, user.org, res, "graders")
        if small_group_reason(len(graders), MIN_GRADERS) is not None:
            raise PageError(403, "per-grader statistics are withheld for this cycle")
        return functools.partial(plots.caterpillar_figure, graders, res.scale, conf), stem
    if name == "kr" and kr_id:
        grades = await data.kr_grades(store, user.org, cycle, kr_id)
        score = await data.kr_score(store, user.org, res, kr_id)
        if not grades and score is None:
            raise PageError(404, f"no KR {kr_id!r} in cycle {cycle!r}")
        return functools.partial(plots.kr_figure, grades, score, res.scale, conf), (
            f"kr-{_file_safe(kr_id)}-{cycle}-{res.run_id}"
        )
    raise PageError(404, f"no plot {name!r}; plots are {', '.join(_PLOTS)} (kr needs ?kr=)")


def _largest_gaps(krs: list[KRScore], n: int = 15) -> list[KRScore]:
    """The KRs whose calibrated grade is furthest from their raw grade (where to look first)."""
    scored = [k for k in krs if k.calibrated_grade is not None]
    scored.sort(key=lambda k: (-abs(k.raw_grade - (k.calibrated_grade or 0.0)), k.kr_id))
    return scored[:n]


def _file_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:80]


async def plot_download(draw: Callable[[], Any], ext: str, stem: str) -> Response[bytes]:
    """The figure ``draw`` makes, rendered off the event loop, as a download ``stem.ext``.

    ``ext`` is ``png`` (else SVG). Not cached: figures carry pay-related numbers.
    """
    fmt: plots.PlotFormat = "png" if ext == "png" else "svg"

    def work() -> bytes:
        return plots.render(draw(), fmt)

    return Response(
        await _off_loop(work),
        media_type="image/png" if fmt == "png" else "image/svg+xml",
        headers={
            "Content-Disposition": f'attachment; filename="{stem}.{fmt}"',
            "Cache-Control": "no-store",
        },
    )


async def _svg(draw: Callable[[], Any]) -> Markup:
    def work() -> bytes:
        return plots.render(draw(), "svg")

    return inline_svg(await _off_loop(work))


def plot_links(
    cycle: str, name: str, run_id: str | None, kr_id: str | None = None
) -> dict[str, str]:
    """The PNG and SVG download addresses of one figure."""
    query = []
    if run_id:
        query.append(f"run={quote(run_id, safe='')}")
    if kr_id:
        query.append(f"kr={quote(kr_id, safe='')}")
    tail = ("?" + "&".join(query)) if query else ""
    base = f"{PAGE_PREFIX}/cycles/{quote(cycle, safe='')}/plots/{name}"
    return {"png": f"{base}.png{tail}", "svg": f"{base}.svg{tail}"}


# --- cycle pages -------------------------------------------------------------------------


class CyclePages(Controller):
    """Cycles: the list, a cycle's overview, its graders, one KR, and figure downloads."""

    path = f"{PAGE_PREFIX}/cycles"
    tags = ("web pages",)

    @get("/")
    async def cycles(self, request: Request[Any, Any, Any]) -> Template:
        """The organisation's cycles."""
        user = await require(request, *READ_SCOPES)
        store: Store = request.app.state.store
        cycles = await data.list_cycles(store, user.org)
        rows = []
        for cycle in reversed(cycles):
            published, locked = await store.published_run(user.org, cycle)
            rows.append({"cycle": cycle, "published": published is not None, "locked": locked})
        return page(user, "cycles.html", cycles=rows)

    @get("/{cycle:str}")
    async def overview(self, request: Request[Any, Any, Any], cycle: FromPath[str]) -> Template:
        """Raw against calibrated grades, variance shares, and the runs (published marked)."""
        user = await require(request, "scores:read", "calibration:run")
        store: Store = request.app.state.store
        _check_cycle(cycle)
        run_id = request.query_params.get("run")
        runs = await data.load_runs(store, user.org, cycle)
        res, why = await data.load_results(store, user.org, cycle, run_id)
        if res is None and not runs:
            raise PageError(404, why or f"no cycle {cycle!r}")
        context: dict[str, Any] = {"cycle": cycle, "runs": runs, "res": res, "why": why}
        if res is not None:
            rid = res.run_id if run_id else None
            # the run's overview keeps no per-grader rows: they are a result part of their own
            graders: list[GraderEffect] = await data.read_part(store, user.org, res, "graders")
            withheld = small_group_reason(len(graders), MIN_GRADERS)
            flagged = [g for g in graders if g.flag not in ("ok", "insufficient_data")]
            dist, _ = await plot_figure(store, user, cycle, "distribution", rid, None)
            var, _ = await plot_figure(store, user, cycle, "variance", rid, None)
            context.update(
                distribution=await _svg(dist),
                distribution_links=plot_links(cycle, "distribution", rid),
                variance=await _svg(var),
                variance_links=plot_links(cycle, "variance", rid),
                v=res.fit.variance,
                flagged=flagged,
                grader_stats_withheld=withheld is not None,
                run_query=f"?run={quote(rid, safe='')}" if rid else "",
                gaps=_largest_gaps(await data.read_part(store, user.org, res, "krs")),
            )
        return page(user, "overview.html", **context)

    @get("/{cycle:str}/graders")
    async def graders(self, request: Request[Any, Any, Any], cycle: FromPath[str]) -> Template:
        """Caterpillar plot of leniency, the table behind it, and the small-group notice."""
        user = await require(request, "scores:read")
        store: Store = request.app.state.store
        _check_cycle(cycle)
        run_id = request.query_params.get("run")
        res, why = await data.load_results(store, user.org, cycle, run_id)
        if res is None:
            raise PageError(404, why or "no results")
        graders: list[GraderEffect] = await data.read_part(store, user.org, res, "graders")
        withheld = small_group_reason(len(graders), MIN_GRADERS)
        context: dict[str, Any] = {"cycle": cycle, "res": res, "withheld": withheld}
        if withheld is None:
            rid = res.run_id if run_id else None
            draw, _ = await plot_figure(store, user, cycle, "caterpillar", rid, None)
            rows = sorted(graders, key=lambda g: (g.leniency is None, -(g.leniency or 0.0)))
            context.update(
                caterpillar=await _svg(draw),
                links=plot_links(cycle, "caterpillar", rid),
                graders=rows,
                n_flagged=sum(g.flag not in ("ok", "insufficient_data") for g in graders),
                colours=plots.FLAG_COLOURS,
                # unlinked parts of the grading graph: each compared only within itself
                several_parts=len({g.component for g in graders}) > 1,
            )
        return page(user, "graders.html", **context)

    @get("/{cycle:str}/krs/{kr_id:str}")
    async def kr(
        self, request: Request[Any, Any, Any], cycle: FromPath[str], kr_id: FromPath[str]
    ) -> Template:
        """One KR: evidence, anchor levels, every grade, calibrated grade, outcome check."""
        user = await require(request, "scores:read")
        store: Store = request.app.state.store
        _check_cycle(cycle)
        run_id = request.query_params.get("run")
        kr = await data.kr_record(store, user.org, cycle, kr_id)
        grades = await data.kr_grades(store, user.org, cycle, kr_id)
        if kr is None and not grades:
            raise PageError(404, f"no KR {kr_id!r} in cycle {cycle!r}")
        res, why = await data.load_results(store, user.org, cycle, run_id)
        score = None if res is None else await data.kr_score(store, user.org, res, kr_id)
        catalogue = await load_org_catalogue(store, user.org)
        evidence, evidence_reason, kr_type = None, None, None
        if kr is not None:
            try:
                key_result = msgspec.convert(msgspec.to_builtins(kr), KeyResult)
                kr_type = infer_kr_type(key_result)
                evidence = grade_evidence(key_result, catalogue)
                if evidence is None:
                    evidence_reason = "the KR carries no evidence"
            except (EvidenceError, msgspec.ValidationError) as exc:
                evidence_reason = str(exc)
        levels = catalogue.levels_for(kr_type) if kr_type is not None else ()
        current_level = None
        if res is not None and score is not None and score.calibrated_grade is not None:
            current_level = level_index(score.calibrated_grade, res.scale)
        graders: dict[str, GraderEffect] = {}
        if res is not None:
            for g in await data.read_part(store, user.org, res, "graders"):
                graders[g.grader_id] = g
        withheld = small_group_reason(len(graders), MIN_GRADERS) if graders else None
        context: dict[str, Any] = {
            "cycle": cycle,
            "kr_id": kr_id,
            "kr": kr,
            "grades": grades,
            "graders": {} if withheld else graders,
            "res": res,
            "why": why,
            "score": score,
            "evidence": evidence,
            "evidence_reason": evidence_reason,
            "kr_type": kr_type,
            "type_title": catalogue.types[kr_type].title if kr_type in catalogue.types else None,
            "levels": levels,
            "current_level": current_level,
            "outcome": check_outcome(kr.description) if kr and kr.description else None,
        }
        if res is not None:
            rid = res.run_id if run_id else None
            draw, _ = await plot_figure(store, user, cycle, "kr", rid, kr_id)
            context.update(plot=await _svg(draw), links=plot_links(cycle, "kr", rid, kr_id))
        return page(user, "kr.html", **context)

    @get(
        "/{cycle:str}/plots/{filename:str}",
        operation_class=download_operation("image/png", "image/svg+xml"),
    )
    async def plot(
        self, request: Request[Any, Any, Any], cycle: FromPath[str], filename: FromPath[str]
    ) -> Response[bytes]:
        """A figure as a PNG or SVG download: ``distribution.png``, ``caterpillar.svg``, ..."""
        user = await require(request, "scores:read", "calibration:run", redirect=False)
        _check_cycle(cycle)
        name, _, ext = filename.rpartition(".")
        if ext not in ("png", "svg"):
            raise PageError(404, f"plots come as .png or .svg, not {filename!r}")
        draw, stem = await plot_figure(
            request.app.state.store,
            user,
            cycle,
            name,
            request.query_params.get("run"),
            request.query_params.get("kr"),
        )
        return await plot_download(draw, ext, stem)
