"""The calibration-session pages: list and create, agenda, what-if, adjustments, lock, audit.

Every read and write is one of the sessions API's own operations (:mod:`service.sessions`:
:func:`~service.sessions.open_session`, :func:`~service.sessions.set_adjustment`, ...),
called with the signed-in key as the actor: a page does exactly what
``POST .../sessions/{id}/adjustments`` does, with the same checks, the same Lua scripts
and the same audit entries. The pages add only form decoding and presentation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath
from litestar.response import Redirect, Template

from anchors import AnchorError, parse_scale
from calibrate import CalibrateError, InputError
from service.audit import AuditEntry, read_audit
from service.problems import ProblemError
from service.sessions import (
    REASON_CODES,
    AdjustmentIn,
    LockIn,
    ReopenIn,
    SessionIn,
    WhatIfIn,
    audit_csv_response,
    cycle_sessions,
    final_scores,
    lock_session,
    open_session,
    preview_changes,
    read_session,
    reopen_session,
    session_adjustments,
    session_agenda,
    session_audit_entries,
    set_adjustment,
)
from service.store import Store
from service.web import data
from service.web.pages import PAGE_PREFIX, download_operation, page, require
from service.web.websession import CSRF_FIELD, PageError, WebUser, check_csrf

__all__ = ["SessionPages", "problem_text"]

_READ = ("calibration:run", "scores:read")
_CHANGE_TYPES = ("exclude_grader", "override_grade", "add_grade")
#: What a form's input can be refused with: shown next to the form, naming the field.
_FORM_ERRORS = (ProblemError, PageError, CalibrateError, AnchorError, msgspec.ValidationError)


def problem_text(exc: Exception) -> str:
    """One line for the reader: what was wrong, naming the field."""
    if isinstance(exc, ProblemError):
        fields = [p.field for p in exc.errors if p.field]
        head = exc.detail
        if fields and not head.startswith(fields[0]):
            head = f"{fields[0]}: {head}"
        extra = [
            f"{p.field}: {p.problem}" if p.field else p.problem
            for p in exc.errors
            if p.problem not in exc.detail
        ]
        return f"{head} ({'; '.join(extra)})" if extra else head
    if isinstance(exc, InputError):
        return f"{exc.field}: {exc.problem}" if exc.field else exc.problem
    if isinstance(exc, PageError):
        return exc.message
    if isinstance(exc, msgspec.ValidationError):
        text = str(exc)
        message, _, where = text.partition(" - at `$.")
        return f"{where.rstrip('`')}: {message}" if where else text
    return str(exc)


async def _signed_form(request: Request[Any, Any, Any], *scopes: str) -> tuple[WebUser, Any]:
    """The signed-in user holding one of ``scopes``, and the posted form (CSRF checked)."""
    user = await require(request, *scopes)
    form = await request.form()
    check_csrf(request, user.csrf, form.get(CSRF_FIELD))
    return user, form


def _store(request: Request[Any, Any, Any]) -> Store:
    store: Store = request.app.state.store
    return store


def _form_dict(form: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, str]:
    return {n: str(form.get(n) or "").strip() for n in names}


def _session_url(cycle: str, session_id: str) -> str:
    return f"{PAGE_PREFIX}/cycles/{quote(cycle, safe='')}/sessions/{quote(session_id, safe='')}"


class SessionPages(Controller):
    """Calibration sessions of a cycle, for the facilitator in the room."""

    path = f"{PAGE_PREFIX}/cycles/{{cycle:str}}/sessions"
    tags = ("web pages",)

    @get("/")
    async def sessions(self, request: Request[Any, Any, Any], cycle: FromPath[str]) -> Template:
        """The cycle's sessions and the form to open one."""
        user = await require(request, *_READ)
        return await _sessions_page(request, user, cycle)

    @post("/", status_code=303)
    async def create(
        self, request: Request[Any, Any, Any], cycle: FromPath[str]
    ) -> Template | Redirect:
        """Open a session on some owners (every owner of the run when none is named)."""
        user, form = await _signed_form(request, "calibration:run")
        f = _form_dict(form, ("facilitator", "title", "owner_ids", "org_unit"))
        body: dict[str, Any] = {"facilitator": f["facilitator"], "title": f["title"] or None}
        try:
            if f["org_unit"]:
                body["org_unit"] = f["org_unit"]
            elif f["owner_ids"]:
                body["owner_ids"] = [o.strip() for o in f["owner_ids"].split(",") if o.strip()]
            else:
                body["owner_ids"] = await _every_owner(request, user, cycle)
            made = await open_session(
                _store(request), user.org, cycle, msgspec.convert(body, SessionIn), user.record
            )
        except (ProblemError, msgspec.ValidationError) as exc:
            return await _sessions_page(request, user, cycle, error=problem_text(exc), form=f)
        return Redirect(_session_url(cycle, made.session_id), status_code=303)

    @get("/{session_id:str}")
    async def session(
        self, request: Request[Any, Any, Any], cycle: FromPath[str], session_id: FromPath[str]
    ) -> Template:
        """Agenda, what-if, adjustments, lock and the audit log of one session."""
        user = await require(request, *_READ)
        return await _session_page(request, user, cycle, session_id)

    @get("/{session_id:str}/audit.csv", operation_class=download_operation("text/csv"))
    async def audit_export(
        self, request: Request[Any, Any, Any], cycle: FromPath[str], session_id: FromPath[str]
    ) -> Response[bytes]:
        """The session's audit entries as CSV (what ``.../audit?format=csv`` of the API gives)."""
        user = await require(request, "calibration:run", "hr:read", redirect=False)
        entries = await session_audit_entries(_store(request), user.org, cycle, session_id)
        return audit_csv_response(entries, f"audit-{cycle}-{session_id}".replace('"', ""))

    @post("/{session_id:str}/what-if", status_code=200)
    async def what_if(
        self, request: Request[Any, Any, Any], cycle: FromPath[str], session_id: FromPath[str]
    ) -> Template:
        """Preview one proposed change; nothing is saved (the preview is audited)."""
        user, form = await _signed_form(request, "calibration:run")
        f = _form_dict(form, ("type", "kr_id", "grader_id", "grade"))
        change: dict[str, Any] = {"type": f["type"]}
        for name in ("kr_id", "grader_id"):
            if f[name]:
                change[name] = f[name]
        try:
            if f["grade"]:
                change["grade"] = _number(f["grade"], "changes[0].grade")
            if f["type"] not in _CHANGE_TYPES:
                raise PageError(400, f"type: choose one of {', '.join(_CHANGE_TYPES)}")
            changes = msgspec.convert({"changes": [change]}, WhatIfIn)
            preview = await preview_changes(
                _store(request), user.org, cycle, session_id, changes, user.record
            )
        except _FORM_ERRORS as exc:
            return await _session_page(
                request, user, cycle, session_id, whatif_error=problem_text(exc), whatif_form=f
            )
        return await _session_page(request, user, cycle, session_id, preview=preview, whatif_form=f)

    @post("/{session_id:str}/adjust", status_code=303)
    async def adjust(
        self, request: Request[Any, Any, Any], cycle: FromPath[str], session_id: FromPath[str]
    ) -> Template | Redirect:
        """Set a KR's final grade; the reason code and the comment are both required."""
        user, form = await _signed_form(request, "calibration:run")
        f = _form_dict(form, ("kr_id", "final_grade", "reason_code", "comment"))
        try:
            if not f["reason_code"]:
                raise PageError(400, "reason_code: choose the reason for the adjustment")
            if not f["comment"]:
                raise PageError(400, "comment: say why the grade changes (required)")
            body = {
                "kr_id": f["kr_id"],
                "final_grade": _number(f["final_grade"], "final_grade"),
                "reason_code": f["reason_code"],
                "comment": f["comment"],
            }
            adjustment = msgspec.convert(body, AdjustmentIn)
            await set_adjustment(
                _store(request), user.org, cycle, session_id, adjustment, user.record
            )
        except _FORM_ERRORS as exc:
            return await _session_page(
                request, user, cycle, session_id, adjust_error=problem_text(exc), adjust_form=f
            )
        return Redirect(
            _session_url(cycle, session_id) + "?done=adjusted#adjustments", status_code=303
        )

    @post("/{session_id:str}/lock", status_code=303)
    async def lock(
        self, request: Request[Any, Any, Any], cycle: FromPath[str], session_id: FromPath[str]
    ) -> Template | Redirect:
        """Lock the session: its owners' achievements become final."""
        user, form = await _signed_form(request, "calibration:run")
        comment = str(form.get("comment") or "").strip() or None
        if form.get("confirm") != "yes":
            return await _session_page(
                request,
                user,
                cycle,
                session_id,
                lock_error="confirm: tick the box to confirm the lock; it freezes the final scores",
            )
        try:
            await lock_session(
                _store(request), user.org, cycle, session_id, LockIn(comment=comment), user.record
            )
        except ProblemError as exc:
            return await _session_page(
                request, user, cycle, session_id, lock_error=problem_text(exc)
            )
        return Redirect(_session_url(cycle, session_id) + "?done=locked", status_code=303)

    @post("/{session_id:str}/reopen", status_code=303)
    async def reopen(
        self, request: Request[Any, Any, Any], cycle: FromPath[str], session_id: FromPath[str]
    ) -> Template | Redirect:
        """Reopen a locked session (admin, with a reason): its owners are no longer final."""
        user, form = await _signed_form(request, "admin")
        reason = str(form.get("reason") or "").strip()
        try:
            if not reason:
                raise PageError(400, "reason: say why the session is reopened (required)")
            await reopen_session(
                _store(request), user.org, cycle, session_id, ReopenIn(reason=reason), user.record
            )
        except (ProblemError, PageError) as exc:
            return await _session_page(
                request, user, cycle, session_id, lock_error=problem_text(exc)
            )
        return Redirect(_session_url(cycle, session_id) + "?done=reopened", status_code=303)


def _number(text: str, field: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise PageError(400, f"{field}: {text!r} is not a number") from None


async def _every_owner(request: Request[Any, Any, Any], user: WebUser, cycle: str) -> list[str]:
    store = _store(request)
    res, why = await data.load_results(store, user.org, cycle, None)
    if res is None:
        raise PageError(404, why or "no results")
    owners = await data.read_part(store, user.org, res, "owners")
    return [o.owner_id for o in owners]


async def _sessions_page(
    request: Request[Any, Any, Any],
    user: WebUser,
    cycle: str,
    *,
    error: str | None = None,
    form: Mapping[str, str] | None = None,
) -> Template:
    rows = await cycle_sessions(_store(request), user.org, cycle, limit=100)
    return page(
        user,
        "sessions.html",
        status_code=400 if error else 200,
        cycle=cycle,
        sessions=rows,
        error=error,
        form=form or {},
    )


async def _session_page(
    request: Request[Any, Any, Any],
    user: WebUser,
    cycle: str,
    session_id: str,
    **extra: Any,
) -> Template:
    store = _store(request)
    s = await read_session(store, user.org, cycle, session_id)
    agenda = await session_agenda(store, user.org, cycle, session_id, max_gaps=20, min_gap=0.1)
    adjustments = await session_adjustments(store, user.org, cycle, session_id)
    scores = await final_scores(store, user.org, cycle, session_id)
    audit: list[AuditEntry] = (
        await read_audit(store, user.org, cycle=cycle, session_id=session_id)
        if user.can("calibration:run", "hr:read")
        else []
    )
    scale = parse_scale(s.scale)
    graders: set[str] = {a.subject_id for a in agenda.items if a.subject == "grader"}
    res, _ = await data.load_results(store, user.org, cycle, s.run_id)
    if res is not None:
        graders.update(g.grader_id for g in await data.read_part(store, user.org, res, "graders"))
    errors = [k for k in extra if k.endswith("_error")]
    context: dict[str, Any] = {
        "cycle": cycle,
        "s": s,
        "agenda": agenda,
        "adjustments": adjustments,
        "scores": scores,
        "audit": audit,
        "can_audit": user.can("calibration:run", "hr:read"),
        "scale": scale,
        "reason_codes": REASON_CODES,
        "change_types": _CHANGE_TYPES,
        "done": request.query_params.get("done"),
        "preview": None,
        "whatif_error": None,
        "adjust_error": None,
        "lock_error": None,
        "whatif_form": {},
        "adjust_form": {},
        "graders": sorted(graders),
        "csrf_name": CSRF_FIELD,
    }
    context.update(extra)
    return page(
        user,
        "session.html",
        status_code=400 if any(extra.get(e) for e in errors) else 200,
        **context,
    )
