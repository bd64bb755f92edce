"""Calibration sessions over HTTP: create, agenda, what-if, adjust, lock, reopen, audit.

A session belongs to a cycle, a scope (owner ids, or an org-unit tag carried by the
KRs) and a facilitator, and is pinned to one finished calibration run (the published
one unless another is named). The numbers come from :mod:`calibrate.session`; this
module reads and writes Redis and checks input.

Consistency. Changes to a session are Lua scripts that check the session's status
and write the change and its audit entry together (same ``{org}`` slot): an
adjustment cannot slip in after a lock, and no change exists without its entry.
Locking writes each scope owner's final achievement (adjusted KR grades folded in)
to the cycle's final-owner hash; the owner endpoints serve those as ``final``
(:func:`final_owner_view`). Reopening (``admin``, with a reason) takes them back.

Every operation is a plain async function (:func:`open_session`, :func:`session_agenda`,
:func:`preview_changes`, :func:`set_adjustment`, :func:`lock_session`, ...) taking the
store, organisation, cycle, ids, the acting key and a body struct, returning a struct or
raising :class:`~service.problems.ProblemError`. The controllers below are one call each,
and the web pages (:mod:`service.web.session_pages`) call the same functions.

Session states: ``open`` ──lock──> ``locked`` ──reopen (admin)──> ``open``.
"""

from __future__ import annotations

import functools
import math
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, NamedTuple

import anyio
import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody, QueryParameter

from anchors import parse_scale
from calibrate import CalibrationFit, GraderEffect, GradeTable, KRScore, OwnerAchievement
from calibrate import model_from_name as _model_from_name
from calibrate.session import (
    Agenda,
    Change,
    WhatIfResult,
    build_agenda,
    final_owners,
    small_group_reason,
    what_if,
)
from service import keys as K  # noqa: N812 - read as "keys"
from service.audit import AuditEntry, actor_fields, append_audit, audit_csv, read_audit, redis_of
from service.auth import SCOPE_OPT
from service.events import emit
from service.ingest import check_id
from service.problems import ProblemError
from service.results import GRADER_DECODER, KR_SCORE_DECODER, OWNER_DECODER, kr_scores
from service.runs import build_table, load_org_catalogue
from service.schemas import FieldProblem, KRIn, OwnerOut
from service.store import ApiKeyRecord, Store

__all__ = [
    "REASON_CODES",
    "AdjustmentIn",
    "AdjustmentOut",
    "AuditController",
    "FinalScore",
    "LockIn",
    "ReasonCode",
    "ReopenIn",
    "SessionIn",
    "SessionOut",
    "SessionsController",
    "WhatIfIn",
    "WhatIfOut",
    "audit_csv_response",
    "cycle_sessions",
    "export_audit",
    "final_owner_view",
    "final_scores",
    "lock_session",
    "open_session",
    "preview_changes",
    "read_session",
    "reopen_session",
    "session_adjustments",
    "session_agenda",
    "session_audit_entries",
    "set_adjustment",
]

ReasonCode = Literal[
    "evidence",
    "grader_leniency",
    "context",
    "scope_change",
    "data_error",
    "peer_comparison",
    "other",
]
REASON_CODES: tuple[str, ...] = (
    "evidence",
    "grader_leniency",
    "context",
    "scope_change",
    "data_error",
    "peer_comparison",
    "other",
)
SessionStatus = Literal["open", "locked"]
_MAX_CHANGES = 1000
_MAX_TEXT = 2000

# --- bodies ---------------------------------------------------------------------------------


class SessionIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A new session: scope by ``owner_ids`` or by ``org_unit`` (exactly one), pinned to a run."""

    facilitator: str
    owner_ids: list[str] | None = None
    org_unit: str | None = None
    run_id: str | None = None
    title: str | None = None
    #: Fewer graders in scope than this and per-grader statistics are withheld.
    min_graders: int = 4


class SessionOut(msgspec.Struct, frozen=True, kw_only=True):
    """A session: status, what it covers, the run it is pinned to, who did what when."""

    session_id: str
    cycle: str
    status: SessionStatus
    facilitator: str
    title: str | None
    run_id: str
    model: str
    scale: str
    org_unit: str | None
    owner_ids: list[str]
    unmatched_owner_ids: list[str]
    n_krs: int
    n_graders: int
    n_adjustments: int
    min_graders: int
    grader_stats_withheld: bool
    withheld_reason: str | None
    created_at: datetime
    created_by: str
    locked_at: datetime | None
    locked_by: str | None
    times_reopened: int


class WhatIfIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Proposed changes, each tagged by ``type``: override_grade, exclude_grader, add_grade."""

    changes: list[Change]


class WhatIfOut(msgspec.Struct, frozen=True, kw_only=True):
    """A preview: nothing was saved."""

    session_id: str
    run_id: str
    elapsed_ms: float
    result: WhatIfResult


class AdjustmentIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Set a KR's final grade (run scale) with a reason code and a comment; both required."""

    kr_id: str
    final_grade: float
    reason_code: ReasonCode
    comment: str


class AdjustmentOut(msgspec.Struct, frozen=True, kw_only=True):
    """One adjustment: old and new value, why, who and when."""

    adjustment_id: str
    session_id: str
    kr_id: str
    owner_id: str | None
    calibrated_grade: float | None
    old_value: float | None
    new_value: float
    reason_code: str
    comment: str
    by_key_id: str
    by_name: str | None
    at: datetime


class LockIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Optional note on the lock."""

    comment: str | None = None


class ReopenIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Why a locked session is reopened (required)."""

    reason: str


class FinalScore(msgspec.Struct, frozen=True, kw_only=True):
    """A scope KR's calibrated grade and its final grade (adjusted, or the calibrated one)."""

    kr_id: str
    owner_id: str | None
    raw_grade: float
    calibrated_grade: float | None
    ci_low: float | None
    ci_high: float | None
    final_grade: float | None
    adjusted: bool


# --- stored records -------------------------------------------------------------------------


class _Scope(msgspec.Struct, frozen=True, kw_only=True):
    session_id: str
    cycle: str
    facilitator: str
    title: str | None
    org_unit: str | None
    owner_ids: list[str]
    unmatched_owner_ids: list[str]
    run_id: str
    attempt: int
    model: str
    scale: str
    confidence: float
    min_graders: int
    kr_ids: list[str]
    grader_ids: list[str]
    grade_keys: list[str]
    created_us: int
    created_by: str


class _FinalRecord(msgspec.Struct, frozen=True, kw_only=True):
    owner: OwnerAchievement
    session_id: str
    run_id: str


_mp = msgspec.msgpack.Encoder().encode
_scope_decoder = msgspec.msgpack.Decoder(_Scope)
_adj_decoder = msgspec.msgpack.Decoder(AdjustmentOut)
_final_decoder = msgspec.msgpack.Decoder(_FinalRecord)
_kr_decoder = msgspec.msgpack.Decoder(KRIn)
_json = msgspec.json.Encoder().encode

# --- scripts --------------------------------------------------------------------------------

# An adjustment is written only while the session is open, together with its audit
# entry. ARGV[2] is the adjustment the caller read as current (''): if another
# adjustment of the KR landed in between, the caller recomputes old_value and retries.
# KEYS: session, adjustments, adjustment log, audit
# ARGV: kr_id, expected current ('' = none), new adjustment, then audit field/value pairs
_ADJUST = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'missing' end
if st ~= 'open' then return st end
local cur = redis.call('HGET', KEYS[2], ARGV[1]) or ''
if cur ~= ARGV[2] then return 'conflict' end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('RPUSH', KEYS[3], ARGV[3])
redis.call('XADD', KEYS[4], '*', unpack(ARGV, 4))
return 'ok'
"""

# Locking checks the session is open, that no adjustment arrived since the final
# achievements were computed (the log's length), and that no owner is already final
# through another locked session (one final value per owner), then freezes: status,
# the final owners, the cycle's count of locked sessions, and the audit entry, at once.
# KEYS: session, final owners, cycle, audit, adjustment log
# ARGV: adjustments seen, now µs, key id, key name, n audit values, audit pairs...,
#       then owner / record pairs
_LOCK = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'missing' end
if st ~= 'open' then return st end
if redis.call('LLEN', KEYS[5]) ~= tonumber(ARGV[1]) then return 'conflict' end
local n = tonumber(ARGV[5])
for i = 6 + n, #ARGV, 3 do
  local owner_session = redis.call('HGET', KEYS[2], 's:' .. ARGV[i])
  if owner_session and owner_session ~= ARGV[i + 2] then
    return 'overlap:' .. ARGV[i] .. ':' .. owner_session
  end
end
redis.call('HSET', KEYS[1], 'status', 'locked', 'locked_us', ARGV[2], 'locked_by', ARGV[3],
  'locked_by_name', ARGV[4])
redis.call('XADD', KEYS[4], '*', unpack(ARGV, 6, 5 + n))
for i = 6 + n, #ARGV, 3 do
  redis.call('HSET', KEYS[2], 'o:' .. ARGV[i], ARGV[i + 1], 's:' .. ARGV[i], ARGV[i + 2])
end
redis.call('HINCRBY', KEYS[3], 'locked', 1)
return 'ok'
"""

# Reopening takes back the final achievements this session wrote (not those another
# session wrote since) and logs the reason.
# KEYS: session, final owners, cycle, audit; ARGV: session id, n audit values,
#       audit pairs..., then owner ids
_REOPEN = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'missing' end
if st ~= 'locked' then return st end
redis.call('HSET', KEYS[1], 'status', 'open')
redis.call('HDEL', KEYS[1], 'locked_us', 'locked_by', 'locked_by_name')
redis.call('HINCRBY', KEYS[1], 'reopened', 1)
local n = tonumber(ARGV[2])
redis.call('XADD', KEYS[4], '*', unpack(ARGV, 3, 2 + n))
for i = 3 + n, #ARGV do
  if redis.call('HGET', KEYS[2], 's:' .. ARGV[i]) == ARGV[1] then
    redis.call('HDEL', KEYS[2], 'o:' .. ARGV[i], 's:' .. ARGV[i])
  end
end
if redis.call('HINCRBY', KEYS[3], 'locked', -1) <= 0 then redis.call('HDEL', KEYS[3], 'locked') end
return 'ok'
"""

_scripts: dict[tuple[int, str], Any] = {}


async def _run_script(store: Store, text: str, keys: Sequence[str], args: Sequence[Any]) -> str:
    client = redis_of(store)
    # One Script object per text; redis-py sends it by SHA and reloads it when needed.
    script = _scripts.get((id(text), text[:16]))
    if script is None:
        script = _scripts[(id(text), text[:16])] = client.register_script(text)
    result = await script(keys=list(keys), args=list(args), client=client)
    return result.decode() if isinstance(result, bytes) else str(result)


# --- helpers --------------------------------------------------------------------------------


def _now_us() -> int:
    return time.time_ns() // 1000


def _dt(us: int) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, UTC)


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _bad(detail: str, field: str, problem: str | None = None) -> ProblemError:
    return ProblemError(400, detail, errors=[FieldProblem(problem=problem or detail, field=field)])


def _check_cycle(cycle: str) -> None:
    if not K.CYCLE_PATTERN.match(cycle):
        raise _bad(f"invalid cycle id {cycle!r}", "cycle", "use 1-64 of A-Z a-z 0-9 . _ -")


def _check_text(value: str | None, field: str, *, required: bool) -> str | None:
    if value is None or not value.strip():
        if required:
            raise _bad(f"{field} is required and must not be empty", field)
        return None
    if len(value) > _MAX_TEXT:
        raise _bad(f"{field} is longer than {_MAX_TEXT} characters", field)
    return value.strip()


def _audit_fields(
    kind: str, cycle: str, session_id: str, actor: ApiKeyRecord, data: Mapping[str, Any]
) -> dict[str, str]:
    return {
        "at_us": str(_now_us()),
        "type": kind,
        "cycle": cycle,
        "session_id": session_id,
        **actor_fields(actor),
        "data": _json(dict(data)).decode(),
    }


def _audit_pairs(
    kind: str, cycle: str, session_id: str, actor: ApiKeyRecord, data: Mapping[str, Any]
) -> list[str]:
    fields = _audit_fields(kind, cycle, session_id, actor, data)
    return [x for pair in fields.items() for x in pair]


def _actor(request: Request[Any, Any, Any]) -> ApiKeyRecord:
    record: ApiKeyRecord = request.state.api_key  # set by the key check (service.auth)
    return record


async def _hgetall_pages(client: Any, key: str) -> dict[str, bytes]:
    raw: dict[bytes, bytes] = await client.hgetall(key)
    return {_s(k): v for k, v in raw.items()}


class _Loaded(msgspec.Struct, frozen=True, kw_only=True):
    scope: _Scope
    status: SessionStatus
    locked_us: int | None
    locked_by: str | None
    reopened: int
    n_adjustments: int


async def _load(store: Store, org: str, cycle: str, session_id: str) -> _Loaded:
    _check_cycle(cycle)
    okeys = K.OrgKeys(org)
    client = redis_of(store)
    async with client.pipeline(transaction=False) as pipe:
        pipe.hmget(
            okeys.session(cycle, session_id),
            ["record", "status", "locked_us", "locked_by", "reopened"],
        )
        pipe.hlen(okeys.session_adjustments(cycle, session_id))
        (record, status, locked_us, locked_by, reopened), n_adj = await pipe.execute()
    if record is None:
        raise ProblemError(404, f"no session {session_id!r} in cycle {cycle!r}")
    return _Loaded(
        scope=_scope_decoder.decode(record),
        status="locked" if _s(status) == "locked" else "open",
        locked_us=int(locked_us) if locked_us else None,
        locked_by=_s(locked_by) if locked_by else None,
        reopened=int(reopened or 0),
        n_adjustments=int(n_adj),
    )


def _session_out(s: _Loaded) -> SessionOut:
    sc = s.scope
    withheld = small_group_reason(len(sc.grader_ids), sc.min_graders)
    return SessionOut(
        session_id=sc.session_id,
        cycle=sc.cycle,
        status=s.status,
        facilitator=sc.facilitator,
        title=sc.title,
        run_id=sc.run_id,
        model=sc.model,
        scale=sc.scale,
        org_unit=sc.org_unit,
        owner_ids=sc.owner_ids,
        unmatched_owner_ids=sc.unmatched_owner_ids,
        n_krs=len(sc.kr_ids),
        n_graders=len(sc.grader_ids),
        n_adjustments=s.n_adjustments,
        min_graders=sc.min_graders,
        grader_stats_withheld=withheld is not None,
        withheld_reason=withheld,
        created_at=_dt(sc.created_us),
        created_by=sc.created_by,
        locked_at=None if s.locked_us is None else _dt(s.locked_us),
        locked_by=s.locked_by,
        times_reopened=s.reopened,
    )


async def _hmget(client: Any, key: str, fields: Sequence[str]) -> list[bytes | None]:
    # in chunks: one HMGET of a whole large scope would block Redis for long
    out: list[bytes | None] = []
    for i in range(0, len(fields), 5000):
        out.extend(await client.hmget(key, list(fields[i : i + 5000])))
    return out


async def _hmget_found(client: Any, key: str, fields: Sequence[str]) -> dict[str, bytes]:
    values = await _hmget(client, key, fields)
    return {f: raw for f, raw in zip(fields, values, strict=True) if raw is not None}


async def _run_part(
    store: Store, org: str, sc: _Scope, part: str, ids: Sequence[str]
) -> list[bytes | None]:
    if not ids:
        return []
    key = K.OrgKeys(org).run_part(sc.cycle, sc.run_id, sc.attempt, part)
    return await _hmget(redis_of(store), key, ids)


async def _scope_results(
    store: Store, org: str, sc: _Scope
) -> tuple[list[KRScore], list[GraderEffect]]:
    krs = [
        KR_SCORE_DECODER.decode(r)
        for r in await _run_part(store, org, sc, "krs", sc.kr_ids)
        if r is not None
    ]
    graders = [
        GRADER_DECODER.decode(r)
        for r in await _run_part(store, org, sc, "graders", sc.grader_ids)
        if r is not None
    ]
    return krs, graders


async def _adjustments(store: Store, org: str, sc: _Scope) -> dict[str, AdjustmentOut]:
    raw = await _hgetall_pages(
        redis_of(store), K.OrgKeys(org).session_adjustments(sc.cycle, sc.session_id)
    )
    return {k: _adj_decoder.decode(v) for k, v in raw.items()}


async def _scope_krs(store: Store, org: str, sc: _Scope) -> dict[str, bytes]:
    return await _hmget_found(redis_of(store), K.OrgKeys(org).krs(sc.cycle).data, sc.kr_ids)


# --- the what-if table and its baseline fit -------------------------------------------------

_baselines: OrderedDict[tuple[str, str, str], CalibrationFit] = OrderedDict()
_BASELINES_KEPT = 8


def _preview(
    table: GradeTable,
    model: str,
    confidence: float,
    changes: list[Change],
    known: frozenset[str],
    min_graders: int,
    cache_key: tuple[str, str, str],
) -> WhatIfResult:
    spec = _model_from_name(model, confidence=confidence)
    baseline = _baselines.get(cache_key)
    if baseline is None:
        baseline = spec.fit(table)
        _baselines[cache_key] = baseline
        while len(_baselines) > _BASELINES_KEPT:
            _baselines.popitem(last=False)
    return what_if(
        table, spec, changes, baseline=baseline, known_graders=known, min_graders=min_graders
    )


_tables: OrderedDict[tuple[str, str, str], tuple[tuple[bytes | None, bytes | None], GradeTable]] = (
    OrderedDict()
)


async def _scope_table(store: Store, org: str, sc: _Scope) -> GradeTable:
    client = redis_of(store)
    okeys = K.OrgKeys(org)
    # The organisation's change clock moves with every grade or KR written, and the
    # catalogue revision with every new catalogue: while both stand, the scope's table
    # (and so its baseline fit) is the one built last time.
    async with client.pipeline(transaction=False) as pipe:
        pipe.get(okeys.clock)
        pipe.hget(okeys.catalogue, "latest")
        clock, revision = await pipe.execute()
    cache_key = (org, sc.cycle, sc.session_id)
    cached = _tables.get(cache_key)
    if cached is not None and cached[0] == (clock, revision):
        _tables.move_to_end(cache_key)
        return cached[1]
    grades = await _hmget_found(client, okeys.grades(sc.cycle).data, sc.grade_keys)
    if not grades:
        raise ProblemError(409, "the session's grades are no longer stored; nothing to preview")
    krs = await _scope_krs(store, org, sc)
    stored_scale = await store.cycle_scale(org, sc.cycle, None)
    catalogue = await load_org_catalogue(store, org)
    table, _ = await anyio.to_thread.run_sync(
        functools.partial(
            build_table, grades, krs, parse_scale(stored_scale), parse_scale(sc.scale), catalogue
        )
    )
    _tables[cache_key] = ((clock, revision), table)
    while len(_tables) > _BASELINES_KEPT:
        _tables.popitem(last=False)
    return table


# --- the hook the owner endpoints call ------------------------------------------------------


async def final_owner_view(
    store: Store, org: str, cycle: str, owners: list[OwnerOut]
) -> list[OwnerOut]:
    """Owners as the compensation endpoints serve them once sessions lock.

    An owner marked ``final`` (the cycle has locked sessions) gets the final
    achievement their session locked, with that session's run; an owner no locked
    session covers stays ``published-provisional``. Other owners pass unchanged.
    """
    finals = [o for o in owners if o.state == "final"]
    if not finals:
        return owners
    raws = await redis_of(store).hmget(
        K.OrgKeys(org).final_owners(cycle), [f"o:{o.owner_id}" for o in finals]
    )
    found = {o.owner_id: raw for o, raw in zip(finals, raws, strict=True)}
    out: list[OwnerOut] = []
    for o in owners:
        if o.state != "final":
            out.append(o)
            continue
        raw = found.get(o.owner_id)
        if raw is None:
            out.append(msgspec.structs.replace(o, state="published-provisional"))
            continue
        rec = _final_decoder.decode(raw)
        a = rec.owner
        out.append(
            OwnerOut(
                owner_id=o.owner_id,
                n_krs=a.n_krs,
                achievement=a.achievement,
                std_error=a.std_error,
                ci_low=a.ci_low,
                ci_high=a.ci_high,
                reason=a.reason,
                state="final",
                run_id=rec.run_id,
            )
        )
    return out


# --- the operations: what the API controllers and the web pages both call -------------------
#
# Each takes the store, the organisation and cycle, ids, the acting key where it writes,
# and a body struct; it returns a struct or raises ProblemError (4xx), so an HTTP call and
# a web form run the same checks, the same Lua scripts and write the same audit entries.


def _missing(cycle: str, session_id: str) -> ProblemError:
    return ProblemError(404, f"no session {session_id!r} in cycle {cycle!r}")


def _locked(session_id: str) -> ProblemError:
    return ProblemError(
        409, f"session {session_id!r} is locked; reopen it (admin) before adjusting"
    )


async def _resolve_run(store: Store, org: str, cycle: str, run_id: str | None) -> dict[str, str]:
    if run_id is None:
        published, _ = await store.published_run(org, cycle)
        if published is None:
            raise ProblemError(
                404,
                f"cycle {cycle!r} has no published run; publish one or pin the session with run_id",
            )
        run_id = published[0]
    run = await store.get_run(org, cycle, run_id)
    if run is None:
        raise ProblemError(404, f"no run {run_id!r} in cycle {cycle!r}")
    if run.get("status") != "done":
        raise ProblemError(
            409, f"run {run_id!r} is {run.get('status')}; a session needs a finished run"
        )
    return run


def _check_session_in(data: SessionIn) -> str | None:
    """The checks of a new session's body that need no reads; the cleaned title."""
    errors: list[FieldProblem] = []
    check_id(data.facilitator, "facilitator", None, errors)
    check_id(data.org_unit, "org_unit", None, errors)
    for i, owner in enumerate(data.owner_ids or []):
        check_id(owner, f"owner_ids[{i}]", None, errors)
    if errors:
        raise ProblemError(400, "invalid session", errors=errors)
    if (data.owner_ids is None) == (data.org_unit is None):
        raise _bad(
            "give the scope as owner_ids or as org_unit (exactly one)",
            "owner_ids",
            "exactly one of owner_ids and org_unit",
        )
    if data.owner_ids is not None and not data.owner_ids:
        raise _bad("owner_ids is empty: the session would cover no one", "owner_ids")
    if not 0 <= data.min_graders <= 1000:
        raise _bad("min_graders must be between 0 and 1000", "min_graders")
    return _check_text(data.title, "title", required=False)


async def _scope_kr_ids(
    store: Store, org: str, cycle: str, data: SessionIn, scores: list[KRScore], run_id: str
) -> tuple[list[str], list[str]]:
    """The run's KRs the scope covers, and the named owners with none of them."""
    unmatched: list[str] = []
    if data.owner_ids is not None:
        wanted = set(data.owner_ids)
        kr_ids = [k.kr_id for k in scores if k.owner_id in wanted]
        seen = {k.owner_id for k in scores if k.owner_id in wanted}
        unmatched = sorted(wanted - seen)
        field, what = "owner_ids", f"owners {', '.join(sorted(wanted)[:10])}"
    else:
        stored = await store.all_items(org, cycle, "krs")
        in_unit = {
            kr_id
            for kr_id, raw in stored.items()
            if _kr_decoder.decode(raw).org_unit == data.org_unit
        }
        kr_ids = [k.kr_id for k in scores if k.kr_id in in_unit]
        field, what = "org_unit", f"org unit {data.org_unit!r}"
    if not kr_ids:
        raise ProblemError(
            400,
            f"the session scope matches no one: no KR of {what} is in run {run_id!r}",
            errors=[FieldProblem(problem="matches no KR of the run", field=field)],
        )
    return kr_ids, unmatched


async def open_session(
    store: Store, org: str, cycle: str, data: SessionIn, actor: ApiKeyRecord
) -> SessionOut:
    """Create a session on a scope of owners (or an org unit), pinned to a finished run."""
    _check_cycle(cycle)
    title = _check_session_in(data)
    run = await _resolve_run(store, org, cycle, data.run_id)
    attempt = int(run["result_attempt"])
    scores = await kr_scores(store, org, cycle, run["run_id"], attempt)
    kr_ids, unmatched = await _scope_kr_ids(store, org, cycle, data, scores, run["run_id"])
    in_scope = set(kr_ids)
    owners = sorted({k.owner_id for k in scores if k.kr_id in in_scope and k.owner_id})
    grades = await store.all_items(org, cycle, "grades")
    grade_keys = [p for p in grades if p.partition("\x1f")[0] in in_scope]
    grader_ids = sorted({p.partition("\x1f")[2] for p in grade_keys})
    sid = f"{time.time_ns() // 1_000_000:013x}{secrets.token_hex(3)}"
    scope = _Scope(
        session_id=sid,
        cycle=cycle,
        facilitator=data.facilitator,
        title=title,
        org_unit=data.org_unit,
        owner_ids=owners,
        unmatched_owner_ids=unmatched,
        run_id=run["run_id"],
        attempt=attempt,
        model=run["model"],
        scale=run["scale"],
        confidence=float(run["confidence"]),
        min_graders=data.min_graders,
        kr_ids=sorted(kr_ids),
        grader_ids=grader_ids,
        grade_keys=grade_keys,
        created_us=_now_us(),
        created_by=actor.name or actor.key_id,
    )
    okeys = K.OrgKeys(org)
    async with redis_of(store).pipeline(transaction=True) as pipe:
        pipe.hset(okeys.session(cycle, sid), mapping={"record": _mp(scope), "status": "open"})
        pipe.zadd(okeys.sessions(cycle), {sid: scope.created_us})
        pipe.xadd(
            okeys.audit,
            _audit_fields(
                "session.created",
                cycle,
                sid,
                actor,
                {
                    "facilitator": data.facilitator,
                    "title": title,
                    "run_id": run["run_id"],
                    "owner_ids": data.owner_ids,
                    "org_unit": data.org_unit,
                    "n_krs": len(kr_ids),
                    "n_graders": len(grader_ids),
                },
            ),
        )
        await pipe.execute()
    fresh = _Loaded(
        scope=scope, status="open", locked_us=None, locked_by=None, reopened=0, n_adjustments=0
    )
    return _session_out(fresh)


async def cycle_sessions(store: Store, org: str, cycle: str, limit: int = 100) -> list[SessionOut]:
    """The cycle's sessions, newest first."""
    _check_cycle(cycle)
    ids = await redis_of(store).zrevrange(K.OrgKeys(org).sessions(cycle), 0, limit - 1)
    return [_session_out(await _load(store, org, cycle, _s(i))) for i in ids]


async def read_session(store: Store, org: str, cycle: str, session_id: str) -> SessionOut:
    """One session (404 when the cycle has no such session)."""
    return _session_out(await _load(store, org, cycle, session_id))


async def session_agenda(
    store: Store,
    org: str,
    cycle: str,
    session_id: str,
    *,
    max_gaps: int = 20,
    min_gap: float = 0.1,
) -> Agenda:
    """What deserves the room's time, in order, each item with its reasons."""
    s = await _load(store, org, cycle, session_id)
    krs, graders = await _scope_results(store, org, s.scope)
    stored = await _scope_krs(store, org, s.scope)
    descriptions = {k: _kr_decoder.decode(v).description for k, v in stored.items()}
    # the core withholds grader statistics itself when the scope has too few graders
    return build_agenda(
        krs,
        graders,
        parse_scale(s.scope.scale),
        descriptions=descriptions,
        min_graders=s.scope.min_graders,
        max_gaps=max_gaps,
        min_gap=min_gap,
    )


async def preview_changes(
    store: Store, org: str, cycle: str, session_id: str, data: WhatIfIn, actor: ApiKeyRecord
) -> WhatIfOut:
    """Recalculate the scope with proposed changes; nothing is saved, the preview is audited."""
    if len(data.changes) > _MAX_CHANGES:
        raise _bad(f"at most {_MAX_CHANGES} changes per preview", "changes")
    s = await _load(store, org, cycle, session_id)
    sc = s.scope
    started = time.perf_counter()
    table = await _scope_table(store, org, sc)
    in_table = set(table.grader_ids)
    outside = sorted(
        {
            g
            for c in data.changes
            if (g := getattr(c, "grader_id", None)) is not None and g not in in_table
        }
    )
    known: frozenset[str] = frozenset()
    if outside:
        found = await _run_part(store, org, sc, "graders", outside)
        known = frozenset(g for g, raw in zip(outside, found, strict=True) if raw is not None)
    result = await anyio.to_thread.run_sync(
        functools.partial(
            _preview,
            table,
            sc.model,
            sc.confidence,
            list(data.changes),
            known,
            sc.min_graders,
            (org, session_id, table.input_hash),
        )
    )
    elapsed = 1000 * (time.perf_counter() - started)
    await append_audit(
        store,
        org,
        kind="whatif.previewed",
        cycle=cycle,
        session_id=session_id,
        actor=actor,
        data={
            "changes": msgspec.to_builtins(data.changes),
            "n_krs_moved": len(result.krs),
            "crossings": list(result.crossings),
        },
        at_us=_now_us(),
    )
    return WhatIfOut(session_id=session_id, run_id=sc.run_id, elapsed_ms=elapsed, result=result)


def _checked_grade(sc: _Scope, data: AdjustmentIn) -> float:
    if data.kr_id not in set(sc.kr_ids):
        raise _bad(f"KR {data.kr_id!r} is not in this session's scope", "kr_id")
    scale = parse_scale(sc.scale)
    value = data.final_grade
    if not math.isfinite(value) or not scale.low <= value <= scale.high:
        raise _bad(
            f"final_grade {value} is outside the {scale.name} scale "
            f"[{scale.low:g}, {scale.high:g}]",
            "final_grade",
        )
    return float(value)


async def set_adjustment(
    store: Store, org: str, cycle: str, session_id: str, data: AdjustmentIn, actor: ApiKeyRecord
) -> AdjustmentOut:
    """Set a KR's final grade with a reason code and comment; 409 once the session is locked."""
    s = await _load(store, org, cycle, session_id)
    sc = s.scope
    if s.status != "open":
        raise _locked(session_id)
    comment = _check_text(data.comment, "comment", required=True)
    assert comment is not None
    value = _checked_grade(sc, data)
    raw_score = (await _run_part(store, org, sc, "krs", [data.kr_id]))[0]
    score = None if raw_score is None else KR_SCORE_DECODER.decode(raw_score)
    okeys = K.OrgKeys(org)
    keys = [
        okeys.session(cycle, session_id),
        okeys.session_adjustments(cycle, session_id),
        okeys.session_adjustment_log(cycle, session_id),
        okeys.audit,
    ]
    client = redis_of(store)
    for _ in range(10):
        current = await client.hget(keys[1], data.kr_id)
        prev = None if current is None else _adj_decoder.decode(current)
        old = prev.new_value if prev is not None else (score.calibrated_grade if score else None)
        now = _now_us()
        adj = AdjustmentOut(
            adjustment_id=f"{now:x}{secrets.token_hex(2)}",
            session_id=session_id,
            kr_id=data.kr_id,
            owner_id=score.owner_id if score else None,
            calibrated_grade=score.calibrated_grade if score else None,
            old_value=old,
            new_value=value,
            reason_code=data.reason_code,
            comment=comment,
            by_key_id=actor.key_id,
            by_name=actor.name,
            at=_dt(now),
        )
        audit = _audit_pairs("adjustment.set", cycle, session_id, actor, msgspec.to_builtins(adj))
        args = [data.kr_id, current or b"", _mp(adj), *audit]
        outcome = await _run_script(store, _ADJUST, keys, args)
        if outcome == "ok":
            return adj
        if outcome == "locked":
            raise _locked(session_id)
        if outcome == "missing":
            raise _missing(cycle, session_id)
    raise ProblemError(409, "the KR is being adjusted concurrently; try again")


async def session_adjustments(
    store: Store, org: str, cycle: str, session_id: str
) -> list[AdjustmentOut]:
    """Every adjustment made in the session, oldest first (old and new values kept)."""
    await _load(store, org, cycle, session_id)
    raw = await redis_of(store).lrange(
        K.OrgKeys(org).session_adjustment_log(cycle, session_id), 0, -1
    )
    return [_adj_decoder.decode(r) for r in raw]


async def final_scores(store: Store, org: str, cycle: str, session_id: str) -> list[FinalScore]:
    """The scope's KRs: calibrated grade and final grade (adjusted where the room did)."""
    s = await _load(store, org, cycle, session_id)
    krs, _ = await _scope_results(store, org, s.scope)
    adjusted = await _adjustments(store, org, s.scope)
    return [
        FinalScore(
            kr_id=k.kr_id,
            owner_id=k.owner_id,
            raw_grade=k.raw_grade,
            calibrated_grade=k.calibrated_grade,
            ci_low=k.ci_low,
            ci_high=k.ci_high,
            final_grade=adjusted[k.kr_id].new_value if k.kr_id in adjusted else k.calibrated_grade,
            adjusted=k.kr_id in adjusted,
        )
        for k in krs
    ]


async def _final_owners(
    store: Store, org: str, sc: _Scope, adjusted: Mapping[str, AdjustmentOut]
) -> list[OwnerAchievement]:
    """The scope owners' achievements with the adjusted KR grades folded in."""
    krs, _ = await _scope_results(store, org, sc)
    owner_raw = await _run_part(store, org, sc, "owners", sc.owner_ids)
    owners = [OWNER_DECODER.decode(r) for r in owner_raw if r is not None]
    weights = {
        k: w
        for k, raw in (await _scope_krs(store, org, sc)).items()
        if (w := _kr_decoder.decode(raw).weight) is not None
    }
    changed = {k: a.new_value for k, a in adjusted.items()}
    return list(final_owners(krs, owners, changed, weights=weights))


async def _announce_lock(
    store: Store,
    org: str,
    sc: _Scope,
    final: Sequence[OwnerAchievement],
    n_adjustments: int,
    actor: ApiKeyRecord,
) -> None:
    where = {"cycle": sc.cycle, "session_id": sc.session_id, "run_id": sc.run_id}
    await emit(
        store,
        org,
        "session.locked",
        {
            **where,
            "facilitator": sc.facilitator,
            "n_krs": len(sc.kr_ids),
            "n_owners": len(final),
            "n_adjustments": n_adjustments,
            "locked_by": actor.name or actor.key_id,
        },
    )
    owners = [
        {
            "owner_id": o.owner_id,
            "achievement": o.achievement,
            "ci_low": o.ci_low,
            "ci_high": o.ci_high,
        }
        for o in final
    ]
    await emit(store, org, "scores.final", {**where, "owners": owners})


async def lock_session(
    store: Store,
    org: str,
    cycle: str,
    session_id: str,
    data: LockIn | None,
    actor: ApiKeyRecord,
) -> SessionOut:
    """Freeze the final scores: the scope's owners become ``final`` on the owner endpoints."""
    comment = _check_text(data.comment if data else None, "comment", required=False)
    okeys = K.OrgKeys(org)
    keys = [
        okeys.session(cycle, session_id),
        okeys.final_owners(cycle),
        okeys.cycle(cycle),
        okeys.audit,
        okeys.session_adjustment_log(cycle, session_id),
    ]
    client = redis_of(store)
    for _ in range(10):
        s = await _load(store, org, cycle, session_id)
        sc = s.scope
        if s.status != "open":
            raise ProblemError(409, f"session {session_id!r} is already locked")
        seen = int(await client.llen(keys[4]))
        adjusted = await _adjustments(store, org, sc)
        final = await _final_owners(store, org, sc, adjusted)
        audit = _audit_pairs(
            "session.locked",
            cycle,
            session_id,
            actor,
            {
                "comment": comment,
                "run_id": sc.run_id,
                "n_adjustments": len(adjusted),
                "final_owners": [msgspec.to_builtins(o) for o in final],
            },
        )
        args: list[Any] = [seen, _now_us(), actor.key_id, actor.name or "", len(audit), *audit]
        for o in final:
            rec = _FinalRecord(owner=o, session_id=session_id, run_id=sc.run_id)
            args.extend((o.owner_id, _mp(rec), session_id))
        outcome = await _run_script(store, _LOCK, keys, args)
        if outcome == "conflict":
            continue  # an adjustment landed meanwhile: recompute with it
        if outcome.startswith("overlap:"):
            owner, _, other = outcome.removeprefix("overlap:").rpartition(":")
            raise ProblemError(
                409,
                f"owner {owner!r} is already final through locked session {other!r}; "
                "reopen that session (admin) or leave the owner out of this one",
            )
        if outcome == "missing":
            raise _missing(cycle, session_id)
        if outcome != "ok":
            raise ProblemError(409, f"session {session_id!r} is already {outcome}")
        await _announce_lock(store, org, sc, final, len(adjusted), actor)
        return await read_session(store, org, cycle, session_id)
    raise ProblemError(409, "adjustments keep arriving; lock again when the room is done")


async def reopen_session(
    store: Store, org: str, cycle: str, session_id: str, data: ReopenIn, actor: ApiKeyRecord
) -> SessionOut:
    """Reopen a locked session (admin, with a reason); its owners are no longer final."""
    reason = _check_text(data.reason, "reason", required=True)
    s = await _load(store, org, cycle, session_id)
    if s.status != "locked":
        raise ProblemError(409, f"session {session_id!r} is not locked")
    okeys = K.OrgKeys(org)
    audit = _audit_pairs("session.reopened", cycle, session_id, actor, {"reason": reason})
    outcome = await _run_script(
        store,
        _REOPEN,
        [
            okeys.session(cycle, session_id),
            okeys.final_owners(cycle),
            okeys.cycle(cycle),
            okeys.audit,
        ],
        [session_id, len(audit), *audit, *s.scope.owner_ids],
    )
    if outcome != "ok":
        raise ProblemError(409, f"session {session_id!r} is {outcome}, not locked")
    return await read_session(store, org, cycle, session_id)


async def session_audit_entries(
    store: Store, org: str, cycle: str, session_id: str
) -> list[AuditEntry]:
    """The session's audit entries, oldest first (404 when there is no such session)."""
    await _load(store, org, cycle, session_id)
    return await read_audit(store, org, cycle=cycle, session_id=session_id)


async def export_audit(
    store: Store, org: str, cycle: str | None, session_id: str | None, after: str | None, limit: int
) -> list[AuditEntry]:
    """The organisation's audit entries oldest first, optionally of one cycle or session."""
    if after is not None and not re.fullmatch(r"\d+-\d+", after):
        raise _bad(f"invalid entry id {after!r}", "after", "an id looks like 1700000000000-0")
    return await read_audit(
        store, org, cycle=cycle, session_id=session_id, after=after, limit=limit
    )


def audit_csv_response(entries: list[AuditEntry], name: str) -> Response[bytes]:
    """Audit entries as a CSV download named ``name``.csv (``data`` as JSON in its column)."""
    return Response(
        audit_csv(entries),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
    )


# --- routes ---------------------------------------------------------------------------------


class SessionAt(NamedTuple):
    """Where one session is: the leading arguments of every operation on it."""

    store: Store
    org: str
    cycle: str
    session_id: str


async def _session_at(
    store: NamedDependency[Store],
    org: FromPath[str],
    cycle: FromPath[str],
    session_id: FromPath[str],
) -> SessionAt:
    return SessionAt(store, org, cycle, session_id)


_READ = ("calibration:run", "scores:read")


class SessionsController(Controller):
    """Calibration sessions of a cycle."""

    path = "/v1/orgs/{org:str}/cycles/{cycle:str}/sessions"
    opt = {SCOPE_OPT: None}  # noqa: RUF012 - any key of the org; routes name their scope
    tags = ("sessions",)
    # the path parameters of a session's routes, read once for every handler
    dependencies = {"at": Provide(_session_at)}  # noqa: RUF012 - a litestar Controller attribute

    @post("/", opt={SCOPE_OPT: "calibration:run"}, status_code=201)
    async def create(
        self,
        request: Request[Any, Any, Any],
        store: NamedDependency[Store],
        org: FromPath[str],
        cycle: FromPath[str],
        data: JSONBody[SessionIn],
    ) -> SessionOut:
        """Create a session on a scope of owners (or an org unit), pinned to a finished run."""
        return await open_session(store, org, cycle, data, _actor(request))

    @get("/", opt={SCOPE_OPT: _READ})
    async def list_sessions(
        self,
        store: NamedDependency[Store],
        org: FromPath[str],
        cycle: FromPath[str],
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> list[SessionOut]:
        """The cycle's sessions, newest first."""
        return await cycle_sessions(store, org, cycle, limit)

    @get("/{session_id:str}", opt={SCOPE_OPT: _READ})
    async def get_session(self, at: NamedDependency[SessionAt]) -> SessionOut:
        """One session."""
        return await read_session(*at)

    @get("/{session_id:str}/agenda", opt={SCOPE_OPT: _READ})
    async def agenda(
        self,
        at: NamedDependency[SessionAt],
        max_gaps: Annotated[int, QueryParameter(ge=0, le=1000)] = 20,
        min_gap: Annotated[float, QueryParameter(ge=0.0, le=1.0)] = 0.1,
    ) -> Agenda:
        """What deserves the room's time, in order, each item with its reasons."""
        return await session_agenda(*at, max_gaps=max_gaps, min_gap=min_gap)

    @post("/{session_id:str}/what-if", opt={SCOPE_OPT: "calibration:run"}, status_code=200)
    async def preview(
        self,
        request: Request[Any, Any, Any],
        at: NamedDependency[SessionAt],
        data: JSONBody[WhatIfIn],
    ) -> WhatIfOut:
        """Recalculate the scope with proposed changes; nothing is saved (previews are audited)."""
        return await preview_changes(*at, data, _actor(request))

    @post("/{session_id:str}/adjustments", opt={SCOPE_OPT: "calibration:run"}, status_code=201)
    async def adjust(
        self,
        request: Request[Any, Any, Any],
        at: NamedDependency[SessionAt],
        data: JSONBody[AdjustmentIn],
    ) -> AdjustmentOut:
        """Set a KR's final grade with a reason code and comment; 409 once the session is locked."""
        return await set_adjustment(*at, data, _actor(request))

    @get("/{session_id:str}/adjustments", opt={SCOPE_OPT: _READ})
    async def list_adjustments(self, at: NamedDependency[SessionAt]) -> list[AdjustmentOut]:
        """Every adjustment made in the session, oldest first (old and new values kept)."""
        return await session_adjustments(*at)

    @get("/{session_id:str}/scores", opt={SCOPE_OPT: _READ})
    async def scores(self, at: NamedDependency[SessionAt]) -> list[FinalScore]:
        """The scope's KRs: calibrated grade and final grade (adjusted where the room did)."""
        return await final_scores(*at)

    @post("/{session_id:str}/lock", opt={SCOPE_OPT: "calibration:run"}, status_code=200)
    async def lock(
        self,
        request: Request[Any, Any, Any],
        at: NamedDependency[SessionAt],
        data: JSONBody[LockIn | None] = None,
    ) -> SessionOut:
        """Freeze the final scores: the scope's owners become ``final`` on the owner endpoints."""
        return await lock_session(*at, data, _actor(request))

    @post("/{session_id:str}/reopen", opt={SCOPE_OPT: "admin"}, status_code=200)
    async def reopen(
        self,
        request: Request[Any, Any, Any],
        at: NamedDependency[SessionAt],
        data: JSONBody[ReopenIn],
    ) -> SessionOut:
        """Reopen a locked session (admin, with a reason); its owners are no longer final."""
        return await reopen_session(*at, data, _actor(request))

    @get("/{session_id:str}/audit", opt={SCOPE_OPT: ("calibration:run", "hr:read")})
    async def session_audit(self, at: NamedDependency[SessionAt]) -> list[AuditEntry]:
        """The session's audit entries, oldest first."""
        return await session_audit_entries(*at)

    @get(
        "/{session_id:str}/audit.csv",
        opt={SCOPE_OPT: ("calibration:run", "hr:read")},
        media_type="text/csv",
    )
    async def session_audit_csv(self, at: NamedDependency[SessionAt]) -> Response[bytes]:
        """The session's audit entries as CSV (``data`` as JSON in its column)."""
        entries = await session_audit_entries(*at)
        return audit_csv_response(entries, f"audit-{at.cycle}-{at.session_id}")


async def _audit_entries(
    store: NamedDependency[Store],
    org: FromPath[str],
    cycle: Annotated[str | None, QueryParameter(description="one cycle")] = None,
    session_id: Annotated[str | None, QueryParameter(description="one session")] = None,
    after: Annotated[str | None, QueryParameter(description="entries after this id")] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=100_000)] = 10_000,
) -> list[AuditEntry]:
    return await export_audit(store, org, cycle, session_id, after, limit)


class AuditController(Controller):
    """The organisation's audit log (read only: no route edits or deletes it)."""

    path = "/v1/orgs/{org:str}"
    opt = {SCOPE_OPT: ("calibration:run", "hr:read")}  # noqa: RUF012 - merged into each route
    tags = ("sessions",)
    # both routes take the same filters: one provider reads them and the entries
    dependencies = {"entries": Provide(_audit_entries)}  # noqa: RUF012 - a litestar Controller attribute

    @get("/audit")
    async def export(self, entries: NamedDependency[list[AuditEntry]]) -> list[AuditEntry]:
        """Audit entries oldest first, optionally of one cycle or session."""
        return entries

    @get("/audit.csv", media_type="text/csv")
    async def export_csv(
        self, org: FromPath[str], entries: NamedDependency[list[AuditEntry]]
    ) -> Response[bytes]:
        """The same entries as CSV (``data`` as JSON in its column)."""
        return audit_csv_response(entries, f"audit-{org}")
