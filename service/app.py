"""The HTTP API: one :func:`create_app` factory wiring settings, store and routes.

Controllers are thin: decode and check input (:mod:`service.ingest`), call the core
(:mod:`calibrate`, :mod:`anchors`) or the store, return a msgspec struct. Errors
become problem details in :mod:`service.problems`. Fits run in worker tasks,
off the event loop (:mod:`service.runs`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import csv
import functools
import hashlib
import io
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import anyio
import msgspec
from litestar import Controller, Litestar, Request, Response, delete, get, post, put
from litestar.datastructures import State
from litestar.di import Dependency, Provide
from litestar.openapi.config import OpenAPIConfig
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter, SkipValidationMarker

from anchors import (
    Catalogue,
    EvidenceError,
    Scale,
    check_outcome,
    default_catalogue,
    default_catalogue_text,
    grade_evidence,
    load_catalogue,
    parse_scale,
)
from calibrate import MODEL_NAMES, GraderEffect, KRScore, model_from_name
from service import keys as K  # noqa: N812 - read as "keys"
from service.auth import (
    PUBLISHED_READ_OPT,
    SCOPE_OPT,
    auth_middleware,
    new_api_key,
    prefetched,
)
from service.drift_api import DriftController
from service.events import EventsController, WebhooksController, WebhookWorker
from service.ingest import check_id, parse_grades, parse_krs
from service.metrics import Metrics, metrics_middleware
from service.openapi import bulk_body, document_problems
from service.problems import ProblemError, exception_handlers
from service.results import GRADER_DECODER, KR_SCORE_DECODER, OWNER_DECODER, all_rows
from service.runs import RunWorker, load_org_catalogue, new_run_id, to_key_result
from service.schemas import (
    AchievementState,
    ApiKeyCreated,
    ApiKeyIn,
    ApiKeyOut,
    CatalogueOut,
    EvidenceOut,
    FieldProblem,
    GradeOut,
    GradesIn,
    GradeValue,
    GradeVersion,
    HealthOut,
    KRIn,
    KROut,
    KRsIn,
    OutcomeOut,
    OwnerOut,
    Page,
    RunIn,
    RunOut,
    UpsertResult,
)
from service.sessions import AuditController, SessionsController, final_owner_view
from service.settings import Settings
from service.store import ApiKeyRecord, IdempotencyConflictError, Item, ItemKind, ResultPart, Store
from service.web import WebPlugin

__all__ = ["create_app"]

_log = logging.getLogger("okrcal.service")
T = TypeVar("T")
_encode_msgpack = msgspec.msgpack.Encoder().encode
_grade_decoder = msgspec.msgpack.Decoder(GradeValue)
_kr_decoder = msgspec.msgpack.Decoder(KRIn)

# Injected by name from the app's own providers; skipping validation spares an
# isinstance check against the runtime-checkable Protocol on every request.
StoreDep = Annotated[Store, Dependency(kind="named"), SkipValidationMarker()]
SettingsDep = Annotated[Settings, Dependency(kind="named"), SkipValidationMarker()]

_MAX_PAGE = 5000
_NOTHING_PUBLISHED = "cycle {cycle!r} has no published run; pass ?run_id= to read another"
Limit = Annotated[int, QueryParameter(ge=1, le=_MAX_PAGE, description="items per page")]
Cursor = Annotated[str | None, QueryParameter(description="next_cursor of the previous page")]
UpdatedAfter = Annotated[
    datetime | None, QueryParameter(description="only items changed after this time (ISO 8601)")
]
RunId = Annotated[
    str | None, QueryParameter(description="read this run instead of the published one")
]


# --- small helpers -------------------------------------------------------------------------


def _now_us() -> int:
    return time.time_ns() // 1000


def _dt(us: int | float) -> datetime:
    return datetime.fromtimestamp(us / 1_000_000, UTC)


def _check_cycle(cycle: str) -> str:
    if not K.CYCLE_PATTERN.match(cycle):
        raise ProblemError(
            400,
            f"invalid cycle id {cycle!r}",
            errors=[FieldProblem(problem="use 1-64 of A-Z a-z 0-9 . _ -", field="cycle")],
        )
    return cycle


def _item_cursor(cursor: str | None, updated_after: datetime | None) -> int:
    after = 0
    if cursor is not None:
        try:
            after = int(cursor)
        except ValueError:
            raise ProblemError(
                400, "invalid cursor", errors=[FieldProblem(problem="not a cursor", field="cursor")]
            ) from None
    if updated_after is not None:
        if updated_after.tzinfo is None:
            updated_after = updated_after.replace(tzinfo=UTC)
        after = max(after, int(updated_after.timestamp() * 1_000_000))
    return after


def _encode_cursor(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> str | None:
    if cursor is None:
        return None
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ProblemError(
            400, "invalid cursor", errors=[FieldProblem(problem="not a cursor", field="cursor")]
        ) from None


def _idempotency(
    request: Request[Any, Any, Any], body: bytes, extra: str
) -> tuple[str, str] | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 1 <= len(key) <= 200 or not key.isprintable():
        raise ProblemError(
            400,
            "invalid Idempotency-Key",
            errors=[FieldProblem(problem="1-200 printable characters", field="Idempotency-Key")],
        )
    digest = hashlib.sha256()
    for part in (request.headers.get("content-type", "").encode(), extra.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return key, digest.hexdigest()


def _key_out(record: ApiKeyRecord) -> ApiKeyOut:
    return ApiKeyOut(
        key_id=record.key_id,
        org=record.org,
        scopes=record.scopes,
        name=record.name,
        rate_limit=record.rate_limit,
        created_at=_dt(record.created_us),
        revoked_at=None if record.revoked_us is None else _dt(record.revoked_us),
    )


def _run_out(run: dict[str, str], published: bool) -> RunOut:
    def opt_int(name: str) -> int | None:
        value = run.get(name)
        return int(value) if value else None

    def opt_time(name: str) -> datetime | None:
        value = run.get(name)
        return datetime.fromtimestamp(float(value), UTC) if value else None

    created = opt_time("created_at")
    assert created is not None  # every run is created with it
    return RunOut(
        run_id=run["run_id"],
        cycle=run["cycle"],
        status=run["status"],  # type: ignore[arg-type]  # written only by this package
        model=run["model"],
        scale=run["scale"],
        confidence=float(run["confidence"]),
        published=published,
        created_at=created,
        started_at=opt_time("started_at"),
        finished_at=opt_time("finished_at") if run["status"] in ("done", "failed") else None,
        attempts=int(run.get("attempts") or 0),
        error=run.get("error") or None,
        input_hash=run.get("input_hash") or None,
        model_version=run.get("model_version") or None,
        n_grades=opt_int("n_grades"),
        n_krs=opt_int("n_krs"),
        n_graders=opt_int("n_graders"),
        summary=run.get("summary") or None,
    )


def _catalogue_out(revision: int, text: str, cat: Catalogue) -> CatalogueOut:
    return CatalogueOut(revision=revision, version=cat.version, toml=text, types=sorted(cat.types))


#: Bodies larger than this are decoded in a worker thread, so that a 10,000-row upload
#: does not hold up the small requests queued behind it on the event loop.
_INLINE_BODY_BYTES = 64 * 1024


async def _off_loop(fn: Callable[..., T], *args: Any) -> T:
    return await anyio.to_thread.run_sync(functools.partial(fn, *args))


def _scores_csv(raw_rows: list[bytes]) -> bytes:
    columns = list(KRScore.__struct_fields__)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for raw in raw_rows:
        score = KR_SCORE_DECODER.decode(raw)
        writer.writerow(["" if (v := getattr(score, c)) is None else v for c in columns])
    return buf.getvalue().encode()


def _kr_out(item: Item, catalogue: Catalogue) -> KROut:
    kr = _kr_decoder.decode(item.value)
    evidence: EvidenceOut | None = None
    reason: str | None = None
    try:
        graded = grade_evidence(to_key_result(kr), catalogue)
    except (EvidenceError, msgspec.ValidationError) as exc:
        reason = str(exc)
    else:
        if graded is None:
            reason = "the KR carries no evidence"
        else:
            evidence = EvidenceOut(
                grade=graded.grade,
                kr_type=graded.kr_type,
                level=graded.level,
                level_title=graded.level_title,
                reasons=list(graded.reasons),
                warnings=list(graded.warnings),
            )
    return KROut(
        kr=kr,
        version=item.version,
        updated_at=_dt(item.updated_us),
        evidence=evidence,
        evidence_reason=reason,
        outcome=_outcome(kr.description),
    )


def _outcome(description: str | None) -> OutcomeOut | None:
    if description is None:
        return None
    result = check_outcome(description)
    return OutcomeOut(
        is_output=result.is_output,
        triggers=list(result.triggers),
        reasons=list(result.reasons),
        suggestion=result.suggestion,
    )


def _evidence_checker(catalogue: Catalogue) -> Any:
    def check(kr: KRIn) -> str | None:
        try:
            grade_evidence(to_key_result(kr), catalogue)
        except EvidenceError as exc:
            return f"{exc.field}: {exc.problem}"
        except msgspec.ValidationError as exc:
            text = str(exc)
            field = text.rsplit("$.", 1)[-1].rstrip("`") if "$." in text else ""
            return f"{field}: {text.split(' - at ', 1)[0]}"
        return None

    return check


# --- controllers ---------------------------------------------------------------------------


class OpsController(Controller):
    """Liveness, readiness and metrics: no key needed."""

    path = "/"
    tags = ("operations",)

    @get("/healthz", sync_to_thread=False)
    def healthz(self) -> HealthOut:
        """The process answers."""
        return HealthOut(status="ok")

    @get("/readyz")
    async def readyz(self, store: StoreDep) -> Response[HealthOut]:
        """Ready when Redis answers; 503 otherwise (the service reconnects by itself)."""
        try:
            await store.ping()
        except Exception as exc:  # any failure to reach the store means not ready
            return Response(
                HealthOut(status="unavailable", detail=f"redis: {type(exc).__name__}"),
                status_code=503,
                headers={"Retry-After": "1"},
            )
        return Response(HealthOut(status="ok"))

    @get("/metrics", media_type="text/plain; version=0.0.4", sync_to_thread=False)
    def metrics(self, state: State) -> str:
        """Prometheus text format."""
        return state.metrics.render()  # type: ignore[no-any-return]


class AnchorsController(Controller):
    """The default anchor catalogue and the organisation's own, versioned."""

    path = "/v1/orgs/{org:str}/anchors"
    opt = {SCOPE_OPT: None}  # noqa: RUF012 - any key of the org; routes name their scope
    tags = ("anchors",)

    @get("/default", sync_to_thread=False)
    def default(self) -> CatalogueOut:
        """The catalogue shipped with okrcal (revision 0)."""
        return _catalogue_out(0, default_catalogue_text(), default_catalogue())

    @get("/")
    async def current(
        self,
        store: StoreDep,
        org: FromPath[str],
        revision: Annotated[int | None, QueryParameter(ge=1)] = None,
    ) -> CatalogueOut:
        """The organisation's catalogue (a given revision, or the current one; else the default)."""
        found = await store.get_catalogue(org, revision)
        if found is None:
            if revision is not None:
                raise ProblemError(404, f"no catalogue revision {revision}")
            return _catalogue_out(0, default_catalogue_text(), default_catalogue())
        rev, text = found
        return _catalogue_out(rev, text, load_catalogue(text))

    @put("/", opt={SCOPE_OPT: "anchors:admin"}, operation_class=bulk_body(None, toml=True))
    async def replace(
        self, request: Request[Any, Any, Any], store: StoreDep, org: FromPath[str]
    ) -> CatalogueOut:
        """Validate a TOML catalogue and make it the current revision."""
        body = await request.body()
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProblemError(400, "the catalogue must be UTF-8 TOML") from exc
        cat = load_catalogue(text)  # CatalogueError names the entry -> 400
        revision = await store.put_catalogue(org, text)
        return _catalogue_out(revision, text, cat)


class KRsController(Controller):
    """Key Results of a cycle, with their evidence."""

    path = "/v1/orgs/{org:str}/cycles/{cycle:str}/krs"
    opt = {SCOPE_OPT: None}  # noqa: RUF012 - any key of the org; routes name their scope
    tags = ("key results",)

    @post(
        "/",
        opt={SCOPE_OPT: "grades:write"},
        status_code=200,
        operation_class=bulk_body(KRsIn),
    )
    async def upsert(
        self,
        request: Request[Any, Any, Any],
        store: StoreDep,
        settings: SettingsDep,
        org: FromPath[str],
        cycle: FromPath[str],
    ) -> UpsertResult:
        """Bulk upsert of KRs (JSON or CSV), all or nothing; unchanged KRs are no-ops."""
        _check_cycle(cycle)
        body = await request.body()
        catalogue = await load_org_catalogue(store, org)
        parse = functools.partial(
            _krs_items,
            body,
            request.headers.get("content-type", "application/json"),
            settings.max_bulk_rows,
            catalogue,
        )
        items = await _off_loop(parse) if len(body) > _INLINE_BODY_BYTES else parse()
        return await _upsert(request, store, settings, org, cycle, "krs", items, body, "")

    @get("/", opt={SCOPE_OPT: "scores:read"})
    async def list_krs(
        self,
        store: StoreDep,
        org: FromPath[str],
        cycle: FromPath[str],
        limit: Limit = 1000,
        cursor: Cursor = None,
        updated_after: UpdatedAfter = None,
    ) -> Page[KROut]:
        """KRs in order of last change, with their evidence grades."""
        _check_cycle(cycle)
        items = await store.page_items(
            org, cycle, "krs", _item_cursor(cursor, updated_after), limit
        )
        catalogue = await load_org_catalogue(store, org)
        return Page(
            items=[_kr_out(i, catalogue) for i in items],
            next_cursor=str(items[-1].updated_us) if len(items) == limit else None,
        )

    @get("/{kr_id:str}", opt={SCOPE_OPT: "scores:read"})
    async def get_kr(
        self,
        store: StoreDep,
        org: FromPath[str],
        cycle: FromPath[str],
        kr_id: FromPath[str],
    ) -> KROut:
        """One KR with its evidence grade, the reasons, and the outcome check."""
        _check_cycle(cycle)
        item = await store.get_item(org, cycle, "krs", kr_id)
        if item is None:
            raise ProblemError(404, f"no KR {kr_id!r} in cycle {cycle!r}")
        return _kr_out(item, await load_org_catalogue(store, org))


def _grade_items(
    body: bytes, content_type: str, scale: Scale, max_rows: int
) -> list[tuple[str, bytes]]:
    rows = parse_grades(body, content_type, scale, max_rows=max_rows)
    return [
        (f"{g.kr_id}\x1f{g.grader_id}", _encode_msgpack(GradeValue(g.grade, g.owner_id)))
        for g in rows
    ]


def _krs_items(
    body: bytes, content_type: str, max_rows: int, catalogue: Catalogue
) -> list[tuple[str, bytes]]:
    rows = parse_krs(
        body, content_type, max_rows=max_rows, check_evidence=_evidence_checker(catalogue)
    )
    return [(kr.kr_id, _encode_msgpack(kr)) for kr in rows]


async def _upsert(
    request: Request[Any, Any, Any],
    store: Store,
    settings: Settings,
    org: str,
    cycle: str,
    kind: ItemKind,
    items: list[tuple[str, bytes]],
    body: bytes,
    extra: str,
) -> UpsertResult:
    idem = _idempotency(request, body, extra)
    try:
        counts = await store.upsert(
            org,
            cycle,
            kind,
            items,
            _now_us(),
            idempotency=idem,
            idempotency_ttl=settings.idempotency_ttl_seconds,
        )
    except IdempotencyConflictError as exc:
        raise ProblemError(
            422, str(exc), errors=[FieldProblem(problem="reused", field="Idempotency-Key")]
        ) from exc
    request.app.state.metrics.count(f"{kind}_written", counts.created + counts.updated)
    return UpsertResult(
        received=len(items),
        created=counts.created,
        updated=counts.updated,
        unchanged=counts.unchanged,
        replayed=counts.replayed,
    )


class GradesController(Controller):
    """Grades of a cycle: natural key (kr_id, grader_id), history kept."""

    path = "/v1/orgs/{org:str}/cycles/{cycle:str}/grades"
    opt = {SCOPE_OPT: None}  # noqa: RUF012 - any key of the org; routes name their scope
    tags = ("grades",)

    @post(
        "/",
        opt={SCOPE_OPT: "grades:write"},
        status_code=200,
        operation_class=bulk_body(GradesIn),
    )
    async def upsert(
        self,
        request: Request[Any, Any, Any],
        store: StoreDep,
        settings: SettingsDep,
        org: FromPath[str],
        cycle: FromPath[str],
        scale: Annotated[
            str | None, QueryParameter(description="scale of the grades (default: the cycle's)")
        ] = None,
    ) -> UpsertResult:
        """Bulk upsert (JSON or CSV), all or nothing; honours ``Idempotency-Key``."""
        _check_cycle(cycle)
        if scale is not None:
            parse_scale(scale)  # ScaleError -> 400 before anything is stored
        stored = await store.cycle_scale(org, cycle, scale)
        if scale is not None and parse_scale(stored) != parse_scale(scale):
            raise ProblemError(
                409,
                f"cycle {cycle!r} holds grades on the {stored} scale, not {scale}",
                errors=[FieldProblem(problem=f"the cycle's scale is {stored}", field="scale")],
            )
        body = await request.body()
        parse = functools.partial(
            _grade_items,
            body,
            request.headers.get("content-type", "application/json"),
            parse_scale(stored),
            settings.max_bulk_rows,
        )
        items = await _off_loop(parse) if len(body) > _INLINE_BODY_BYTES else parse()
        return await _upsert(request, store, settings, org, cycle, "grades", items, body, stored)

    @get("/", opt={SCOPE_OPT: "scores:read"})
    async def list_grades(
        self,
        store: StoreDep,
        org: FromPath[str],
        cycle: FromPath[str],
        limit: Limit = 1000,
        cursor: Cursor = None,
        updated_after: UpdatedAfter = None,
    ) -> Page[GradeOut]:
        """Grades in order of last change; ``updated_after`` for incremental sync."""
        _check_cycle(cycle)
        items = await store.page_items(
            org, cycle, "grades", _item_cursor(cursor, updated_after), limit
        )
        out = []
        for item in items:
            kr_id, _, grader_id = item.key.partition("\x1f")
            value = _grade_decoder.decode(item.value)
            out.append(
                GradeOut(
                    kr_id=kr_id,
                    grader_id=grader_id,
                    grade=value.grade,
                    owner_id=value.owner_id,
                    version=item.version,
                    updated_at=_dt(item.updated_us),
                )
            )
        return Page(
            items=out, next_cursor=str(items[-1].updated_us) if len(items) == limit else None
        )

    @get("/history", opt={SCOPE_OPT: "scores:read"})
    async def history(
        self,
        store: StoreDep,
        org: FromPath[str],
        cycle: FromPath[str],
        kr_id: FromQuery[str],
        grader_id: FromQuery[str],
    ) -> list[GradeVersion]:
        """Every value one grade has had, oldest first."""
        _check_cycle(cycle)
        items = await store.item_history(org, cycle, "grades", f"{kr_id}\x1f{grader_id}")
        if not items:
            raise ProblemError(404, f"no grade of KR {kr_id!r} by grader {grader_id!r}")
        out = []
        for item in items:
            value = _grade_decoder.decode(item.value)
            out.append(
                GradeVersion(
                    version=item.version,
                    grade=value.grade,
                    owner_id=value.owner_id,
                    updated_at=_dt(item.updated_us),
                )
            )
        return out


class CalibrationsController(Controller):
    """Calibration runs of a cycle: start, follow, publish."""

    path = "/v1/orgs/{org:str}/cycles/{cycle:str}/calibrations"
    opt = {SCOPE_OPT: None}  # noqa: RUF012 - any key of the org; routes name their scope
    tags = ("calibrations",)

    @post("/", opt={SCOPE_OPT: "calibration:run"}, status_code=202)
    async def start(
        self,
        store: StoreDep,
        org: FromPath[str],
        cycle: FromPath[str],
        data: JSONBody[RunIn],
    ) -> RunOut:
        """Queue a run (model, scale, confidence); 202 with its id. Workers execute it."""
        _check_cycle(cycle)
        model_from_name(data.model, confidence=data.confidence)  # ModelError -> 400
        stored = await store.cycle_scale(org, cycle, None)
        scale = parse_scale(data.scale if data.scale is not None else stored).name
        run_id = new_run_id()
        fields = {
            "run_id": run_id,
            "org": org,
            "cycle": cycle,
            "status": "queued",
            "model": data.model,
            "scale": scale,
            "confidence": repr(data.confidence),
            "created_at": f"{time.time():.6f}",
            "attempts": "0",
        }
        await store.create_run(org, cycle, run_id, fields)
        try:
            await store.enqueue_run(org, cycle, run_id)
        except Exception:
            # Not queued means never run: say so on the run rather than leave it "queued".
            failed = {**fields, "status": "failed", "error": "could not be queued; start again"}
            with contextlib.suppress(Exception):
                await store.create_run(org, cycle, run_id, failed)
            raise
        return _run_out(fields, published=False)

    @get("/", opt={SCOPE_OPT: ("calibration:run", "scores:read")})
    async def list_runs(
        self,
        store: StoreDep,
        org: FromPath[str],
        cycle: FromPath[str],
        limit: Limit = 100,
    ) -> list[RunOut]:
        """The cycle's runs, newest first."""
        _check_cycle(cycle)
        runs = await store.list_runs(org, cycle, limit)
        published, _ = await store.published_run(org, cycle)
        pub_id = published[0] if published else None
        return [_run_out(r, r["run_id"] == pub_id) for r in runs]

    @get("/{run_id:str}", opt={SCOPE_OPT: ("calibration:run", "scores:read")})
    async def get_run(
        self,
        store: StoreDep,
        org: FromPath[str],
        cycle: FromPath[str],
        run_id: FromPath[str],
    ) -> RunOut:
        """Status, summary, input hash and model version of one run."""
        _check_cycle(cycle)
        run = await store.get_run(org, cycle, run_id)
        if run is None:
            raise ProblemError(404, f"no run {run_id!r} in cycle {cycle!r}")
        published, _ = await store.published_run(org, cycle)
        return _run_out(run, published is not None and published[0] == run_id)

    @post("/{run_id:str}/publish", opt={SCOPE_OPT: "calibration:run"}, status_code=200)
    async def publish(
        self,
        store: StoreDep,
        org: FromPath[str],
        cycle: FromPath[str],
        run_id: FromPath[str],
    ) -> RunOut:
        """Make this finished run the cycle's published one (replacing any earlier)."""
        _check_cycle(cycle)
        outcome = await store.publish_run(org, cycle, run_id)
        if outcome == "missing":
            raise ProblemError(404, f"no run {run_id!r} in cycle {cycle!r}")
        if outcome != "ok":
            raise ProblemError(
                409, f"run {run_id!r} is {outcome}; only a done run can be published"
            )
        run = await store.get_run(org, cycle, run_id)
        assert run is not None
        return _run_out(run, published=True)


async def _resolve_run(
    store: Store, org: str, cycle: str, run_id: str | None
) -> tuple[str, int, AchievementState]:
    """The run to read results from: given, or the published one; its attempt and state."""
    published, locked = await store.published_run(org, cycle)
    if run_id is None:
        if published is None:
            raise ProblemError(404, _NOTHING_PUBLISHED.format(cycle=cycle))
        return published[0], published[1], "final" if locked else "published-provisional"
    if published is not None and published[0] == run_id:
        return published[0], published[1], "final" if locked else "published-provisional"
    run = await store.get_run(org, cycle, run_id)
    if run is None:
        raise ProblemError(404, f"no run {run_id!r} in cycle {cycle!r}")
    if run["status"] != "done":
        raise ProblemError(409, f"run {run_id!r} is {run['status']}; it has no results")
    return run_id, int(run["result_attempt"]), "provisional"


async def _result_page(
    store: Store,
    org: str,
    cycle: str,
    run_id: str | None,
    part: ResultPart,
    cursor: str | None,
    limit: int,
) -> tuple[list[tuple[str, bytes]], str | None, str, AchievementState]:
    _check_cycle(cycle)
    rid, attempt, state = await _resolve_run(store, org, cycle, run_id)
    rows = await store.result_page(org, cycle, rid, attempt, part, _decode_cursor(cursor), limit)
    nxt = _encode_cursor(rows[-1][0]) if len(rows) == limit else None
    return rows, nxt, rid, state


def _owner_out(raw: bytes, run_id: str, state: AchievementState) -> OwnerOut:
    o = OWNER_DECODER.decode(raw)
    return OwnerOut(
        owner_id=o.owner_id,
        n_krs=o.n_krs,
        achievement=o.achievement,
        std_error=o.std_error,
        ci_low=o.ci_low,
        ci_high=o.ci_high,
        reason=o.reason,
        state=state,
        run_id=run_id,
    )


class ResultsController(Controller):
    """Calibrated results, from the published run or ``?run_id=``."""

    path = "/v1/orgs/{org:str}/cycles/{cycle:str}"
    opt = {SCOPE_OPT: None}  # noqa: RUF012 - any key of the org; routes name their scope
    tags = ("results",)

    @get("/scores", opt={SCOPE_OPT: "scores:read"})
    async def scores(
        self,
        store: StoreDep,
        org: FromPath[str],
        cycle: FromPath[str],
        run_id: RunId = None,
        limit: Limit = 1000,
        cursor: Cursor = None,
    ) -> Page[KRScore]:
        """Calibrated KR scores with intervals, by KR id."""
        rows, nxt, _, _ = await _result_page(store, org, cycle, run_id, "krs", cursor, limit)
        return Page(items=[KR_SCORE_DECODER.decode(v) for _, v in rows], next_cursor=nxt)

    @get("/scores.csv", opt={SCOPE_OPT: "scores:read"}, media_type="text/csv")
    async def scores_csv(
        self,
        store: StoreDep,
        org: FromPath[str],
        cycle: FromPath[str],
        run_id: RunId = None,
    ) -> Response[bytes]:
        """Every calibrated KR score as CSV."""
        _check_cycle(cycle)
        rid, attempt, _ = await _resolve_run(store, org, cycle, run_id)
        raw_rows = await all_rows(store, org, cycle, rid, attempt, "krs")
        body = await _off_loop(_scores_csv, raw_rows)
        return Response(
            body,
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="scores-{cycle}-{rid}.csv"'},
        )

    @get("/graders", opt={SCOPE_OPT: "scores:read"})
    async def graders(
        self,
        store: StoreDep,
        org: FromPath[str],
        cycle: FromPath[str],
        run_id: RunId = None,
        limit: Limit = 1000,
        cursor: Cursor = None,
    ) -> Page[GraderEffect]:
        """The grader table: leniency, standard error, flag."""
        rows, nxt, _, _ = await _result_page(store, org, cycle, run_id, "graders", cursor, limit)
        return Page(items=[GRADER_DECODER.decode(v) for _, v in rows], next_cursor=nxt)

    @get("/owners", opt={SCOPE_OPT: "hr:read"})
    async def owners(
        self,
        store: StoreDep,
        org: FromPath[str],
        cycle: FromPath[str],
        run_id: RunId = None,
        limit: Limit = 1000,
        cursor: Cursor = None,
    ) -> Page[OwnerOut]:
        """Per-owner achievement with interval and state."""
        rows, nxt, rid, state = await _result_page(
            store, org, cycle, run_id, "owners", cursor, limit
        )
        items = [_owner_out(v, rid, state) for _, v in rows]
        return Page(items=await final_owner_view(store, org, cycle, items), next_cursor=nxt)

    @get(
        "/owners/{owner_id:str}",
        opt={SCOPE_OPT: "hr:read", PUBLISHED_READ_OPT: ("owners", "owner_id")},
    )
    async def owner_achievement(
        self,
        request: Request[Any, Any, Any],
        store: StoreDep,
        org: FromPath[str],
        cycle: FromPath[str],
        owner_id: FromPath[str],
        run_id: RunId = None,
    ) -> OwnerOut:
        """One owner's achievement with interval and state."""
        _check_cycle(cycle)
        if run_id is None:
            # the hot path: the key check read pointer, lock state and owner in its round trip
            read = prefetched(request, (cycle, "owners", owner_id))
            if read is None:
                read = await store.published_item(org, cycle, "owners", owner_id)
            published, locked, raw = read
            if published is None:
                raise ProblemError(404, _NOTHING_PUBLISHED.format(cycle=cycle))
            rid: str = published[0]
            state: AchievementState = "final" if locked else "published-provisional"
        else:
            rid, attempt, state = await _resolve_run(store, org, cycle, run_id)
            raw = await store.result_item(org, cycle, rid, attempt, "owners", owner_id)
        if raw is None:
            raise ProblemError(404, f"no owner {owner_id!r} in run {rid!r}")
        return (await final_owner_view(store, org, cycle, [_owner_out(raw, rid, state)]))[0]


class KeysController(Controller):
    """API keys of the organisation (admin scope)."""

    path = "/v1/orgs/{org:str}/keys"
    opt = {SCOPE_OPT: "admin"}  # noqa: RUF012 - litestar merges this dict into each route
    tags = ("api keys",)

    @get("/")
    async def list_keys(self, store: StoreDep, org: FromPath[str]) -> list[ApiKeyOut]:
        """Every key of the organisation, revoked ones included (never the keys themselves)."""
        return [_key_out(r) for r in await store.list_api_keys(org)]

    @post("/", status_code=201)
    async def create_key(
        self, store: StoreDep, org: FromPath[str], data: JSONBody[ApiKeyIn]
    ) -> ApiKeyCreated:
        """A new key; the key is in this response only."""
        if data.name is not None:
            errors: list[FieldProblem] = []
            check_id(data.name, "name", None, errors)
            if errors:
                raise ProblemError(400, "invalid key name", errors=errors)
        try:
            key, record = new_api_key(org, data.scopes, name=data.name, rate_limit=data.rate_limit)
        except ValueError as exc:
            raise ProblemError(400, str(exc)) from exc
        await store.add_api_key(record)
        return ApiKeyCreated(key=key, record=_key_out(record))

    @delete("/{key_id:str}", status_code=200)
    async def revoke_key(
        self, store: StoreDep, org: FromPath[str], key_id: FromPath[str]
    ) -> ApiKeyOut:
        """Revoke a key; it stops working at once."""
        record = await store.revoke_api_key(org, key_id, _now_us())
        if record is None:
            raise ProblemError(404, f"no API key {key_id!r}")
        return _key_out(record)


# --- the factory ---------------------------------------------------------------------------


def create_app(settings: Settings, store: Store, *, run_workers: int | None = None) -> Litestar:
    """The litestar application around ``store``.

    ``run_workers`` calibration workers (default: ``settings.run_workers``) run as tasks
    of the application for its lifetime; 0 leaves runs to ``okrcal worker`` processes.
    The store is closed when the application shuts down.
    """
    n_workers = settings.run_workers if run_workers is None else run_workers
    metrics = Metrics()
    workers = [RunWorker(store, settings) for _ in range(n_workers)]
    webhooks = WebhookWorker(store, settings)  # deliveries beside the API, not in a request
    metrics.gauges["runs_processed"] = lambda: float(sum(w.processed for w in workers))

    @contextlib.asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        stop = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                for worker in workers:
                    tg.start_soon(worker.run, stop)
                tg.start_soon(webhooks.run, stop)
                try:
                    yield
                finally:
                    stop.set()
        finally:
            await store.close()

    def provide_store() -> Store:
        return store

    def provide_settings() -> Settings:
        return settings

    app = Litestar(
        route_handlers=[
            OpsController,
            AnchorsController,
            KRsController,
            GradesController,
            CalibrationsController,
            ResultsController,
            KeysController,
            SessionsController,
            AuditController,
            DriftController,
            WebhooksController,
            EventsController,
        ],
        dependencies={
            "store": Provide(provide_store, sync_to_thread=False),
            "settings": Provide(provide_settings, sync_to_thread=False),
        },
        state=State({"store": store, "settings": settings, "metrics": metrics}),
        exception_handlers=exception_handlers(),
        # metrics outermost, so refused requests are counted too
        middleware=[metrics_middleware(metrics), auth_middleware(store, settings)],
        lifespan=[lifespan],
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="okrcal",
            version="1",
            description="Calibration and grading of OKR Key Results. Models: "
            + ", ".join(MODEL_NAMES),
            path="/schema",
        ),
        # the web pages for facilitators and HR under /ui (service.web)
        plugins=[WebPlugin()],
        debug=False,
    )
    # every error is RFC 9457 problem details: say so in the (cached) schema that is served
    document_problems(app.openapi_schema)
    return app
