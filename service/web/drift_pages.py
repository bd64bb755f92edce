"""The drift page for HR: each grader's leniency across cycles, and the drifting graders.

The histories, the ranked list and a grader's tests come from the drift API's own
operations (:mod:`service.drift_api`), so the page and ``GET /v1/orgs/{org}/drift/graders``
never disagree; the figure draws every grader's history read from the published runs.
"""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import quote

import anyio
from litestar import Controller, Request, Response, get
from litestar.params import FromPath
from litestar.response import Redirect, Template

from calibrate.drift import CyclePoint
from service.drift_api import (
    CONFIDENCE,
    FDR,
    MAX_CYCLES,
    MIN_CHANGE,
    MIN_CYCLES,
    DriftListOut,
    GraderDriftOut,
    check_cycle_count,
    grader_drift,
    grader_histories,
    published_cycles,
    rank_histories,
)
from service.problems import ProblemError
from service.store import Store
from service.web import plots
from service.web.pages import (
    PAGE_PREFIX,
    download_operation,
    inline_svg,
    page,
    plot_download,
    require,
)
from service.web.websession import PageError

__all__ = ["CONFIDENCE", "FDR", "MIN_CHANGE", "MIN_CYCLES", "DriftPages"]


async def _drift(
    store: Store, org: str
) -> tuple[list[str], dict[str, list[CyclePoint]], DriftListOut | None, str | None]:
    # The figure shows the latest cycles even when there are more than the API ranks at once.
    names = await published_cycles(store, org)
    cycles, histories = await grader_histories(store, org, names[-MAX_CYCLES:])
    try:
        check_cycle_count(names)
    except ProblemError as exc:
        return cycles, histories, None, exc.detail
    return cycles, histories, rank_histories(cycles, histories), None


async def _grader(store: Store, org: str, grader_id: str) -> GraderDriftOut:
    try:
        return await grader_drift(store, org, grader_id)
    except ProblemError as exc:
        raise PageError(exc.status, exc.detail) from exc


def _render(histories: dict[str, list[CyclePoint]], drifting: list[str], fmt: str) -> bytes:
    return plots.render(plots.drift_figure(histories, drifting), "png" if fmt == "png" else "svg")


class DriftPages(Controller):
    """Grader drift across cycles (scope ``hr:read``)."""

    path = f"{PAGE_PREFIX}/drift"
    tags = ("web pages",)

    @get("/")
    async def drift(self, request: Request[Any, Any, Any]) -> Template:
        """Leniency across cycles with interval bands, and the ranked drifting graders."""
        user = await require(request, "hr:read")
        cycles, histories, ranked, error = await _drift(request.app.state.store, user.org)
        drifting = [t.grader_id for t in ranked.drifting] if ranked else []
        figure = None
        if cycles:
            svg = await anyio.to_thread.run_sync(_render, histories, drifting, "svg")
            figure = inline_svg(svg)
        return page(
            user,
            "drift.html",
            cycles=cycles,
            ranked=ranked,
            error=error,
            figure=figure,
            links={
                "png": f"{PAGE_PREFIX}/drift/plots/drift.png",
                "svg": f"{PAGE_PREFIX}/drift/plots/drift.svg",
            },
            n_graders=len(histories),
            settings={
                "min_cycles": MIN_CYCLES,
                "fdr": FDR,
                "min_change": MIN_CHANGE,
                "confidence": CONFIDENCE,
            },
        )

    @get("/graders/{grader_id:str}")
    async def grader(self, request: Request[Any, Any, Any], grader_id: FromPath[str]) -> Template:
        """One grader: leniency per cycle with its interval band, the change and trend tests."""
        user = await require(request, "hr:read")
        found = await _grader(request.app.state.store, user.org, grader_id)
        svg = await anyio.to_thread.run_sync(
            _render, {grader_id: found.history}, [grader_id], "svg"
        )
        q = quote(grader_id, safe="")
        links = {
            "png": f"{PAGE_PREFIX}/drift/plots/drift.png?grader={q}",
            "svg": f"{PAGE_PREFIX}/drift/plots/drift.svg?grader={q}",
        }
        return page(user, "drift_grader.html", d=found, figure=inline_svg(svg), links=links)

    @get("/grader", sync_to_thread=False)
    def find_grader(self, request: Request[Any, Any, Any]) -> Redirect:
        """The look-up form: straight to the grader's page."""
        grader = request.query_params.get("grader") or ""
        if not grader.strip():
            return Redirect(f"{PAGE_PREFIX}/drift")
        return Redirect(f"{PAGE_PREFIX}/drift/graders/{quote(grader.strip(), safe='')}")

    @get(
        "/plots/{filename:str}",
        operation_class=download_operation("image/png", "image/svg+xml"),
    )
    async def plot(
        self, request: Request[Any, Any, Any], filename: FromPath[str]
    ) -> Response[bytes]:
        """The drift figure as a PNG or SVG download (``drift.png``, ``drift.svg``)."""
        user = await require(request, "hr:read", redirect=False)
        if filename not in ("drift.png", "drift.svg"):
            raise PageError(404, f"no plot {filename!r}; use drift.png or drift.svg")
        fmt = filename.rsplit(".", 1)[1]
        one = request.query_params.get("grader")
        if one:
            found = await _grader(request.app.state.store, user.org, one)
            histories, drifting = {one: found.history}, [one]
        else:
            _, histories, ranked, _ = await _drift(request.app.state.store, user.org)
            drifting = [t.grader_id for t in ranked.drifting] if ranked else []
        draw = functools.partial(plots.drift_figure, histories, drifting)
        return await plot_download(draw, fmt, f"drift-{user.org}")
